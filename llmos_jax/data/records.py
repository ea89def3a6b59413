"""Parsing data files into records: plain text, lines, TSV, JSONL and JSON arrays.

A record is a ``dict`` of feature name to text, ready to become one seqio
example. Files may be gzipped (detected by their magic bytes, so the name does
not matter). Each format names the fields it extracts, so one file layout can
feed several tasks.

Real corpora have bad lines. A line or record that does not parse (wrong
column count, invalid JSON, a missing key, a non-text value, invalid UTF-8) is
*malformed*. :func:`read_records` either stops at the first one with a
``file:line`` :class:`UserError` (``strict=True``) or skips it, counts it and
logs one warning per file with the count and the first location
(``strict=False``), so nothing is dropped silently. Blank lines are not
malformed; they are skipped in every line-based format.
"""

from __future__ import annotations

import abc
import dataclasses
import gzip
import json
import logging
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import gin

from llmos_jax.errors import did_you_mean
from llmos_jax.errors import UserError

log = logging.getLogger("llmos_jax.data")

JSON_JOINER = "\n"
"""Joins the pieces of a JSON field given as a list of keys or holding a list of strings."""

_GZIP_MAGIC = b"\x1f\x8b"

Record = dict[str, str]
JsonField = str | Sequence[str]
"""A JSON key, or several keys whose values are joined with :data:`JSON_JOINER`."""


class Malformed(ValueError):
    """One line or record that does not parse; its message says why."""


