"""Deterministic, resumable language-model batches: ``batch = f(seed, step)``.

A seqio Task split is materialised once into numpy arrays of model features;
the rows of step ``s`` are then a pure function of ``(seed, s, data)``. There is
no iterator state to checkpoint: resuming at step ``s`` means asking for step
``s``, and the global batch does not depend on how many hosts share it, so a
job can resume on a different number of hosts and see the same data.

Row order walks epochs: epoch ``e`` is the permutation of all rows drawn from
``numpy.random.default_rng([seed, e])``, and global position ``p`` (``step *
global_batch_size + row``) reads row ``perm(p // N)[p % N]``, so a batch may
straddle two epochs and no row repeats within an epoch.

Every host materialises the whole split and keeps its own contiguous slice of
each global batch. That suits corpora that fit in host memory (the default
stdlib corpus takes ~160 MB as int32 at L=256); larger data needs a sharded
source.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

import gin
from llmos_jax.data import split_snapshot
from llmos_jax.data.char_corpus import materialise_with_numpy
from llmos_jax.data.epoch_order import EpochOrder
from llmos_jax.data.feature_lengths import task_feature_lengths
from llmos_jax.data.split_snapshot import SplitArrays
from llmos_jax.data.truncation import TruncationReport
from llmos_jax.errors import UserError


@gin.configurable
class LMBatches:
    """Batches of a seqio Task split, each a pure function of ``(seed, step)``.

    Measured on a shared 2-core CPU (Python 3.11 stdlib, TF 2.21): the default
    ``stdlib_bytes`` train split (489 files, 8,037,536 bytes; 8,038,025 tokens
    with EOS) at ``sequence_length=256`` materialises packed into 31,649 rows
    in ~5-7 s (14 s with the cores contended; seqio's TF-ops packing is most
    of it), unpacked into 31,659 rows in ~2.5-5 s; validation (26 files,
    1,355 packed rows) in under 1 s. That is fast enough that by default no
    on-disk cache is kept (a cache keyed by names alone goes stale silently);
    a Beam-built cache (``use_cached``) is opt-in for data too large to
    preprocess at start-up.

    Output keys are the chosen feature converter's model features (see
    ``feature_converters``). For the default ``lm``: ``decoder_input_tokens``,
    ``decoder_target_tokens`` (int32), ``decoder_loss_weights`` (float32) and,
    when packed, ``decoder_segment_ids`` and ``decoder_positions`` (int32), each
    of shape ``[rows, sequence_length]``. ``enc_dec`` adds ``encoder_*``
    features; ``prefix_lm`` adds ``decoder_causal_attention``.

    Reading a Beam-built cache (``use_cached=True``) keeps ``batch = f(seed,
    step)`` for that cache: its example order is fixed once written, but a
    re-built cache is shuffled differently by Beam, so it counts as new data.

    On a host without TensorFlow (a GPU image), ``snapshot_dir`` reads the
    materialised split that :meth:`save_snapshot` wrote on a host with seqio
    (``tools/snapshot_splits.py``); the batches are the same, step for step.
    """

    def __init__(
        self,
        task_name: str,
        split: str,
        sequence_length: int | Mapping[str, int],
        global_batch_size: int,
        *,
        seed: int = 0,
        pack: bool = True,
        feature_converter: str = "lm",
        process_index: int | None = None,
        process_count: int | None = None,
        max_examples: int | None = None,
        use_cached: bool = False,
        cache_dirs: Sequence[str] = (),
        random_windows: bool = False,
        snapshot_dir: str | None = None,
        pipeline: str = "seqio",
    ):
        """Materialises the split; all batches are then computed from memory.

        Args:
          task_name: a registered seqio Task or Mixture, or a built-in one
            (``llmos tasks list``).
          split: its split to read.
          sequence_length: tokens per row, or each task feature's length
            (see ``feature_converters``).
          global_batch_size: rows per step over all hosts.
          seed: selects the row order; same seed, same batches.
          pack: pack several short examples into one row (with segment ids).
          feature_converter: ``"lm"``, ``"prefix_lm"`` or ``"enc_dec"``.
          process_index: this host; defaults to ``jax.process_index()``.
          process_count: hosts sharing each batch; defaults to
            ``jax.process_count()``.
          max_examples: keep only the first this many rows (quick runs).
          use_cached: read the Task's tokenized examples from a cache built by
            ``tools/cache_task.py`` instead of preprocessing them now.
          cache_dirs: folders holding such caches (relative to the cwd).
          random_windows: with the ``next_token`` converter, draw each training
            row at a random offset of the split's token stream (nanoGPT's
            sampler) instead of from fixed windows. Offsets are drawn from
            ``(seed, step)``, so batches stay a pure function of the step.
            ``eval_batches`` still walks the fixed windows once.
          snapshot_dir: read the split from this folder of snapshots (see
            :meth:`save_snapshot`) instead of running seqio; needs neither
            seqio nor TensorFlow.
          pipeline: ``"seqio"`` (any Task), or ``"numpy"``: build the same
            arrays with numpy alone, without importing TensorFlow (seconds of
            start-up and ~1 GB of memory less); covers character-level
            ``tiny_shakespeare_char`` with the ``next_token`` converter
            (``char_corpus``). ``reads_seqio`` says which one made the data.

        Raises:
          UserError: a bad argument, an unknown task or split, a missing cache,
            an empty split, or a snapshot made with other settings.
        """
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        positive = {
            "global_batch_size": global_batch_size,
            "process_count": process_count,
        }
        for arg, value in positive.items():
            if value <= 0:
                raise UserError(
                    f"LMBatches.{arg}={value} must be positive; fix gin: LMBatches.{arg}."
                )
        if seed < 0:
            raise UserError(f"LMBatches.seed={seed} must be non-negative; fix gin: LMBatches.seed.")
        if max_examples is not None and max_examples <= 0:
            raise UserError(
                f"LMBatches.max_examples={max_examples} must be positive or None; "
                "fix gin: LMBatches.max_examples."
            )
        if global_batch_size % process_count:
            raise UserError(
                f"LMBatches.global_batch_size={global_batch_size} is not divisible by "
                f"the process count {process_count}; set gin LMBatches.global_batch_size "
                f"to a multiple of {process_count}."
            )
        if not 0 <= process_index < process_count:
            raise UserError(
                f"LMBatches.process_index={process_index} is outside [0, {process_count}); "
                "fix gin: LMBatches.process_index (or leave it unset)."
            )
        lengths = task_feature_lengths(feature_converter, sequence_length)
        self._split = split
        # What the materialised arrays depend on; a snapshot must match it.
        self._settings: dict[str, Any] = {
            "task_name": task_name, "split": split, "feature_lengths": lengths,
            "feature_converter": feature_converter, "pack": pack, "max_examples": max_examples}
        if pipeline not in ("seqio", "numpy"):
            raise UserError(f"LMBatches.pipeline={pipeline!r} is not one of 'seqio', 'numpy'; "
                            "fix gin: LMBatches.pipeline.")
        self.reads_seqio = snapshot_dir is None and pipeline == "seqio"
        if snapshot_dir is None and pipeline == "numpy":
            split_arrays, self._vocabulary = materialise_with_numpy(
                task_name, split, lengths, feature_converter, pack, max_examples=max_examples)
        elif snapshot_dir is None:
            split_arrays, self._vocabulary = _materialise_with_seqio(
                task_name, split, lengths, feature_converter, pack, max_examples=max_examples,
                use_cached=use_cached, cache_dirs=cache_dirs)
        else:
            split_arrays, self._vocabulary = split_snapshot.read_split_snapshot(
                snapshot_dir, split, settings=self._settings)
        self._arrays = split_arrays.arrays
        self._truncation = split_arrays.truncation
        self._truncation.warn(f"split {split!r} of {task_name!r}")
        self._num_examples = split_arrays.num_rows
        if self._num_examples == 0:
            raise UserError(
                f"Split {split!r} of task {task_name!r} is empty; give it data or choose "
                "another split (gin: LMBatches.split / LMBatches.task_name)."
            )
        self._seed = seed
        self._order = EpochOrder(self._num_examples, seed)
        self._global_batch_size = global_batch_size
        self._host_batch_size = global_batch_size // process_count
        self._host_offset = process_index * self._host_batch_size
        self._stream = None
        if random_windows:
            if feature_converter != "next_token":
                raise UserError(
                    "LMBatches.random_windows=True needs LMBatches.feature_converter="
                    f"'next_token' (got {feature_converter!r}).")
            self._stream = token_stream(self._arrays)
            self._window = self._arrays["decoder_input_tokens"].shape[1] + 1
            if len(self._stream) <= self._window:
                raise UserError(f"split {split!r} of task {task_name!r} has "
                                f"{len(self._stream)} tokens, too few for random windows of "
                                f"{self._window}.")

    @property
    def vocabulary(self) -> Any:
        """The vocabulary of the ``targets`` feature (a ``vocabulary_tables`` table from a snapshot)."""
        return self._vocabulary

    def save_snapshot(self, directory: str) -> str:
        """Writes the materialised split for ``snapshot_dir`` on hosts without TensorFlow."""
        split_snapshot.write_split_snapshot(
            directory, self._split, SplitArrays(self._arrays, self._truncation),
            vocabulary=self._vocabulary, settings=self._settings)
        return directory

    @property
    def truncation(self) -> TruncationReport:
        """Examples and tokens that trimming to the sequence length cut from the split."""
        return self._truncation

    @property
    def num_examples(self) -> int:
        """Rows in the materialised split (one epoch)."""
        return self._num_examples

    @property
    def host_batch_size(self) -> int:
        """Rows per step on this host: ``global_batch_size // process_count``."""
        return self._host_batch_size

    def _take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {key: array[rows] for key, array in self._arrays.items()}

    def _random_window_rows(self, step: int, start: int, count: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self._seed, step])
        offsets = rng.integers(0, len(self._stream) - self._window + 1,
                               size=self._global_batch_size)[start:start + count]
        windows = np.stack([self._stream[o:o + self._window] for o in offsets])
        return {"decoder_input_tokens": windows[:, :-1], "decoder_target_tokens": windows[:, 1:],
                "decoder_loss_weights": (windows[:, 1:] != 0).astype(np.float32)}

    def global_batch_at(self, step: int) -> dict[str, np.ndarray]:
        """All ``global_batch_size`` rows of ``step``."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}.")
        if self._stream is not None:
            return self._random_window_rows(step, 0, self._global_batch_size)
        start = step * self._global_batch_size
        return self._take(self._order.rows_at(start, self._global_batch_size))

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This host's contiguous slice of the global batch of ``step``."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}.")
        if self._stream is not None:
            return self._random_window_rows(step, self._host_offset, self._host_batch_size)
        start = step * self._global_batch_size + self._host_offset
        return self._take(self._order.rows_at(start, self._host_batch_size))

    def eval_batches(self, num_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """One sequential pass in stored order, host-local, for held-out loss.

        Global batch ``k`` holds rows ``[k * B, (k + 1) * B)``; rows past the
        end are all-zero padding (loss weight 0), so no row counts twice. The
        pass stops after ``num_batches`` batches or when the split is used up,
        whichever is first; every host yields the same number of batches.
        """
        total = math.ceil(self._num_examples / self._global_batch_size)
        count = total if num_batches is None else min(num_batches, total)
        for k in range(count):
            start = k * self._global_batch_size + self._host_offset
            positions = np.arange(start, start + self._host_batch_size)
            real = positions[positions < self._num_examples]
            batch = self._take(real)
            padding = self._host_batch_size - len(real)
            if padding:
                batch = {
                    key: np.pad(array, ((0, padding), (0, 0)))
                    for key, array in batch.items()
                }
            yield batch


def _materialise_with_seqio(task_name: str, split: str, lengths: Mapping[str, int],
                            feature_converter: str, pack: bool, **options) -> tuple[SplitArrays, Any]:
    """The split's arrays and its targets vocabulary, through seqio and TensorFlow."""
    # Imported here so that snapshot and numpy-pipeline runs need neither package.
    from llmos_jax.data.tensorflow_host import import_seqio_modules

    import_seqio_modules()  # TensorFlow quietly, and the Task catalog (after a deferred parse)
    import seqio

    from llmos_jax.data.feature_converters import make_feature_converter
    from llmos_jax.data.materialise import materialise

    converter = make_feature_converter(feature_converter, pack)
    arrays = materialise(task_name, split, lengths, converter, **options)
    vocabulary = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
    return arrays, vocabulary


def token_stream(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The token sequence that ``next_token`` rows were cut from, in order.

    Each row is a window w of L + 1 tokens stored as (w[:-1], w[1:]); windows
    are consecutive, so joining them gives the split back (trailing padding,
    id 0, dropped).
    """
    inputs, targets = arrays["decoder_input_tokens"], arrays["decoder_target_tokens"]
    windows = np.concatenate([inputs[:, :1], targets], axis=1).reshape(-1)
    end = len(windows)
    while end and windows[end - 1] == 0:
        end -= 1
    return windows[:end].astype(np.int32)
