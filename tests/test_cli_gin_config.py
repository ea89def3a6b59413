"""parse_gin: search paths, overrides, and one clear UserError per gin mistake."""

import pathlib

import gin
import pytest

import llmos_jax
from llmos_jax.cli import gin_config
from llmos_jax.errors import UserError


@gin.configurable
def cli_gin_test_make_optimizer(name="adam", learning_rate=1e-3):
    return name, learning_rate


@gin.configurable
def cli_gin_test_model(optimizer=None, width=8):
    return optimizer, width


@pytest.fixture(autouse=True)
def clean_gin(tmp_path, monkeypatch):
    gin.clear_config()
    monkeypatch.chdir(tmp_path)
    yield
    gin.clear_config()


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def parse(files, bindings=(), search_paths=(), **kwargs):
    gin_config.parse_gin(files, bindings, search_paths, configurable_modules=(), **kwargs)


def error_of(files, bindings=(), **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        parse(files, bindings, **kwargs)
    return str(caught.value)


def test_binding_overrides_file(tmp_path):
    write(tmp_path / "run.gin", "cli_gin_test_make_optimizer.name = 'adam'\n")
    parse(["run.gin"], ["cli_gin_test_make_optimizer.name = 'lion'"])
    assert cli_gin_test_make_optimizer() == ("lion", 1e-3)


def test_search_path_resolves_files_and_their_includes(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    write(configs / "models" / "tiny.gin", "cli_gin_test_model.width = 4\n")
    write(
        configs / "runs" / "run.gin",
        "include 'models/tiny.gin'\ncli_gin_test_make_optimizer.name = 'lion'\n",
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")

    parse(["runs/run.gin"], search_paths=[str(configs)])

    assert cli_gin_test_model() == (None, 4)
    assert cli_gin_test_make_optimizer() == ("lion", 1e-3)


def test_cwd_wins_over_search_paths(tmp_path):
    write(tmp_path / "run.gin", "cli_gin_test_model.width = 1\n")
    write(tmp_path / "configs" / "run.gin", "cli_gin_test_model.width = 2\n")
    parse(["run.gin"], search_paths=["configs"])
    assert cli_gin_test_model() == (None, 1)


def test_search_dirs_order_ends_with_repository_gin_and_root(tmp_path):
    repo = pathlib.Path(llmos_jax.__file__).resolve().parent.parent
    (tmp_path / "extra").mkdir()
    assert gin_config.gin_search_dirs(["extra"]) == [
        tmp_path.resolve(),
        (tmp_path / "extra").resolve(),
        repo / "gin",
        repo,  # So that experiments/... paths resolve from anywhere.
    ]


def test_missing_search_path_is_named():
    message = error_of([], search_paths=["confgs"])
    assert "gin search path 'confgs' is not a directory" in message


def test_unknown_gin_file_suggests_close_match(tmp_path):
    write(tmp_path / "runs" / "cpu_quickstart.gin", "")
    message = error_of(["runs/cpu_quickstar.gin"])
    assert message.startswith("gin file 'runs/cpu_quickstar.gin' not found (looked in: ")
    assert str(tmp_path.resolve()) in message
    assert message.endswith("Did you mean 'runs/cpu_quickstart.gin'?")


def test_missing_include_names_including_and_missing_file(tmp_path):
    write(tmp_path / "models" / "gpt_tiny.gin", "")
    write(tmp_path / "run.gin", "# a run\ninclude 'models/gpt_tiy.gin'\n")
    message = error_of(["run.gin"])
    assert "gin file 'models/gpt_tiy.gin' included in file 'run.gin' line 2" in message
    assert "was not found" in message
    assert "Did you mean 'models/gpt_tiny.gin'?" in message


def test_include_found_past_a_namespace_package_of_the_same_folder_name(tmp_path, monkeypatch):
    """A `runs/` folder importable from sys.path (cwd under `python -m`) must not break includes."""
    (tmp_path / "cwd" / "runs").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(tmp_path / "cwd"))
    monkeypatch.chdir(tmp_path / "cwd")
    write(tmp_path / "configs" / "runs" / "base.gin", "cli_gin_test_model.width = 3\n")
    write(tmp_path / "configs" / "run.gin", "include 'runs/base.gin'\n")
    parse([str(tmp_path / "configs" / "run.gin")], search_paths=[str(tmp_path / "configs")])
    assert cli_gin_test_model() == (None, 3)


def test_unknown_configurable_in_file_names_file_line_and_suggestion(tmp_path):
    write(tmp_path / "run.gin", "cli_gin_test_model.width = 2\ncli_gin_test_make_optimzer.name = 1\n")
    message = error_of(["run.gin"])
    assert message == (
        "unknown gin configurable 'cli_gin_test_make_optimzer' in file 'run.gin' line 2."
        " Did you mean 'cli_gin_test_make_optimizer'?"
    )


def test_unknown_configurable_in_binding_names_the_flag():
    message = error_of(
        [],
        ["cli_gin_test_make_optimzer.name = 'lion'"],
        binding_sources=["--gin.cli_gin_test_make_optimzer.name"],
    )
    assert message == (
        "unknown gin configurable 'cli_gin_test_make_optimzer' in "
        "--gin.cli_gin_test_make_optimzer.name. Did you mean 'cli_gin_test_make_optimizer'?"
    )


def test_binding_without_source_is_named_by_its_text():
    message = error_of([], ["cli_gin_test_modle.width = 3"])
    assert "in binding 'cli_gin_test_modle.width = 3'" in message
    assert "Did you mean 'cli_gin_test_model'?" in message


def test_unknown_configurable_without_close_match_says_what_to_check():
    message = error_of([], ["zzqqxx.width = 3"])
    assert "unknown gin configurable 'zzqqxx'" in message
    assert "is the module defining it imported?" in message


def test_unknown_reference_is_named(tmp_path):
    write(tmp_path / "run.gin", "cli_gin_test_model.optimizer = @cli_gin_test_make_optimzer()\n")
    message = error_of(["run.gin"])
    assert "gin configurable '@cli_gin_test_make_optimzer' in file 'run.gin' line 1" in message
    assert "Did you mean 'cli_gin_test_make_optimizer'?" in message


def test_unknown_parameter_suggests_and_lists_parameters():
    message = error_of(
        [], ["cli_gin_test_make_optimizer.nam = 'lion'"], binding_sources=["--gin.x"]
    )
    assert message == (
        "cli_gin_test_make_optimizer has no parameter 'nam' (in --gin.x). "
        "Did you mean 'name'? Its parameters are: name, learning_rate."
    )


def test_error_inside_included_file_names_that_file(tmp_path):
    write(tmp_path / "models" / "m.gin", "cli_gin_test_model.widht = 3\n")
    write(tmp_path / "run.gin", "include 'models/m.gin'\n")
    message = error_of(["run.gin"])
    assert "cli_gin_test_model has no parameter 'widht' (in file 'models/m.gin' line 1)" in message
    assert "Did you mean 'width'?" in message


def test_syntax_error_names_file_and_line(tmp_path):
    write(tmp_path / "bad.gin", "cli_gin_test_model.width = 2\ncli_gin_test_model.width 3\n")
    message = error_of(["bad.gin"])
    assert message.startswith("gin syntax error in file 'bad.gin' line 2: ")
    assert "cli_gin_test_model.width 3" in message


def test_unclosed_bracket_names_file(tmp_path):
    write(tmp_path / "bad.gin", "cli_gin_test_model.optimizer = [1, 2\n")
    assert error_of(["bad.gin"]) == (
        "gin syntax error in file 'bad.gin': a bracket or quote is never closed"
    )


def test_unquoted_string_value_gets_quoting_hint():
    message = error_of(
        [], ["cli_gin_test_make_optimizer.name = lion"], binding_sources=["--gin.opt.name"]
    )
    assert message.startswith("gin syntax error in --gin.opt.name: cannot parse the value lion")
    assert "strings need quotes, e.g. 'lion'" in message


def test_errors_gin_reports_that_we_do_not_model_still_become_user_errors():
    message = error_of([], ["cli_gin_test_model.width = %UNDEFINED_MACRO"])
    assert message.startswith("invalid gin config: ")
    assert "UNDEFINED_MACRO" in message


def test_each_parse_starts_from_a_fresh_config_so_commands_can_share_a_process():
    parse([], ["cli_gin_test_model.width = 2"])  # Finalizes, i.e. locks, the config.
    parse([], ["cli_gin_test_model.optimizer = 'sgd'"])  # The next command's.
    assert gin.get_bindings("cli_gin_test_model") == {"optimizer": "sgd"}


def test_missing_third_party_package_gets_install_hint():
    with pytest.raises(UserError, match=r"pip install 'llmos_jax\[train\]'") as caught:
        gin_config.import_configurable_modules(["llmos_cli_test_absent_package"])
    assert "'llmos_cli_test_absent_package' is not installed" in str(caught.value)


def test_tool_gin_overrides_become_gin_lines_and_strays_are_named():
    assert gin_config.gin_overrides(["--gin.train.num_steps=20", "--gin.F.x='a=b'"]) == [
        "train.num_steps = 20", "F.x = 'a=b'"]
    with pytest.raises(UserError, match=r"unrecognised argument '--steps=3'; overrides look like"):
        gin_config.gin_overrides(["--gin.train.seed=1", "--steps=3"])


REPO = pathlib.Path(llmos_jax.__file__).resolve().parent.parent
SHIPPED_GIN_FILES = sorted(str(path.relative_to(REPO))
                           for folder in ("gin", "experiments") for path in (REPO / folder).rglob("*.gin"))


@pytest.mark.parametrize("name", SHIPPED_GIN_FILES)
def test_every_shipped_gin_file_parses(name):
    """Experiment and model files name only existing configurables, params and includes."""
    gin_config.parse_gin([str(REPO / name)], [], finalize=False)
