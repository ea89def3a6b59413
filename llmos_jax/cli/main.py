"""The `llmos` command line: a table of subcommands and their flags.

Flags are parsed by hand, not with argparse, because T5X's `--gin.NAME=VALUE`
flags have open-ended names and because every mistake must end as a single
`llmos: error: ...` line with a suggestion rather than a usage dump. Only the
standard library is imported at module level so `llmos --help` stays instant;
gin, jax and the trainer load inside the command that needs them.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from llmos_jax.errors import UserError, did_you_mean

_HELP_ARGS = ("-h", "--help")


@dataclasses.dataclass(frozen=True)
class Flag:
    """One `--name=value` flag; a name ending in "." is a prefix, as in `--gin.NAME`."""

    name: str
    metavar: str
    help: str
    repeatable: bool = False

    @property
    def is_prefix(self) -> bool:
        return self.name.endswith(".")

    @property
    def usage(self) -> str:
        return f"--{self.name}{'NAME' if self.is_prefix else ''}={self.metavar}"


@dataclasses.dataclass(frozen=True)
class FlagValue:
    """A flag as given; `key` is the part after a prefix flag's name."""

    flag: Flag
    key: str
    value: str

    @property
    def spelled(self) -> str:
        return f"--{self.flag.name}{self.key}"


