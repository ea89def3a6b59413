"""The `llmos` command: dispatch, flag forms, gin overrides, help and error output."""

import os
import subprocess
import sys

import gin
import pytest

from llmos_jax.cli import main as cli
from llmos_jax.cli.flags import Command, Flag
from llmos_jax.cli.train_command import train_command
from llmos_jax.errors import did_you_mean

TRAIN_CALLS = []
STEPS = "cli_main_test_train.num_steps"  # A gin binding key of the fake trainer.
BASICS = ("--gin_file=run.gin", "--model_dir=out")


@gin.configurable
def cli_main_test_train(*, model_dir, num_steps=1, optimizer="adam", log_dir=None):
    """Stands in for the trainer: gin-configurable, called with model_dir only."""
    TRAIN_CALLS.append(
        dict(model_dir=model_dir, num_steps=num_steps, optimizer=optimizer, log_dir=log_dir)
    )


@pytest.fixture(autouse=True)
def clean_state(tmp_path, monkeypatch):
    gin.clear_config()
    TRAIN_CALLS.clear()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.gin").write_text("cli_main_test_train.num_steps = 5\n")
    yield
    gin.clear_config()


def llmos(*argv):
    commands = {"train": train_command(cli_main_test_train, configurable_modules=())}
    return cli.main(list(argv), commands=commands)


def only_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmos: error: "), captured.err
    return lines[0].removeprefix("llmos: error: ")


def test_train_parses_gin_then_calls_train_with_model_dir():
    assert llmos("train", "--gin_file=run.gin", "--model_dir=out") == 0
    assert TRAIN_CALLS == [dict(model_dir="out", num_steps=5, optimizer="adam", log_dir=None)]


def test_gin_flag_override_changes_behaviour():
    assert llmos("train", *BASICS, f"--gin.{STEPS}=3") == 0
    assert TRAIN_CALLS[-1]["num_steps"] == 3


def test_gin_flag_string_value_needs_inner_quotes():
    assert llmos("train", *BASICS, "--gin.cli_main_test_train.optimizer='lion'") == 0
    assert TRAIN_CALLS[-1]["optimizer"] == "lion"


@pytest.mark.parametrize(
    "argv",
    [
        ["--gin_file=run.gin", "--model_dir=out", f"--gin.{STEPS}=3"],
        ["--gin_file", "run.gin", "--model_dir", "out", f"--gin.{STEPS}", "3"],
        ["--gin_file=run.gin", "--model_dir=out", f"--gin_bindings={STEPS} = 3"],
        ["--model_dir", "out", "--gin_bindings", f"{STEPS}=3", "--gin_file", "run.gin"],
    ],
)
def test_flag_forms_are_equivalent(argv):
    assert llmos("train", *argv) == 0
    assert TRAIN_CALLS == [dict(model_dir="out", num_steps=3, optimizer="adam", log_dir=None)]


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([f"--gin.{STEPS}=3", f"--gin_bindings={STEPS}=4"], 4),
        ([f"--gin_bindings={STEPS}=4", f"--gin.{STEPS}=3"], 3),
    ],
)
def test_later_bindings_win_in_command_line_order(argv, expected):
    assert llmos("train", *BASICS, *argv) == 0
    assert TRAIN_CALLS[-1]["num_steps"] == expected


def test_later_gin_files_win(tmp_path):
    (tmp_path / "override.gin").write_text("cli_main_test_train.num_steps = 7\n")
    assert llmos("train", *BASICS, "--gin_file=override.gin") == 0
    assert TRAIN_CALLS[-1]["num_steps"] == 7


def test_model_dir_is_bound_to_the_model_dir_macro(tmp_path):
    (tmp_path / "run.gin").write_text("cli_main_test_train.log_dir = %MODEL_DIR\n")
    assert llmos("train", "--gin_file=run.gin", "--model_dir=runs/a") == 0
    assert TRAIN_CALLS[-1]["log_dir"] == "runs/a"


def test_gin_search_path_flag(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "deep.gin").write_text("cli_main_test_train.num_steps = 9\n")
    status = llmos("train", "--gin_file=deep.gin", "--gin_search_path=configs", "--model_dir=o")
    assert status == 0
    assert TRAIN_CALLS[-1]["num_steps"] == 9


def test_bad_config_fails_before_training_and_leaves_model_dir_alone(tmp_path, capsys):
    model_dir = tmp_path / "out"
    model_dir.mkdir()
    (model_dir / "checkpoint").write_text("precious")

    status = llmos(
        "train", "--gin_file=run.gin", f"--model_dir={model_dir}", "--gin.cli_main_test_trian.x=3"
    )

    assert status == 2
    assert TRAIN_CALLS == []
    assert os.listdir(model_dir) == ["checkpoint"]
    assert (model_dir / "checkpoint").read_text() == "precious"
    assert only_error_line(capsys) == (
        "unknown gin configurable 'cli_main_test_trian' in --gin.cli_main_test_trian.x. "
        "Did you mean 'cli_main_test_train'?"
    )


def test_unknown_parameter_from_flag_is_named(capsys):
    assert llmos("train", *BASICS, f"--gin.{STEPS[:-1]}=3") == 2
    message = only_error_line(capsys)
    assert f"cli_main_test_train has no parameter 'num_step' (in --gin.{STEPS[:-1]})" in message
    assert "Did you mean 'num_steps'?" in message


