"""The JSON saved beside each checkpoint, and the checks made when resuming.

It records what a checkpoint cannot show by its arrays: the model config, the
vocabulary, and the data position (seed, batch shape and next step), since the
batch at a step is a pure function of those.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

from llmos_jax.errors import UserError
from llmos_jax.models.config import TransformerConfig

log = logging.getLogger("llmos_jax.train")


def describe_vocabulary(vocabulary: Any) -> dict[str, Any]:
    """Enough to tell whether two vocabularies map ids to the same text.

    Content, not paths, identifies a vocabulary: a SentencePiece model by the
    SHA-256 of its model bytes, a character vocabulary by the SHA-256 of its
    JSON (``fingerprint()``). A moved model file resumes fine; a retrained one
    at the same path is refused.
    """
    if callable(getattr(vocabulary, "describe", None)):
        return vocabulary.describe()  # Character vocabularies, with or without seqio.
    description: dict[str, Any] = {"class": type(vocabulary).__name__,
                                   "vocab_size": int(vocabulary.vocab_size)}
    model_bytes = getattr(vocabulary, "sp_model", None)  # seqio.SentencePieceVocabulary's.
    if isinstance(model_bytes, bytes):
        description["sha256"] = hashlib.sha256(model_bytes).hexdigest()
    elif callable(getattr(vocabulary, "fingerprint", None)):
        description["sha256"] = vocabulary.fingerprint()
    return description


def describe_run(config: TransformerConfig, vocabulary: Any, *, task_name: str,
                 seed: int, global_batch_size: int, sequence_length: int,
                 pack: bool) -> dict[str, Any]:
    return {
        "model_config": dataclasses.asdict(config),
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