@dataclasses.dataclass(frozen=True)
class ParsedFlags:
    """A command's flags in command-line order (order decides which binding wins)."""

    values: tuple[FlagValue, ...] = ()
    help_requested: bool = False

    def all(self, name: str) -> list[str]:
        return [v.value for v in self.values if v.flag.name == name]

    def one(self, name: str) -> str | None:
        values = self.all(name)
        return values[-1] if values else None

    def gin_bindings(self) -> tuple[list[str], list[str]]:
        """`--gin.NAME=VALUE` and `--gin_bindings` as gin lines, with how each was spelled."""
        bindings, sources = [], []
        for given in self.values:
            if given.flag.name == "gin.":
                bindings.append(f"{given.key} = {given.value}")
                sources.append(given.spelled)
            elif given.flag.name == "gin_bindings":
                bindings.append(given.value)
                sources.append(f"--gin_bindings={given.value!r}")
        return bindings, sources

    def positive_int(self, name: str, default: int | None) -> int | None:
        """The last `--name` as a positive integer, or `default` when absent."""
        value = self.one(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise UserError(f"--{name}={value!r} is not an integer.") from None
        if number <= 0:
            raise UserError(f"--{name}={number} must be positive.")
        return number


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its flags, help text and the handler that runs it."""

    name: str
    summary: str  # One line, for `llmos --help`.
    description: str
    usage: str
    flags: tuple[Flag, ...]
    example: str
    run: Callable[[ParsedFlags], int]

    def help_text(self) -> str:
        width = max(len(flag.usage) for flag in self.flags) + 4
        rows = [(flag.usage, flag.help) for flag in self.flags]
        rows.append(("-h, --help", "Show this help and exit."))
        lines = [f"usage: {self.usage}", "", *textwrap.wrap(self.description, 88), ""]
        lines.append("flags:")
        for usage, help_ in rows:
            wrapped = textwrap.wrap(help_, 88 - width)
            lines.append(f"  {usage:<{width - 2}}{wrapped[0]}")
            lines += [" " * width + more for more in wrapped[1:]]
        lines.append("")
        lines += ["example:", f"  {self.example}"]
        return "\n".join(lines)


def parse_flags(command: Command, args: Sequence[str]) -> ParsedFlags:
    """Parses `--flag=value` and `--flag value` forms against `command.flags`."""
    values: list[FlagValue] = []
    position = 0
    while position < len(args):
        arg = args[position]
        position += 1
        if arg in _HELP_ARGS:
            return ParsedFlags(help_requested=True)
        if not arg.startswith("-"):
            raise UserError(
                f"unexpected argument '{arg}' for 'llmos {command.name}': every input "
                f"is a flag, e.g. {command.flags[0].usage}"
            )
        name, has_value, value = arg.lstrip("-").partition("=")
        flag = _find_flag(command, name) if arg.startswith("--") else None
        if flag is None:
            raise UserError(
                f"unknown flag '{arg.partition('=')[0]}' for 'llmos {command.name}'."
                f"{_suggest_flag(name, command)} Run 'llmos {command.name} --help' "
                "to list flags."
            )
        key = name[len(flag.name) :] if flag.is_prefix else ""
        if flag.is_prefix and not key:
            raise UserError(
                f"flag '--{flag.name}' needs a gin binding name after the dot, "
                f"e.g. --{flag.name}train.num_steps=20"
            )
        if not has_value:
            if position >= len(args) or args[position].startswith("--"):
                raise UserError(f"flag --{name} needs a value, e.g. --{name}={flag.metavar}")
            value = args[position]
            position += 1
        if not flag.repeatable and any(v.flag is flag for v in values):
            raise UserError(f"flag --{flag.name} was given more than once; give it once")
        values.append(FlagValue(flag, key, value))
    return ParsedFlags(tuple(values))


def _find_flag(command: Command, name: str) -> Flag | None:
    for flag in command.flags:
        if name == flag.name or (flag.is_prefix and name.startswith(flag.name)):
            return flag
    return None


def _suggest_flag(name: str, command: Command) -> str:
    """Suggests known flags; for a mistyped prefix keeps the rest, `--gni.a.b` -> `--gin.a.b`."""
    rest = name.partition(".")[2]
    spellings = [
        f"--{flag.name}{rest or 'NAME'}" if flag.is_prefix else f"--{flag.name}"
        for flag in command.flags
    ]
    return did_you_mean(f"--{name}", [*spellings, "--help"])


_TRAIN_EXAMPLE = (
    "llmos train --gin_file=experiments/quickstart/quickstart.gin --model_dir=/tmp/llmos_quickstart "
    "--gin.train.num_steps=20"
)

_TRAIN_FLAGS = (
    Flag(
        "gin_file",
        "PATH",
        "Gin file to parse; repeat to layer files, later ones win. Relative paths are "
        "searched in the cwd, each --gin_search_path, then the repository's gin/.",
        repeatable=True,
    ),
    Flag(
        "gin.",
        "VALUE",
        "Override one gin binding (T5X style), e.g. --gin.train.num_steps=20; "
        "strings need inner quotes: --gin.make_optimizer.name=\"'lion'\".",
        repeatable=True,
    ),
    Flag(
        "gin_bindings",
        "BINDING",
        "A whole gin statement, e.g. --gin_bindings='train.num_steps=20'; repeatable.",
        repeatable=True,
    ),
    Flag(
        "gin_search_path",
        "DIR",
        "Extra folder to search for gin files and their includes; repeatable.",
        repeatable=True,
    ),
    Flag(
        "model_dir",
        "DIR",
        "Folder for checkpoints, metrics and config.gin; also bound to the gin "
        "macro MODEL_DIR.",
    ),
)


def train_command(
    train_fn: Callable[..., Any] | None = None,
    configurable_modules: Sequence[str] | None = None,
) -> Command:
    """Builds `llmos train`; tests inject `train_fn` and their own configurables.

    Args:
      train_fn: called as `train_fn(model_dir=...)` once gin is parsed; defaults
        to `llmos_jax.training.trainer.train`.
      configurable_modules: imported before parsing gin; defaults to
        `gin_config.CONFIGURABLE_MODULES`.
    """

    def run(flags: ParsedFlags) -> int:
        return _run_train(flags, train_fn, configurable_modules)

    return Command(
        name="train",
        summary="Train a model configured by gin files.",
        description="Train a model configured by gin files. Checkpoints, metrics and "
        "the operative config.gin are written to --model_dir.",
        usage="llmos train --gin_file=PATH [--gin_file=PATH ...] --model_dir=DIR "
        "[--gin.NAME=VALUE ...]",
        flags=_TRAIN_FLAGS,
        example=_TRAIN_EXAMPLE,
        run=run,
    )


def _run_train(
    flags: ParsedFlags,
    train_fn: Callable[..., Any] | None,
    configurable_modules: Sequence[str] | None,
) -> int:
    """Parses gin fully (so bad config fails before model_dir is touched), then trains."""
    gin_files = flags.all("gin_file")
    if not gin_files:
        raise UserError(f"llmos train needs at least one --gin_file, e.g. {_TRAIN_EXAMPLE}")
    model_dir = flags.one("model_dir")
    if not model_dir:
        raise UserError(
            "llmos train needs --model_dir, the folder for checkpoints and metrics, "
            f"e.g. {_TRAIN_EXAMPLE}"
        )
    flag_bindings, flag_sources = flags.gin_bindings()
    bindings = [f"MODEL_DIR = {model_dir!r}", *flag_bindings]
    sources = ["--model_dir", *flag_sources]
    gin_config = _import_gin_config()
    if configurable_modules is None:
        configurable_modules = gin_config.CONFIGURABLE_MODULES
    gin_config.parse_gin(
        gin_files,
        bindings,
        flags.all("gin_search_path"),
        binding_sources=sources,
        configurable_modules=configurable_modules,
    )
    if train_fn is None:
        train_fn = importlib.import_module("llmos_jax.training.trainer").train
    train_fn(model_dir=model_dir)
    return 0


def _import_gin_config() -> Any:
    try:
        from llmos_jax.cli import gin_config
    except ModuleNotFoundError as error:
        if error.name != "gin":
            raise
        raise UserError(
            "gin-config is not installed; install the training extras with: "
            "pip install 'llmos_jax[train]'"
        ) from error
    return gin_config


def _data_commands() -> dict[str, Command]:
    from llmos_jax.cli.data_commands import data_commands  # Needs Command, defined above.

    return data_commands()


def _eval_command() -> Command:
    from llmos_jax.cli.eval_command import eval_command  # Needs Command, defined above.

    return eval_command()


def _infer_command() -> Command:
    from llmos_jax.cli.infer_command import infer_command  # Needs Command, defined above.

    return infer_command()


COMMANDS: dict[str, Command] = {"train": train_command(), "eval": _eval_command(),
                                "infer": _infer_command(), **_data_commands()}


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
    lines += ["example:", f"  {_TRAIN_EXAMPLE}"]
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None, commands: Mapping[str, Command] | None = None
) -> int:
    """Runs `llmos`; returns the exit status (2 for a UserError, printed on one line)."""
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
    if args[0] in _HELP_ARGS:
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