def test_unknown_gin_file_is_reported(capsys):
    assert llmos("train", "--gin_file=rn.gin", "--model_dir=out") == 2
    message = only_error_line(capsys)
    assert message.startswith("gin file 'rn.gin' not found (looked in: ")
    assert message.endswith("Did you mean 'run.gin'?")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--gin_files=a.gin"], "unknown flag '--gin_files' for 'llmos train'. Did you mean '--gin_file'?"),
        ([f"--gni.{STEPS}=3"], f"Did you mean '--gin.{STEPS}'?"),
        (["--modeldir", "o"], "unknown flag '--modeldir' for 'llmos train'. Did you mean '--model_dir'?"),
        (["-gin_file=run.gin"], "unknown flag '-gin_file'"),
    ],
)
def test_unknown_flag_is_named_with_close_matches(argv, expected, capsys):
    assert llmos("train", *argv) == 2
    message = only_error_line(capsys)
    assert expected in message
    assert "Run 'llmos train --help' to list flags." in message


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--model_dir=o"], "llmos train needs at least one --gin_file, e.g. llmos train --gin_file="),
        (["--gin_file=run.gin"], "llmos train needs --model_dir, the folder for checkpoints"),
        (["--gin_file=run.gin", "--model_dir"], "flag --model_dir needs a value, e.g. --model_dir=DIR"),
        ([*BASICS, "--model_dir=b"], "flag --model_dir was given more than once"),
        ([*BASICS, "--gin.=3"], "flag '--gin.' needs a gin binding name after the dot"),
        (["run.gin"], "unexpected argument 'run.gin' for 'llmos train'"),
    ],
)
def test_bad_train_flags_are_explained(argv, expected, capsys):
    assert llmos("train", *argv) == 2
    assert only_error_line(capsys).startswith(expected)
    assert TRAIN_CALLS == []


def test_unknown_command_suggests_close_match(capsys):
    assert llmos("trian") == 2
    assert only_error_line(capsys) == (
        "unknown command 'trian'. Did you mean 'train'? Commands: train."
    )


def test_no_command_points_to_help(capsys):
    assert llmos() == 2
    assert "llmos --help" in only_error_line(capsys)


def test_commands_are_dispatched_from_the_table(capsys):
    seen = []
    echo = Command(
        name="echo",
        summary="Echo a flag.",
        description="Echo a flag.",
        usage="llmos echo --text=TEXT",
        flags=(Flag("text", "TEXT", "What to echo."),),
        example="llmos echo --text=hi",
        run=lambda flags: seen.append(flags.one("text")) or 0,
    )
    assert cli.main(["echo", "--text", "hi"], commands={"echo": echo}) == 0
    assert seen == ["hi"]
    assert cli.main(["--help"], commands={"echo": echo}) == 0
    assert "echo   Echo a flag." in capsys.readouterr().out


def test_help_lists_commands_and_train_flags(capsys):
    assert cli.main(["--help"]) == 0
    listed = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()]
    assert ["train", "Train a model configured by gin files."] in listed

    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--gin_file=PATH", "--gin.NAME=VALUE", "--gin_bindings=BINDING"):
        assert flag in out
    for flag in ("--gin_search_path=DIR", "--model_dir=DIR", "-h, --help"):
        assert flag in out
    assert "example:\n  llmos train --gin_file=" in out


def test_help_wins_over_other_flags():
    assert llmos("train", "--model_dir=out", "--help") == 0
    assert TRAIN_CALLS == []


def test_did_you_mean_offers_only_near_ties():
    assert did_you_mean("make_optimzer", ["make_optimizer", "make_model", "zzz"]) == (
        " Did you mean 'make_optimizer'?"
    )
    assert did_you_mean("qqq", ["make_optimizer"]) == ""


def test_user_error_is_the_only_exception_main_swallows():
    def broken(flags):
        raise RuntimeError("a bug")

    command = Command("boom", "", "", "", (Flag("x", "X", ""),), "", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["boom"], commands={"boom": command})


def run_module(*args):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_python_dash_m_help_exits_zero():
    result = run_module("-m", "llmos_jax", "--help")
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout


def test_python_dash_m_error_is_one_line_without_traceback():
    result = run_module("-m", "llmos_jax", "trian")
    assert result.returncode == 2
    assert result.stderr == (
        "llmos: error: unknown command 'trian'. Did you mean 'train'? Commands: train, "
        "eval, infer, serve, launch, report, tasks list, vocab train, vocab chars, models list, "
        "models show, models alias, models compare, models register, models promote.\n"
    )


@pytest.mark.parametrize("code", [
    "import sys\nfrom llmos_jax.cli.main import main\nassert main(['--help']) == 0\n",
    "import sys\nimport llmos_jax.models\n",
    # The trainer writes TensorBoard events through tensorboardX, whose package imports torch.
    "import sys\nimport llmos_jax.training.trainer\n",
], ids=["llmos --help", "import llmos_jax.models", "import llmos_jax.training.trainer"])
def test_help_and_model_imports_load_neither_tensorflow_nor_torch(code):
    """Start-up cost: TensorFlow (seqio) and torch (tensorboardX, transformers) load only
    where a run needs them."""
    result = run_module("-c", code + "heavy = {'tensorflow', 'torch'} & set(sys.modules)\n"
                                     "assert not heavy, heavy\n")
    assert result.returncode == 0, result.stderr


def test_cli_import_loads_neither_jax_nor_gin_nor_tensorflow():
    code = (
        "import sys, llmos_jax.cli.main\n"
        "heavy = {'jax', 'gin', 'tensorflow'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = run_module("-c", code)
    assert result.returncode == 0, result.stderr
