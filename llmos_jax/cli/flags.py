"""The `llmos` flag language: flags, the command record and the hand-written parser.

Flags are parsed by hand, not with argparse, because T5X's `--gin.NAME=VALUE`
flags have open-ended names and because every mistake must end as a single
`llmos: error: ...` line with a suggestion rather than a usage dump. Every
command module builds its `Command` from these records, and `main` only
dispatches to them, so imports run one way: commands -> flags, main -> commands.
Only the standard library is imported, so `llmos --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable, Sequence

from llmos_jax.errors import UserError, did_you_mean

HELP_ARGS = ("-h", "--help")


@dataclasses.dataclass(frozen=True)
class Flag:
    """One `--name=value` flag; a name ending in "." is a prefix, as in `--gin.NAME`."""

    name: str
    metavar: str
    help: str
    repeatable: bool = False
    switch: bool = False  # Given bare (`--lower-is-better`) it means true.

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
    trailing: tuple[str, ...] = ()  # What followed `--`, for commands that take it.
    positional: tuple[str, ...] = ()  # Arguments that are not flags (`Command.positionals`).

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

    def positive_float(self, name: str, default: float | None) -> float | None:
        """The last `--name` as a positive number, or `default` when absent."""
        value = self.one(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--{name}={value!r} is not a number.") from None
        if number <= 0:
            raise UserError(f"--{name}={value} must be positive.")
        return number

    def boolean(self, name: str) -> bool:
        """The last `--name` as true/false/1/0 (any case); false when absent."""
        value = (self.one(name) or "false").lower()
        if value not in ("true", "false", "1", "0"):
            raise UserError(f"--{name}={value!r} must be true or false.")
        return value in ("true", "1")


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
    trailing: str = ""  # Set (its help) when the command takes arguments after `--`.
    positionals: tuple[str, ...] = ()  # Names of the arguments it takes before or among flags.

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
        if self.trailing:
            wrapped = textwrap.wrap(self.trailing, 88 - width)
            lines.append(f"  {'-- ARGS...':<{width - 2}}{wrapped[0]}")
            lines += [" " * width + more for more in wrapped[1:]]
        lines.append("")
        lines += ["example:", f"  {self.example}"]
        return "\n".join(lines)


def parse_flags(command: Command, args: Sequence[str]) -> ParsedFlags:
    """Parses `--flag=value` and `--flag value` forms against `command.flags`.

    Raises:
      UserError: an unknown or repeated flag, a missing value or a stray argument,
        with the nearest known flag and the way to list them.
    """
    values: list[FlagValue] = []
    positional: list[str] = []
    position = 0
    while position < len(args):
        arg = args[position]
        position += 1
        if arg in HELP_ARGS:
            return ParsedFlags(help_requested=True)
        if arg == "--" and command.trailing:
            return ParsedFlags(tuple(values), trailing=tuple(args[position:]),
                               positional=tuple(positional))
        if not arg.startswith("-") and len(positional) < len(command.positionals):
            positional.append(arg)
            continue
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
        if not has_value and flag.switch:
            value = "true"
        elif not has_value:
            if position >= len(args) or args[position].startswith("--"):
                raise UserError(f"flag --{name} needs a value, e.g. --{name}={flag.metavar}")
            value = args[position]
            position += 1
        if not flag.repeatable and any(v.flag is flag for v in values):
            raise UserError(f"flag --{flag.name} was given more than once; give it once")
        values.append(FlagValue(flag, key, value))
    return ParsedFlags(tuple(values), positional=tuple(positional))


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
