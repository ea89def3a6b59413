"""Flags shared by `llmos train`, `eval` and `infer`: one definition, one help text, one parse."""

import pytest

from llmos_jax.cli import main as cli
from llmos_jax.cli.flags import Command, Flag, parse_flags
from llmos_jax.cli.shared_flags import required, run_gin_files
from llmos_jax.errors import UserError


def flag_rows(capsys, command: str) -> dict[str, str]:
    """`llmos <command> --help`'s flag rows, keyed by usage, wrapped lines joined."""
    assert cli.main([command, "--help"]) == 0
    lines = capsys.readouterr().out.split("flags:\n")[1].split("\n\n")[0].splitlines()
    rows: dict[str, str] = {}
    for line in lines:
        if line.startswith("  ") and not line.startswith("   "):
            usage, _, text = line.strip().partition(" ")
            rows[usage] = text.strip()
            last = usage
        else:
            rows[last] += " " + line.strip()
    return rows


def test_eval_and_infer_describe_their_shared_flags_identically(capsys):
    eval_rows, infer_rows = flag_rows(capsys, "eval"), flag_rows(capsys, "infer")
    for usage in ("--gin_file=PATH", "--gin_search_path=DIR", "--checkpoint=DIR"):
        assert eval_rows[usage] == infer_rows[usage], usage
    assert "model_dir/best" in infer_rows["--checkpoint=DIR"]
    for rows in (eval_rows, infer_rows):
        assert "strings need inner quotes: --gin.DecodeConfig.method=\"'beam'\"" in rows[
            "--gin.NAME=VALUE"]


def test_train_shares_the_search_path_flag_and_keeps_its_override_text(capsys):
    train_rows, eval_rows = flag_rows(capsys, "train"), flag_rows(capsys, "eval")
    assert train_rows["--gin_search_path=DIR"] == eval_rows["--gin_search_path=DIR"]
    assert train_rows["--gin.NAME=VALUE"] == (
        "Override one gin binding (T5X style), e.g. --gin.train.num_steps=20; strings need "
        "inner quotes: --gin.make_optimizer.name=\"'lion'\".")


def parsed(*args):
    command = Command("t", "", "", "", (Flag("gin_file", "PATH", "", repeatable=True),
                                        Flag("strict", "BOOL", ""), Flag("output", "FILE", "")),
                      "", lambda flags: 0)
    return parse_flags(command, args)


@pytest.mark.parametrize("given, expected", [((), False), (("--strict=TRUE",), True),
                                             (("--strict=1",), True), (("--strict=false",), False),
                                             (("--strict=0",), False)])
def test_boolean_flag_values(given, expected):
    assert parsed(*given).boolean("strict") is expected


def test_boolean_flag_rejects_other_words():
    with pytest.raises(UserError, match=r"--strict='maybe' must be true or false\."):
        parsed("--strict=maybe").boolean("strict")


def test_required_flags_name_the_flag_and_show_the_example():
    assert required(parsed("--output=o.jsonl"), "output", command="infer", example="EX") == (
        "o.jsonl")
    with pytest.raises(UserError) as error:
        required(parsed(), "output", command="infer", example="EX", what="the JSONL file")
    assert str(error.value) == "llmos infer needs --output, the JSONL file, e.g. EX"
    with pytest.raises(UserError) as error:
        required(parsed("--output="), "output", command="eval", example="EX")
    assert str(error.value) == "llmos eval needs --output, e.g. EX"


def test_run_gin_files_keeps_every_file_in_order():
    assert run_gin_files(parsed("--gin_file=a.gin", "--gin_file=b.gin"), command="eval",
                         example="EX") == ["a.gin", "b.gin"]
    with pytest.raises(UserError, match="llmos eval needs --gin_file, the run's gin file, e.g. EX"):
        run_gin_files(parsed(), command="eval", example="EX")
