"""The `llmos` command line: a table of subcommands and the dispatcher that runs one.

Each subcommand lives in its own module (`train_command`, `eval_command`,
`infer_command`, `data_commands`) and builds a `flags.Command`; this module
only collects them into `COMMANDS`, picks one from the command line and turns
a `UserError` into a single `llmos: error: ...` line with exit status 2.
Imports run one way (main -> commands -> flags). Only the standard library is
imported at module level, by this module and the command modules, so
`llmos --help` stays instant; gin, JAX and the trainer load inside the handler
that needs them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence

from llmos_jax.cli.data_commands import data_commands
from llmos_jax.cli.eval_command import eval_command
from llmos_jax.cli.flags import HELP_ARGS, Command, parse_flags
from llmos_jax.cli.infer_command import infer_command
from llmos_jax.cli.launch_command import launch_command
from llmos_jax.cli.models_command import models_commands
from llmos_jax.cli.report_command import report_command
from llmos_jax.cli.serve_command import serve_command
from llmos_jax.cli.train_command import TRAIN_EXAMPLE, train_command
from llmos_jax.errors import UserError, did_you_mean

COMMANDS: dict[str, Command] = {"train": train_command(), "eval": eval_command(),
                                "infer": infer_command(), "serve": serve_command(),
                                "launch": launch_command(), "report": report_command(),
                                **data_commands(), **models_commands()}


def main_help(commands: Mapping[str, Command]) -> str:
    """The `llmos --help` text: every command with its one-line summary."""
    width = max(len(name) for name in commands) + 3
    lines = [
        "usage: llmos <command> [flags]",
        "",
        "Build, train, evaluate and serve language models with JAX and Flax NNX.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}{command.summary}" for name, command in commands.items()]
    lines += ["", "Run 'llmos <command> --help' for its flags and an example.", ""]
    lines += ["example:", f"  {TRAIN_EXAMPLE}"]
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None, commands: Mapping[str, Command] | None = None
) -> int:
    """Runs `llmos`; returns the exit status (2 for a UserError, printed on one line).

    Args:
      argv: the arguments after `llmos`; defaults to `sys.argv[1:]`.
      commands: the command table, keyed by (possibly two-word) name; defaults
        to `COMMANDS`. Tests pass their own.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    commands = COMMANDS if commands is None else commands
    _quiet_native_logs()
    try:
        return _dispatch(args, commands)
    except UserError as error:
        print(f"llmos: error: {user_message(error)}", file=sys.stderr)
        return 2


def user_message(error: UserError) -> str:
    """The error's own message, without the call context gin appends to it."""
    return str(error).split("\n  In call to configurable")[0].strip()


def _quiet_native_logs() -> None:
    """Keeps TensorFlow's C++ start-up chatter out of the terminal; our logs stay."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("llmos_jax").setLevel(logging.INFO)


def _dispatch(args: list[str], commands: Mapping[str, Command]) -> int:
    if not args:
        raise UserError("no command given; run 'llmos --help' to list commands")
    if args[0] in HELP_ARGS:
        print(main_help(commands))
        return 0
    name, rest = args[0], args[1:]
    if rest and f"{name} {rest[0]}" in commands:  # Two-word commands: `llmos tasks list`.
        name, rest = f"{name} {rest[0]}", rest[1:]
    command = commands.get(name)
    if command is None:
        if name.startswith("-"):
            raise UserError(
                f"'{name}' comes before a command; flags go after it, "
                f"e.g. llmos train {name}"
            )
        subcommands = [c for c in commands if c.startswith(f"{name} ")]
        if subcommands:
            raise UserError(f"'llmos {name}' needs a subcommand: "
                            f"{', '.join(f'llmos {c}' for c in subcommands)}.")
        groups = {c.split()[0] for c in commands}
        raise UserError(
            f"unknown command '{name}'.{did_you_mean(name, groups)} "
            f"Commands: {', '.join(commands)}."
        )
    flags = parse_flags(command, rest)
    if flags.help_requested:
        print(command.help_text())
        return 0
    return command.run(flags)
