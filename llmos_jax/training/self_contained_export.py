"""Exports that load with no gin file and no seqio Task: parameters, vocabularies and a card.

Both export hooks (`standard_hooks.ExportParams` for `model_dir/export`,
`periodic_eval.TaskEvaluation` for `model_dir/best`) write through
`write_export`: `checkpoints.export_params` writes the parameters and
`meta.json` (model config, family, vocabulary manifest), plus the vocabulary
files (`data.vocabulary_files`) and `MODEL_CARD.md` (`model_card`).
`llmos serve --model=FOLDER` (`serving.model_source`) reads them back.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax

from llmos_jax.checkpoints.checkpointer import export_params
from llmos_jax.data.vocabulary_files import (MANIFEST_KEY, TaskVocabularies, task_vocabularies,
                                             vocabulary_files)
from llmos_jax.errors import UserError
from llmos_jax.training.model_card import CARD_FILE, model_card

log = logging.getLogger("llmos_jax.train")


def task_vocabularies_for_export(task_name: str, fallback: Any, *,
                                 from_task: bool = True) -> TaskVocabularies:
    """The vocabularies an export of a run on `task_name` carries.

    The Task's own (its inputs may differ from its targets, and may end with
    EOS); on a host without seqio (training from a split snapshot), for a
    task that is not registered, or with `from_task=False` (batches made
    without seqio, whose run should not import it just for this),
    `fallback` (the batches' vocabulary) serves as both.
    """
    if not from_task:
        return TaskVocabularies(fallback, fallback)
    try:
        from llmos_jax.data.providers import get_provider  # seqio: not on every host.

        return task_vocabularies(get_provider(task_name, setting="train.task_name"))
    except (ImportError, UserError) as error:
        log.info("exports carry the batches' vocabulary as inputs and outputs (%s)", error)
        return TaskVocabularies(fallback, fallback)


def write_export(directory: str | os.PathLike, params, meta: Mapping[str, Any], *,
                 vocabularies: TaskVocabularies | None,
                 metrics: Mapping[str, float] | None = None) -> pathlib.Path:
    """Writes `params` with `meta`, the vocabulary files and MODEL_CARD.md into `directory`.

    A vocabulary that cannot be written is logged, not raised: the parameters
    are exported all the same (`llmos serve` then names what is missing).

    Args:
      directory: The export folder.
      params: The parameters (possibly sharded; every host writes its shards).
      meta: Written as meta.json, with the vocabulary manifest added.
      vocabularies: The task's vocabularies (None: none carried).
      metrics: Metric name -> value for the card.
    """
    meta = dict(meta)
    files: dict[str, bytes] = {}
    if vocabularies is not None:
        try:
            written = vocabulary_files(vocabularies)
        except UserError as error:
            log.warning("%s will not carry its vocabulary, so `llmos serve` cannot load it: %s",
                        directory, error)
        else:
            meta[MANIFEST_KEY] = written.manifest
            files.update(written.files)
    num_params = sum(int(leaf.size) for leaf in jax.tree.leaves(params))
    files[CARD_FILE] = model_card(meta, num_params=num_params, metrics=metrics).encode("utf-8")
    return export_params(directory, params, meta, extra_files=files)
