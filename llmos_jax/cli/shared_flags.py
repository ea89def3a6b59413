"""The flags that mean the same thing in several commands, defined once.

`llmos eval` and `llmos infer` both load a trained run, so the run's gin file,
its overrides, the gin search path and the checkpoint to restore are one set of
flags (`run_flags`) with one help text; `llmos train` takes the same override
and search-path flags. Flags whose meaning depends on the command (`--task`
replaces `train.task_name` for eval but `--input` for infer; `--split`,
`--batch_size` and `--max_examples` have command-specific defaults) stay with
their command.
"""

from __future__ import annotations

from llmos_jax.cli.flags import Flag, ParsedFlags
from llmos_jax.errors import UserError

GIN_SEARCH_PATH = Flag(
    "gin_search_path",
    "DIR",
    "Extra folder to search for gin files and their includes; repeatable.",
    repeatable=True,
)

RUN_GIN_FILE = Flag(
    "gin_file",
    "PATH",
    "The run's gin file (e.g. its model_dir/config.gin); repeatable, later files win.",
    repeatable=True,
)

CHECKPOINT = Flag(
    "checkpoint",
    "DIR",
    "A run's model_dir (its newest checkpoint that verifies; damaged newer ones are "
    "skipped with a warning), its checkpoints/ folder, one step (checkpoints/<step>), or a "
    "params-only export folder (model_dir/export, model_dir/best), or a registered version, "
    "models:/NAME@ALIAS or models:/NAME/VERSION (its config.gin stands in for --gin_file).",
)


def gin_override_flag(example: str, string_example: str) -> Flag:
    """`--gin.NAME=VALUE`, with examples from the configurables the command reads.

    Args:
      example: a number-valued override, e.g. `--gin.train.num_steps=20`.
      string_example: a string-valued one, to show that gin strings keep their
        inner quotes on the command line.
    """
    return Flag(
        "gin.",
        "VALUE",
        f"Override one gin binding (T5X style), e.g. {example}; strings need inner quotes: "
        f"{string_example}.",
        repeatable=True,
    )


def run_flags(gin_example: str) -> tuple[Flag, ...]:
    """The flags that pick a trained run and configure it, in help order.

    Args:
      gin_example: a number-valued `--gin.` override that matters to the command.
    """
    return (
        RUN_GIN_FILE,
        gin_override_flag(gin_example, "--gin.DecodeConfig.method=\"'beam'\""),
        GIN_SEARCH_PATH,
        CHECKPOINT,
    )


def run_gin_files(flags: ParsedFlags, *, command: str, example: str) -> list[str]:
    """The `--gin_file` values of a command that loads a run; at least one is needed.

    Raises:
      UserError: no `--gin_file` was given.
    """
    gin_files = flags.all(RUN_GIN_FILE.name)
    if not gin_files:
        raise UserError(f"llmos {command} needs --gin_file, the run's gin file, e.g. {example}")
    return gin_files


def required(flags: ParsedFlags, name: str, *, command: str, example: str, what: str = "") -> str:
    """The value of `--name`, which `llmos <command>` cannot run without.

    Raises:
      UserError: the flag is absent or empty; the message says what the flag is
        (`what`, when given) and shows the command's example.
    """
    value = flags.one(name)
    if not value:
        what = f", {what}" if what else ""
        raise UserError(f"llmos {command} needs --{name}{what}, e.g. {example}")
    return value
