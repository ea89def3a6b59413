"""Caching a Task's tokenized examples with an Apache Beam pipeline (seqio's format).

Preprocessing up to the Task's ``CacheDatasetPlaceholder`` (reading,
parsing, tokenizing) runs once, spread over Beam workers (one work item per
source shard, e.g. per file), and is written as TFRecords plus the
``info.*.json`` / ``stats.*.json`` / ``COMPLETED`` files seqio reads when a
Task is loaded with ``use_cached=True`` (``LMBatches.use_cached``).

The pipeline is built from seqio's own Beam transforms (``PreprocessTask``,
``WriteExampleTfRecord``, ``GetInfo``, ``GetStats``, ``WriteJson``), so the
same code runs locally (the FnApiRunner by default, or the DirectRunner) and
on Dataflow, Flink or Spark given their standard pipeline options. Remote workers rebuild the Task registry
themselves: they import ``modules`` and re-apply the gin config text before
looking the Task up, exactly as the launching process did.

Requires the ``beam`` extra: ``pip install 'llmos_jax[beam]'``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import pathlib
from collections.abc import Sequence

import seqio
import tensorflow as tf

from llmos_jax.data.providers import get_provider
from llmos_jax.errors import UserError

log = logging.getLogger("llmos_jax.data")

DEFAULT_RUNNER = "FnApiRunner"
"""Beam's local, in-process batch runner: what the DirectRunner runs batch
pipelines on, minus its first step in Beam 2.77, downloading the Prism runner
from GitHub (which fails slowly or hangs without network)."""


def _import_beam():
    try:
        import apache_beam
        from seqio import beam_utils
    except ModuleNotFoundError as error:
        raise UserError(f"caching needs Apache Beam ({error.name} is not installed); install "
                        "it with: pip install 'llmos_jax[beam]'") from None
    return apache_beam, beam_utils


def prepare_worker(task_name: str, gin_config_text: str, modules: Sequence[str]) -> None:
    """Makes ``task_name`` resolvable in a Beam worker process (no-op where it already is)."""
    for module in modules:
        importlib.import_module(module)
    if task_name in seqio.TaskRegistry.names():
        return
    import gin

    importlib.import_module("llmos_jax.data.catalog")
    if gin_config_text:
        gin.parse_config(gin_config_text)
    get_provider(task_name, setting="--task")


def task_cache_dir(output_cache_dir: str | os.PathLike, task_name: str) -> pathlib.Path:
    """Where seqio looks for ``task_name``'s cache under a global cache folder."""
    return pathlib.Path(output_cache_dir) / seqio.get_task_dir_from_name(task_name)


def add_cache_steps(pipeline, task_name: str, output_cache_dir: str | os.PathLike, *,
                    min_shards: int = 1, gin_config_text: str = "",
                    modules: Sequence[str] = ()) -> list:
    """Adds the steps that cache every split of ``task_name`` to ``pipeline``.

    Returns:
      The PCollections whose completion means the splits are written; the
      caller writes ``COMPLETED`` after them (see :func:`cache_task`).

    Raises:
      UserError: the Task cannot be cached (no ``CacheDatasetPlaceholder`` or
        a source that forbids it).
    """
    beam, beam_utils = _import_beam()
    task = get_provider(task_name, setting="--task")
    if not isinstance(task, seqio.Task) or not task.supports_caching:
        raise UserError(f"--task={task_name!r} cannot be cached: it needs a "
                        "seqio.CacheDatasetPlaceholder among its preprocessors and a source "
                        "that permits caching (tasks from registry.register_*_task have both).")
    output_dir = task_cache_dir(output_cache_dir, task_name)
    setup = functools.partial(prepare_worker, task_name, gin_config_text, tuple(modules))
    done = []
    for split in task.splits:
        label = f"{task_name}_{split}"
        transform = beam_utils.PreprocessTask(task, split, setup_fn=setup,
                                              modules_to_import=tuple(modules))
        num_shards = max(len(transform.shards), min_shards)
        examples = pipeline | f"{label}_preprocess" >> transform
        done.append(examples | f"{label}_write" >> beam_utils.WriteExampleTfRecord(
            seqio.get_cached_tfrecord_prefix(str(output_dir), split), num_shards=num_shards))
        done.append(examples
                    | f"{label}_info" >> beam_utils.GetInfo(num_shards)
                    | f"{label}_write_info" >> beam_utils.WriteJson(
                        seqio.get_cached_info_path(str(output_dir), split)))
        done.append(examples
                    | f"{label}_stats" >> beam_utils.GetStats(task.output_features)
                    | f"{label}_write_stats" >> beam_utils.WriteJson(
                        seqio.get_cached_stats_path(str(output_dir), split)))
    _ = (done
         | f"{task_name}_all_splits" >> beam.Flatten()
         | f"{task_name}_nothing" >> beam.Filter(lambda _: False)
         | f"{task_name}_completed" >> beam.io.textio.WriteToText(
             str(output_dir / "COMPLETED"), num_shards=1, shard_name_template="",
             append_trailing_newlines=False))
    return done


def cache_task(task_name: str, output_cache_dir: str | os.PathLike,
               pipeline_args: Sequence[str] = (), *, overwrite: bool = False,
               min_shards: int = 1, gin_config_text: str = "",
               modules: Sequence[str] = ()) -> pathlib.Path:
    """Runs a Beam pipeline that caches ``task_name`` under ``output_cache_dir``.

    Args:
      task_name: a registered or built-in Task.
      output_cache_dir: the cache folder (local path or a URL Beam and
        TensorFlow can write, e.g. ``gs://...``); later given to
        ``LMBatches.cache_dirs``.
      pipeline_args: standard Beam options, e.g. ``["--runner=DataflowRunner",
        "--project=...", "--region=..."]``; :data:`DEFAULT_RUNNER` when no
        runner is named (``--runner=DirectRunner`` works too).
      overwrite: replace an existing cache of this Task.
      min_shards: write at least this many TFRecord shards per split.
      gin_config_text: gin config for workers (``gin.config_str()``).
      modules: modules that register the Task, imported on every worker.

    Returns:
      The Task's cache folder.

    Raises:
      UserError: the cache exists (without ``overwrite``), the Task cannot be
        cached, or Beam is not installed.
    """
    beam, _ = _import_beam()
    output_dir = task_cache_dir(output_cache_dir, task_name)
    if tf.io.gfile.exists(str(output_dir)):
        if not overwrite:
            raise UserError(f"{output_dir} already holds a cache of {task_name!r}; pass "
                            "--overwrite to rebuild it, or choose another --output_cache_dir.")
        tf.io.gfile.rmtree(str(output_dir))
    args = list(pipeline_args)
    if not any(arg.startswith("--runner") for arg in args):
        args.append(f"--runner={DEFAULT_RUNNER}")
    options = beam.options.pipeline_options.PipelineOptions(args)
    tf.io.gfile.makedirs(str(output_cache_dir))
    with beam.Pipeline(options=options) as pipeline:
        add_cache_steps(pipeline, task_name, output_cache_dir, min_shards=min_shards,
                        gin_config_text=gin_config_text, modules=modules)
    log.info("cached %r in %s", task_name, output_dir)
    return output_dir
