"""Deterministic batches of feature-dict examples (classification, tagging, BERT pretraining).

``LMBatches`` serves token streams through a seqio feature converter. Tasks
whose examples already are model features (``input_ids``, ``label``,
``labels``, ``mlm_targets``...) need no converter, only padding:
``ExampleBatches`` reads a split once, pads or cuts each rank-1 feature to its
length (reporting what is cut, never silently) and stacks scalars, then serves

- ``batch_at(step)``: a pure function of ``(seed, step)``. Epoch ``e`` is the
  permutation of all rows drawn from ``numpy.random.default_rng([seed, e])``
  and global position ``p = step * global_batch_size + row`` reads row
  ``perm(p // N)[p % N]``: no iterator state, so resuming at step ``s`` is
  asking for step ``s``. Each host takes only its contiguous slice.
- ``eval_batches(n)``: one pass over the split in stored order; the last
  batch is filled with all-zero rows, which objectives weigh 0 (no
  ``input_ids``), so no example counts twice or is lost.

Padding id is 0. Strings (e.g. ``*_pretokenized``) are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from llmos_jax.data.epoch_order import EpochOrder
from llmos_jax.data.materialise import keep_tensorflow_off_accelerators
from llmos_jax.data.providers import get_provider
from llmos_jax.data.truncation import FeatureTruncation, TruncationReport
from llmos_jax.errors import UserError

_BATCH = 4096  # Examples per tf.data batch while copying to numpy.
_LENGTH_SUFFIX = "__length"
_VOCABULARY_FEATURES = ("input_ids", "inputs", "targets")


@gin.configurable
class ExampleBatches:
    """Batches of a seqio Task split whose examples are feature dicts, ``batch = f(seed, step)``.

    Same constructor shape as ``LMBatches``, so ``train.batches =
    @ExampleBatches`` swaps one for the other.

    Args:
      task_name: A registered (or built-in) seqio Task or Mixture.
      split: The split to read.
      sequence_length: Length of every rank-1 feature (an int), or one
        length per feature (a mapping naming every rank-1 feature). Also
        passed to the Task's preprocessors as seqio's ``sequence_length``.
      global_batch_size: Rows per step over all hosts.
      seed: Selects the row order.
      pack: Must be False: feature-dict examples are not packed (set
        ``train.pack = False``).
      process_index: This host; defaults to ``jax.process_index()``.
      process_count: Hosts sharing each batch; defaults to ``jax.process_count()``.
      max_examples: Keep only the first this many examples (quick runs).

    Raises:
      UserError: A bad argument, an unknown task or split, an empty split,
        a feature without a length, or a feature of rank 2 or more.
    """

    def __init__(self, task_name: str, split: str, sequence_length: int | Mapping[str, int],
                 global_batch_size: int, *, seed: int = 0, pack: bool = False,
                 process_index: int | None = None, process_count: int | None = None,
                 max_examples: int | None = None):
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        if pack:
            raise UserError("ExampleBatches does not pack feature-dict examples; set "
                            "train.pack = False (or ExampleBatches.pack = False).")
        if global_batch_size <= 0 or global_batch_size % process_count:
            raise UserError(f"ExampleBatches.global_batch_size={global_batch_size} must be a "
                            f"positive multiple of the process count {process_count}.")
        if not 0 <= process_index < process_count:
            raise UserError(f"ExampleBatches.process_index={process_index} is outside "
                            f"[0, {process_count}).")
        if seed < 0:
            raise UserError(f"ExampleBatches.seed={seed} must be non-negative.")
        self._provider = get_provider(task_name, split, setting="train.task_name")
        self._lengths = _feature_lengths(sequence_length)
        self._arrays, self._truncation = _materialise(self._provider, split, self._lengths,
                                                      sequence_length, max_examples)
        self._truncation.warn(f"split {split!r} of {task_name!r}")
        self._num_examples = len(next(iter(self._arrays.values())))
        if self._num_examples == 0:
            raise UserError(f"split {split!r} of task {task_name!r} is empty; give it data or "
                            "choose another split.")
        self._order = EpochOrder(self._num_examples, seed)
        self._global_batch_size = global_batch_size
        self._host_batch_size = global_batch_size // process_count
        self._host_offset = process_index * self._host_batch_size

    @property
    def vocabulary(self) -> seqio.Vocabulary:
        """The vocabulary of ``input_ids`` (else ``inputs``, ``targets``, the first feature)."""
        features = self._provider.output_features
        for key in _VOCABULARY_FEATURES:
            if key in features:
                return features[key].vocabulary
        return next(iter(features.values())).vocabulary

    @property
    def truncation(self) -> TruncationReport:
        return self._truncation

    @property
    def num_examples(self) -> int:
        return self._num_examples

    @property
    def host_batch_size(self) -> int:
        return self._host_batch_size

    def _take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {key: array[rows] for key, array in self._arrays.items()}

    def global_batch_at(self, step: int) -> dict[str, np.ndarray]:
        """All ``global_batch_size`` rows of ``step``."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}.")
        return self._take(self._order.rows_at(step * self._global_batch_size,
                                              self._global_batch_size))

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This host's contiguous slice of the global batch of ``step``."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}.")
        start = step * self._global_batch_size + self._host_offset
        return self._take(self._order.rows_at(start, self._host_batch_size))

    def eval_batches(self, num_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """One pass in stored order, host-local; rows past the end are all zeros."""
        total = math.ceil(self._num_examples / self._global_batch_size)
        count = total if num_batches is None else min(num_batches, total)
        for k in range(count):
            start = k * self._global_batch_size + self._host_offset
            positions = np.arange(start, start + self._host_batch_size)
            batch = self._take(positions[positions < self._num_examples])
            padding = self._host_batch_size - len(batch[next(iter(batch))])
            if padding:
                batch = {key: np.pad(a, [(0, padding)] + [(0, 0)] * (a.ndim - 1))
                         for key, a in batch.items()}
            yield batch


def _feature_lengths(sequence_length: int | Mapping[str, int]) -> dict[str, int] | int:
    if isinstance(sequence_length, Mapping):
        lengths = {key: int(value) for key, value in sequence_length.items()}
        bad = {key: value for key, value in lengths.items() if value <= 0}
    else:
        lengths = int(sequence_length)
        bad = {"sequence_length": lengths} if lengths <= 0 else {}
    if bad:
        raise UserError(f"train.sequence_length has non-positive lengths {bad}; every length "
                        "must be positive.")
    return lengths


def _seqio_lengths(provider: seqio.DatasetProviderBase,
                   sequence_length: int | Mapping[str, int]) -> dict[str, int]:
    """What the Task's preprocessors see as ``sequence_length``."""
    if isinstance(sequence_length, Mapping):
        return {key: int(value) for key, value in sequence_length.items()}
    return {key: int(sequence_length) for key in provider.output_features}


def _materialise(provider, split: str, lengths: dict[str, int] | int,
                 sequence_length, max_examples: int | None
                 ) -> tuple[dict[str, np.ndarray], TruncationReport]:
    keep_tensorflow_off_accelerators()
    dataset = provider.get_dataset(sequence_length=_seqio_lengths(provider, sequence_length),
                                   split=split, shuffle=False, num_epochs=1,
                                   trim_output_features=False)
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    spec = dataset.element_spec
    numeric = {key: s for key, s in spec.items() if s.dtype != tf.string}
    for key, s in numeric.items():
        if s.shape.rank is None or s.shape.rank > 1:
            raise UserError(f"feature {key!r} of task {provider.name!r} has rank "
                            f"{s.shape.rank}; ExampleBatches serves scalars and rank-1 features.")
    sequences = [key for key, s in numeric.items() if s.shape.rank == 1]
    length_of = _lengths_of_sequences(provider, sequences, lengths)

    def add_sizes(example):
        out = {key: example[key] for key in numeric}
        out.update({key + _LENGTH_SUFFIX: tf.size(example[key]) for key in sequences})
        return out

    dataset = dataset.map(add_sizes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    parts: dict[str, list[np.ndarray]] = {key: [] for key in numeric}
    sizes: dict[str, list[np.ndarray]] = {key: [] for key in sequences}
    for batch in dataset.padded_batch(_BATCH).as_numpy_iterator():
        for key in numeric:
            value = batch[key]
            if key in length_of:
                value = _fit(value, length_of[key])
            parts[key].append(value)
        for key in sequences:
            sizes[key].append(batch[key + _LENGTH_SUFFIX])
    arrays = {}
    for key, values in parts.items():
        dtype = np.float32 if numeric[key].dtype.is_floating else np.int32
        shape = (0, length_of[key]) if key in length_of else (0,)
        arrays[key] = (np.concatenate(values) if values else np.zeros(shape)).astype(dtype)
    return arrays, _truncation_report(sizes, length_of)


def _lengths_of_sequences(provider, sequences: list[str],
                          lengths: dict[str, int] | int) -> dict[str, int]:
    if isinstance(lengths, int):
        return dict.fromkeys(sequences, lengths)
    missing = [key for key in sequences if key not in lengths]
    if missing:
        raise UserError(f"train.sequence_length={lengths} gives no length for features {missing} "
                        f"of task {provider.name!r}; name every sequence feature {sequences} or "
                        "give one int for all.")
    return {key: lengths[key] for key in sequences}


def _fit(array: np.ndarray, length: int) -> np.ndarray:
    """[n, any] -> [n, length]: cut, or pad with 0."""
    if array.shape[1] >= length:
        return array[:, :length]
    return np.pad(array, ((0, 0), (0, length - array.shape[1])))


def _truncation_report(sizes: dict[str, list[np.ndarray]],
                       length_of: dict[str, int]) -> TruncationReport:
    features, any_cut, examples = {}, None, 0
    for key, chunks in sizes.items():
        size = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
        over = np.maximum(size - length_of[key], 0)
        features[key] = FeatureTruncation(length_of[key], int((over > 0).sum()), int(over.sum()),
                                          int(size.sum()))
        any_cut = over > 0 if any_cut is None else any_cut | (over > 0)
        examples = len(size)
    truncated = 0 if any_cut is None else int(any_cut.sum())
    return TruncationReport(examples, truncated, features)
