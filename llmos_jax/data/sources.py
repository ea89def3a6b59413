"""seqio data sources: local record files, Python functions and TFDS datasets.

Every source yields examples whose features are text (``tf.string``); the
Task's preprocessors tokenize them. Sources resolve their paths lazily, when
data is first read, so registering a Task never touches the disk and a
missing file is reported when (and only if) it is needed.

- :class:`FileSource`: TSV/JSONL/JSON/text files, gzipped or not, one seqio
  shard per file so a Beam cache job spreads files over workers. A split may
  also be carved out of the others by a stable hash of a key (:class:`HeldOut`).
- :class:`FunctionSource`: a Python function from split name to records.
- :func:`tfds_source`: a prepared TensorFlow Datasets dataset, never
  downloaded unless asked to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from llmos_jax.data.data_dir import data_dir, resolve_data_files, resolve_data_path
from llmos_jax.data.records import RecordFormat, read_records
from llmos_jax.errors import UserError

Record = Mapping[str, str]


def records_dataset(records: Sequence[Record], features: Sequence[str]) -> tf.data.Dataset:
    """A dataset of string examples with exactly ``features`` as keys."""
    return tf.data.Dataset.from_tensor_slices(
        {key: tf.constant([r[key] for r in records], tf.string, shape=[len(records)])
         for key in features}
    )


@gin.configurable
@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Moves a stable ~``fraction`` of records, chosen by a hash of one key, into ``split``.

    A record goes to ``split`` when the first 8 bytes of ``sha256(record[key])``,
    read as a fraction of 2**64, are below ``fraction``, and is removed from
    every other split (a cryptographic hash, unlike CRC32, spreads near-equal
    keys such as ``p1``, ``p2`` evenly). The choice depends on the key's
    text alone, so it does not move when files are added, reordered or
    sharded, and Beam workers agree on it.
    """

    split: str = "validation"
    fraction: float = 0.02
    key: str = "id"

    def holds(self, record: Record) -> bool:
        digest = hashlib.sha256(record[self.key].encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.fraction


@gin.configurable
class FileSource(seqio.DataSource):
    """Records read from local files; each split is a list of glob patterns.

    Relative patterns are under the data directory (see ``data_dir``) as it
    is when the source is created, so a registered Task keeps reading the
    same files even if the setting changes later.
    """

    def __init__(
        self,
        splits: Mapping[str, str | Sequence[str]],
        record_format: RecordFormat,
        *,
        strict: bool = True,
        held_out: HeldOut | None = None,
        setting: str = "FileSource",
    ):
        """Declares the source; nothing is read until a split is requested.

        Args:
          splits: split name to a glob pattern or a list of them.
          record_format: how each file becomes records (``TsvFormat`` etc.).
          strict: malformed lines raise a ``file:line`` UserError; if False
            they are skipped, counted and logged.
          held_out: carve one split out of the others by a key hash; the
            held-out split may then list the same files as the others.
          setting: the gin prefix of this source's parameters, for messages
            (e.g. ``register_tang_poems_spm``).

        Raises:
          UserError: no splits, or ``held_out`` names an unknown split, a key
            the format does not extract, or a fraction outside (0, 1).
        """
        if not splits:
            raise UserError(f"{setting}.splits is empty; map split names to file patterns.")
        self._patterns = {
            split: (pattern,) if isinstance(pattern, (str, os.PathLike)) else tuple(pattern)
            for split, pattern in splits.items()
        }
        if held_out is not None:
            if held_out.split not in self._patterns:
                raise UserError(f"{setting}.held_out.split={held_out.split!r} is not one of the "
                                f"splits {list(self._patterns)}; add it to {setting}.splits.")
            if held_out.key not in record_format.features:
                raise UserError(f"{setting}.held_out.key={held_out.key!r} is not a field of "
                                f"the format ({list(record_format.features)}); extract it.")
            if not 0.0 < held_out.fraction < 1.0:
                raise UserError(f"{setting}.held_out.fraction={held_out.fraction} must be in (0, 1).")
        self._root = data_dir()
        self._format = record_format
        self._strict = strict
        self._held_out = held_out
        self._setting = setting
        super().__init__(splits=tuple(self._patterns), caching_permitted=True)

    @property
    def features(self) -> tuple[str, ...]:
        return self._format.features

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def files(self, split: str) -> tuple[pathlib.Path, ...]:
        """The split's files, each pattern's matches sorted, patterns in order."""
        if split not in self._patterns:
            raise UserError(f"{self._setting} has no split {split!r}; use one of {list(self._patterns)}.")
        found: list[pathlib.Path] = []
        for pattern in self._patterns[split]:
            found += resolve_data_files(pattern, f"{self._setting}.splits[{split!r}]",
                                        root=self._root)
        return tuple(found)

    def list_shards(self, split: str) -> list[str]:
        return [str(path) for path in self.files(split)]

    def _keep(self, split: str, record: Record) -> bool:
        if self._held_out is None:
            return True
        return self._held_out.holds(record) == (split == self._held_out.split)

    def read(self, split: str, shard_info: seqio.ShardInfo | None = None) -> list[Record]:
        """The records of ``split`` (or of one shard of its files), in file order.

        Raises:
          UserError: a missing file, a malformed line when strict, or (for a
            whole split) no records at all.
        """
        files = self.files(split)
        if shard_info is not None:
            files = files[shard_info.index :: shard_info.num_shards]
        records: list[Record] = []
        skipped = 0
        for path in files:
            result = read_records(path, self._format, strict=self._strict,
                                  setting=f"{self._setting}.strict")
            records += [r for r in result.records if self._keep(split, r)]
            skipped += result.skipped
        if not records and shard_info is None:
            why = f"; all {skipped} record(s) were malformed and skipped" if skipped else ""
            raise UserError(
                f"split {split!r} of {self._setting} is empty: {[str(f) for f in files]} hold no "
                f"records{why}. Give it data, or fix {self._setting}.splits."
            )
        return records

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                    use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs  # Not used by sources.
        records = self.read(split, shard_info)
        if shuffle:  # Record order, reproducible from the seed.
            order = np.random.default_rng(seed).permutation(len(records))
            records = [records[i] for i in order]
        return records_dataset(records, self.features)


class FunctionSource(seqio.FunctionDataSource):
    """Records from a Python function of the split name, computed once per split.

    The function returns records (dicts of text) or plain strings, which
    become ``{"text": string}``. Use it for corpora that need code to read
    (e.g. a character-position split of one file).
    """

    def __init__(self, records_fn: Callable[[str], Iterable[Record | str]], splits: Sequence[str],
                 *, features: Sequence[str] = ("text",)):
        """Args:
          records_fn: split name to its records, called lazily and at most once per split.
            An empty split is allowed here; ``LMBatches`` refuses to train on one.
          splits: the split names ``records_fn`` accepts.
          features: the keys of every record.
        """
        self._features = tuple(features)
        self._records_fn = records_fn
        self._records: dict[str, tuple[Record, ...]] = {}

        def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
            del shuffle_files, seed  # One in-memory shard.
            return records_dataset(self.read(split), self._features)

        super().__init__(dataset_fn=dataset_fn, splits=tuple(splits))

    def read(self, split: str) -> tuple[Record, ...]:
        """The records of ``split``, computed on first use and kept."""
        if split not in self._records:
            self._records[split] = tuple(
                {"text": r} if isinstance(r, str) else dict(r) for r in self._records_fn(split))
        return self._records[split]

    @property
    def features(self) -> tuple[str, ...]:
        return self._features


def _tfds_dataset_dir(name: str) -> str:
    """The folder TFDS prepares ``name`` in: ``dataset[/config]`` without ``:version``."""
    return name.split(":")[0]


@gin.configurable
def tfds_source(name: str, splits: Mapping[str, str] | Sequence[str], *,
                data_dir: str | None = None, allow_download: bool = False) -> seqio.TfdsDataSource:
    """A TensorFlow Datasets dataset as a seqio source.

    By default nothing is downloaded or generated: the dataset must already be
    prepared under ``data_dir`` (``tfds build NAME --data_dir DIR`` on a
    machine with network), so a training job never reaches out mid-run.

    Args:
      name: TFDS name, ``dataset[/config][:version]``.
      splits: split names, or our split name to a TFDS split or slice
        (e.g. ``{'validation': 'train[:2%]'}``). Required, so that listing
        tasks needs no TFDS metadata.
      data_dir: the TFDS data folder; relative to the data directory.
      allow_download: let TFDS download and prepare the dataset when missing.

    Raises:
      UserError: ``allow_download`` is False and ``data_dir`` is unset or does
        not hold the dataset.
    """
    setting = "tfds_source"
    resolved = None
    if data_dir is not None:
        resolved = resolve_data_path(data_dir, f"{setting}.data_dir", must_exist=not allow_download)
    if not allow_download:
        prepared = resolved / _tfds_dataset_dir(name) if resolved is not None else None
        if prepared is None or not prepared.is_dir():
            where = str(prepared) if prepared else "(tfds_source.data_dir is unset)"
            raise UserError(
                f"TFDS dataset {name!r} is not prepared at {where}; run `tfds build "
                f"{_tfds_dataset_dir(name)} --data_dir DIR` where there is network and set "
                f"{setting}.data_dir=DIR, or set {setting}.allow_download=True."
            )
    return seqio.TfdsDataSource(
        tfds_name=name,
        tfds_data_dir=str(resolved) if resolved is not None else None,
        splits=splits,
        read_only=not allow_download,
    )
