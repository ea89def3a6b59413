"""A Task or Mixture split as in-memory numpy arrays of model features.

This is the one place data leaves TensorFlow: the split is read once, in a
fixed order (no shuffling, Mixtures sampled with seqio's fixed seed),
converted by the chosen feature converter and copied into
``[rows, length]`` arrays. ``LMBatches`` then orders rows itself.

Trimming is measured on the way (see ``truncation``): the task examples are
read untrimmed, counted against the lengths, and only then trimmed by the
feature converter, so a warning says how much text the lengths drop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from llmos_jax.data.providers import get_provider
from llmos_jax.data.split_snapshot import SplitArrays
from llmos_jax.data.truncation import count_truncation
from llmos_jax.errors import UserError

_MATERIALISE_BATCH = 4096  # Rows per tf.data batch while copying to numpy.


def keep_tensorflow_off_accelerators() -> None:
    """Stops TensorFlow from claiming GPU memory that JAX needs."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TensorFlow already initialised its devices; nothing to change.


def _tasks_of(provider: seqio.DatasetProviderBase) -> list[seqio.Task]:
    return list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]


def require_cached(provider: seqio.DatasetProviderBase, cache_dirs: Sequence[str]) -> None:
    """Registers ``cache_dirs`` with seqio and checks every Task of ``provider`` is cached there.

    Raises:
      UserError: a Task without a completed cache, with the command that builds it.
    """
    seqio.add_global_cache_dirs([os.path.abspath(d) for d in cache_dirs])
    for task in _tasks_of(provider):
        if not task.cache_dir:
            searched = seqio.get_global_cache_dirs()
            raise UserError(
                f"task {task.name!r} has no completed cache in {searched} (gin: "
                "LMBatches.cache_dirs); build one with `python tools/cache_task.py "
                f"--task={task.name} --output_cache_dir=DIR` and add DIR to LMBatches.cache_dirs, "
                "or set LMBatches.use_cached=False."
            )


def _trim(dataset: tf.data.Dataset, lengths: Mapping[str, int]) -> tf.data.Dataset:
    """Cuts each feature in ``lengths`` to its length, as seqio's own trimming does."""
    return dataset.map(
        lambda ex: {key: value[: lengths[key]] if key in lengths else value
                    for key, value in ex.items()},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    )


def materialise(
    task_name: str,
    split: str,
    task_feature_lengths: Mapping[str, int],
    feature_converter: seqio.FeatureConverter,
    *,
    max_examples: int | None = None,
    use_cached: bool = False,
    cache_dirs: Sequence[str] = (),
) -> SplitArrays:
    """Reads a split into model-feature arrays (int32; loss weights float32).

    Args:
      task_name: a registered (or built-in) Task or Mixture.
      split: its split.
      task_feature_lengths: trim length of each task feature.
      feature_converter: turns task features into model features.
      max_examples: keep the first this many rows (truncation is then counted
        over the first this many task examples).
      use_cached: read tokenized examples from a ``tools/cache_task.py`` cache.
      cache_dirs: folders holding such caches.

    Raises:
      UserError: an unknown task or split, or a missing cache.
    """
    provider = get_provider(task_name, split)
    if use_cached:
        require_cached(provider, cache_dirs)
    keep_tensorflow_off_accelerators()
    untrimmed = provider.get_dataset(
        sequence_length=dict(task_feature_lengths), split=split, use_cached=use_cached,
        shuffle=False, num_epochs=1, trim_output_features=False,
    )
    if max_examples is None:
        untrimmed = untrimmed.cache()  # Read (and preprocess) once for both passes.
        truncation = count_truncation(untrimmed, task_feature_lengths)
    else:  # A quick run: count a prefix instead of reading the whole split.
        truncation = count_truncation(untrimmed.take(max_examples), task_feature_lengths)
    dataset = feature_converter(_trim(untrimmed, task_feature_lengths),
                                task_feature_lengths=task_feature_lengths)
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    parts: dict[str, list[np.ndarray]] = {key: [] for key in dataset.element_spec}
    for batch in dataset.batch(_MATERIALISE_BATCH).as_numpy_iterator():
        for key, value in batch.items():
            parts[key].append(value)
    lengths = feature_converter.get_model_feature_lengths(task_feature_lengths)
    arrays = {
        key: (np.concatenate(values) if values else np.zeros((0, lengths[key]))).astype(
            np.float32 if key.endswith("loss_weights") else np.int32)
        for key, values in parts.items()
    }
    return SplitArrays(arrays, truncation)
