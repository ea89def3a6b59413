"""A materialised split on disk, so hosts without TensorFlow can train on it.

seqio runs on TensorFlow, which accelerator images often lack (and which
should not hold GPU memory anyway). ``LMBatches`` materialises a split into
plain arrays before it batches anything; this module saves those arrays, the
truncation report and the vocabulary, and reads them back with numpy alone.
Batches from a snapshot equal the batches from seqio, step for step, because
the same ``LMBatches`` code cuts them from the same arrays.

A snapshot folder holds ``{split}.npz`` (the arrays) and ``{split}.json``
(what they were made from). Reading checks that record against the run's
settings, so a snapshot made for another task, length or converter is refused
by name instead of silently training on the wrong rows.

The vocabulary travels as a seqio-free table (``vocabulary_tables``):
character, byte and SentencePiece vocabularies without extra ids.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from llmos_jax.data.truncation import FeatureTruncation, TruncationReport
from llmos_jax.data.vocabulary_tables import (
    Table,
    table_from_record,
    table_of,
    table_record,
)
from llmos_jax.errors import UserError

FORMAT = "llmos_split_snapshot"
VERSION = 1
SNAPSHOT_TOOL = "python tools/snapshot_splits.py --gin_file=... --output_dir=DIR"


@dataclasses.dataclass
class SplitArrays:
    """Model features, one ``[rows, length]`` array each, and what trimming cut."""

    arrays: dict[str, np.ndarray]
    truncation: TruncationReport

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.arrays.values())))


def _paths(directory: str | pathlib.Path, split: str) -> tuple[pathlib.Path, pathlib.Path]:
    directory = pathlib.Path(directory)
    return directory / f"{split}.npz", directory / f"{split}.json"


def write_split_snapshot(directory: str | pathlib.Path, split: str, split_arrays: SplitArrays, *,
                         vocabulary: Any, settings: Mapping[str, Any]) -> pathlib.Path:
    """Saves one split; returns the folder. ``settings`` is checked again on read."""
    array_path, record_path = _paths(directory, split)
    record = {"format": FORMAT, "version": VERSION, "settings": dict(settings),
              "vocabulary": table_record(table_of(vocabulary, settings.get("task_name", "?"))),
              "truncation": dataclasses.asdict(split_arrays.truncation),
              "arrays": {key: [list(value.shape), str(value.dtype)]
                         for key, value in split_arrays.arrays.items()}}
    array_path.parent.mkdir(parents=True, exist_ok=True)
    # Arrays first, record last: a folder with a record always has its arrays.
    with open(array_path, "wb") as file:
        np.savez(file, **split_arrays.arrays)
    record_path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    return array_path.parent


def _truncation_from(record: Mapping[str, Any]) -> TruncationReport:
    features = {key: FeatureTruncation(**value) for key, value in record["features"].items()}
    return TruncationReport(record["examples"], record["truncated_examples"], features)


def read_split_snapshot(directory: str | pathlib.Path, split: str, *,
                        settings: Mapping[str, Any],
                        setting_name: str = "LMBatches.snapshot_dir"
                        ) -> tuple[SplitArrays, Table]:
    """Loads one split written by :func:`write_split_snapshot` for the same ``settings``.

    Raises:
      UserError: a missing or unreadable snapshot, or one made with other
        settings; the message names ``setting_name`` and how to rebuild it.
    """
    array_path, record_path = _paths(directory, split)
    rebuild = f"build it with `{SNAPSHOT_TOOL}` on a host with seqio, or fix {setting_name}"
    if not record_path.is_file() or not array_path.is_file():
        raise UserError(f"{setting_name}={str(directory)!r} has no snapshot of split {split!r} "
                        f"({record_path.name} and {array_path.name}); {rebuild}.")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("format") != FORMAT:
            raise ValueError(f"format is {record.get('format')!r}, not {FORMAT!r}")
        if record.get("version") != VERSION:
            raise ValueError(f"version {record.get('version')} is not {VERSION}")
        truncation = _truncation_from(record["truncation"])
        saved = record["settings"]
        vocabulary = table_from_record(record["vocabulary"], str(record_path))
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{record_path} is not a readable split snapshot ({error}); "
                        f"{rebuild}.") from None
    current = json.loads(json.dumps(dict(settings)))  # Tuples become lists, as saved.
    differing = {key: (saved.get(key), value) for key, value in current.items()
                 if saved.get(key) != value}
    if differing:
        details = "; ".join(f"{key}: snapshot {old!r}, this run {new!r}"
                            for key, (old, new) in sorted(differing.items()))
        raise UserError(f"the snapshot {record_path} was made with other settings ({details}); "
                        f"{rebuild}.")
    with np.load(array_path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    expected = {key: (shape, dtype) for key, (shape, dtype) in record["arrays"].items()}
    found = {key: (list(value.shape), str(value.dtype)) for key, value in arrays.items()}
    if found != expected:
        raise UserError(f"{array_path} does not hold the arrays {record_path.name} lists "
                        f"(expected {expected}, found {found}); {rebuild}.")
    return SplitArrays(arrays, truncation), vocabulary