def open_bytes(path: pathlib.Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise UserError(
                f"{path}: not a readable gzip file ({error}); re-download or re-compress it."
            ) from None
    return data


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Malformed(f"invalid UTF-8 ({error.reason} at byte {error.start})") from None


class RecordFormat(abc.ABC):
    """How one file becomes records: ``(location, record or Malformed)`` pairs."""

    @abc.abstractmethod
    def parse(self, path: pathlib.Path, data: bytes) -> Iterator[tuple[str, Record | Malformed]]:
        """Yields each record of the file, with a ``file:line``-style location."""

    @property
    @abc.abstractmethod
    def features(self) -> tuple[str, ...]:
        """The keys of every record this format yields."""


def _lines(path: pathlib.Path, data: bytes) -> Iterator[tuple[int, str | Malformed]]:
    """Non-blank lines without their line break, numbered from 1."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            yield number, _decode(raw)
        except Malformed as problem:
            yield number, problem


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TextFormat(RecordFormat):
    """The whole file is one record (a book, a source file)."""

    field: str = "text"

    @property
    def features(self) -> tuple[str, ...]:
        return (self.field,)

    def parse(self, path, data):
        try:
            yield str(path), {self.field: _decode(data)}
        except Malformed as problem:
            yield str(path), problem


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LinesFormat(RecordFormat):
    """One record per non-blank line (sentence-per-line corpora)."""

    field: str = "text"

    @property
    def features(self) -> tuple[str, ...]:
        return (self.field,)

    def parse(self, path, data):
        for number, line in _lines(path, data):
            yield f"{path}:{number}", line if isinstance(line, Malformed) else {self.field: line}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TsvFormat(RecordFormat):
    """Tab-separated columns, unquoted (GLUE style); fields picked by header name or index.

    Attributes:
      fields: feature name to column, a header name (needs ``header=True``)
        or a 0-based index.
      header: the first line names the columns and is not a record.
    """

    fields: Mapping[str, str | int] = dataclasses.field(default_factory=dict)
    header: bool = True

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def _column_indices(self, path: pathlib.Path, names: list[str] | None) -> dict[str, int]:
        if not self.fields:
            raise UserError(f"TsvFormat.fields is empty for {path}; name the columns to read, "
                            "e.g. fields={'text': 'sentence'}.")
        indices = {}
        for feature, column in self.fields.items():
            if isinstance(column, int):
                indices[feature] = column
            elif names is None:
                raise UserError(
                    f"TsvFormat.fields[{feature!r}]={column!r} names a column but "
                    f"TsvFormat.header=False for {path}; give a 0-based index or set header=True."
                )
            elif column not in names:
                raise UserError(
                    f"{path}:1: no column {column!r} in the header {names}; fix "
                    f"TsvFormat.fields[{feature!r}].{did_you_mean(column, names)}"
                )
            else:
                indices[feature] = names.index(column)
        return indices

    def parse(self, path, data):
        lines = _lines(path, data)
        names = None
        if self.header:
            first = next(lines, None)
            if first is None:
                return
            number, line = first
            if isinstance(line, Malformed):
                raise UserError(f"{path}:{number}: the TSV header is unreadable ({line}).")
            names = line.split("\t")
        indices = self._column_indices(path, names)
        width = len(names) if names is not None else None
        needed = max(indices.values()) + 1
        for number, line in lines:
            where = f"{path}:{number}"
            if isinstance(line, Malformed):
                yield where, line
                continue
            cells = line.split("\t")
            if (width is not None and len(cells) != width) or len(cells) < needed:
                expected = width if width is not None else f"at least {needed}"
                yield where, Malformed(f"{len(cells)} tab-separated columns, expected {expected}")
                continue
            yield where, {feature: cells[index] for feature, index in indices.items()}


def _json_text(obj: object, field: JsonField) -> str:
    """The text of ``field`` in a JSON object; raises Malformed when absent or not text."""
    if not isinstance(obj, dict):
        raise Malformed(f"a JSON {type(obj).__name__}, expected an object")
    keys = [field] if isinstance(field, str) else list(field)
    pieces: list[str] = []
    for key in keys:
        if key not in obj:
            raise Malformed(f"missing key {key!r}")
        value = obj[key]
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise Malformed(f"key {key!r} holds {type(value).__name__}, expected text or a list of text")
        pieces.extend(values)
    return JSON_JOINER.join(pieces)


def _json_record(obj: object, fields: Mapping[str, JsonField]) -> Record:
    return {feature: _json_text(obj, field) for feature, field in fields.items()}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class JsonlFormat(RecordFormat):
    """One JSON object per line; each feature is a key, or keys joined by newlines.

    A key whose value is a list of strings contributes them joined by newlines.
    """

    fields: Mapping[str, JsonField] = dataclasses.field(default_factory=lambda: {"text": "text"})

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def parse(self, path, data):
        for number, line in _lines(path, data):
            where = f"{path}:{number}"
            if isinstance(line, Malformed):
                yield where, line
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                yield where, Malformed(f"invalid JSON ({error.msg} at column {error.colno})")
                continue
            try:
                yield where, _json_record(obj, self.fields)
            except Malformed as problem:
                yield where, problem


@gin.configurable
@dataclasses.dataclass(frozen=True)
class JsonArrayFormat(RecordFormat):
    """The file is one JSON array of objects; locations are ``file[record N]``, from 1.

    An unparsable file is one malformed record for the whole file.
    """

    fields: Mapping[str, JsonField] = dataclasses.field(default_factory=lambda: {"text": "text"})

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def parse(self, path, data):
        try:
            array = json.loads(_decode(data))
        except Malformed as problem:
            yield str(path), problem
            return
        except json.JSONDecodeError as error:
            yield f"{path}:{error.lineno}", Malformed(f"invalid JSON ({error.msg})")
            return
        if not isinstance(array, list):
            yield str(path), Malformed(f"a JSON {type(array).__name__}, expected an array")
            return
        for number, obj in enumerate(array, start=1):
            try:
                yield f"{path}[record {number}]", _json_record(obj, self.fields)
            except Malformed as problem:
                yield f"{path}[record {number}]", problem


@dataclasses.dataclass(frozen=True)
class FileRecords:
    """A file's good records, and how many malformed ones were skipped."""

    records: list[Record]
    skipped: int = 0
    first_skipped: str | None = None


def read_records(path: pathlib.Path, record_format: RecordFormat, *, strict: bool,
                 setting: str) -> FileRecords:
    """All records of one file, applying the malformed-line policy.

    Args:
      path: the file (gzipped or not).
      record_format: how to parse it.
      strict: fail at the first malformed line, else skip and count.
      setting: the gin parameter that chooses ``strict``, named in messages.

    Raises:
      UserError: ``strict`` and a malformed line, with its ``file:line``.
    """
    records, skipped, first = [], 0, None
    for where, item in record_format.parse(path, open_bytes(path)):
        if isinstance(item, Malformed):
            if strict:
                raise UserError(
                    f"{where}: malformed {type(record_format).__name__} line: {item}; fix the "
                    f"file, or set {setting}=False to skip malformed lines (they are counted)."
                )
            skipped += 1
            first = first or f"{where}: {item}"
            continue
        records.append(item)
    if skipped:
        log.warning("skipped %d malformed line(s) of %s (first: %s); set %s=True to fail instead",
                    skipped, path, first, setting)
    return FileRecords(records, skipped, first)
