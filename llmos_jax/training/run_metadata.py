"""The JSON saved beside each checkpoint, and the checks made when resuming.

It records what a checkpoint cannot show by its arrays: the model config and
its family (so an export rebuilds the model without gin), the vocabulary
(`data.vocabulary_files.describe_vocabulary`), and the data position (seed,
batch shape and next step), since the batch at a step is a pure function of
those.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

from llmos_jax.data.vocabulary_files import describe_vocabulary
from llmos_jax.errors import UserError
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.families import family_for_config

__all__ = ["describe_vocabulary", "describe_run", "check_compatible"]

log = logging.getLogger("llmos_jax.train")


def describe_run(config: TransformerConfig, vocabulary: Any, *, task_name: str,
                 seed: int, global_batch_size: int, sequence_length: int,
                 pack: bool) -> dict[str, Any]:
    return {
        "model_config": dataclasses.asdict(config),
        "model_family": family_for_config(config).name,
        "vocabulary": describe_vocabulary(vocabulary),
        "data": {"task_name": task_name, "seed": seed, "global_batch_size": global_batch_size,
                 "sequence_length": sequence_length, "pack": pack},
    }


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                     checkpoint_dir: pathlib.Path) -> None:
    """Refuses a resume that would silently change meaning; warns on data changes."""
    if saved.get("vocabulary") != current["vocabulary"]:
        raise UserError(
            f"the checkpoint in {checkpoint_dir} was trained with vocabulary "
            f"{saved.get('vocabulary')} but this run uses {current['vocabulary']}; "
            "resume with the original task, or use a new --model_dir.")
    if saved.get("data") != current["data"]:
        log.warning("data settings changed since the checkpoint (%s -> %s): batches after the "
                    "resume differ from an uninterrupted run", saved.get("data"), current["data"])
