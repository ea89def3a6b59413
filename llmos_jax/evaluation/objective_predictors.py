"""The evaluator's model functions for a trained model, chosen by what its objective predicts.

`llmos eval` and the evaluation inside training (`train.evaluator`) both
turn a model and its parameters into the `predict_fn`/`score_fn` that
`llmos_jax.evaluation.evaluator.evaluate` feeds a task's metric functions.
Each objective declares what it predicts (`Objective.predicts`); this is the
one table from that to predictors:

========================  ===========================  ==========================================
`predicts`                objectives                   what the model gives the metrics
========================  ===========================  ==========================================
PREDICTS_SEQUENCE_LABEL   SequenceClassification       the argmax label (`sequence_classifier`)
PREDICTS_TOKEN_LABELS     TokenClassification          one tag per word (`token_classifier`)
PREDICTS_TEXT             Seq2Seq, CausalLm            generated text (`DecodeConfig`) and
                                                       target scores
========================  ===========================  ==========================================

Text predictors decode and score through `llmos_jax.inference`, which
dispatches on the model's family (`llmos_jax.models.families`), so a newly
registered family is evaluated with no edit here. The evaluator calls only
the functions the task's metrics need.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import seqio
from flax import nnx
from jax.sharding import Mesh

from llmos_jax.errors import UserError
from llmos_jax.evaluation import predictors
from llmos_jax.inference.decode_config import DecodeConfig, with_default_eos
from llmos_jax.inference.decoding_engine import DecodingEngine
from llmos_jax.objectives import Objective
from llmos_jax.objectives.base import (PREDICTS_SEQUENCE_LABEL, PREDICTS_TEXT,
                                       PREDICTS_TOKEN_LABELS)
from llmos_jax.partitioning import data_parallel_size

_CLASSIFIERS = {PREDICTS_SEQUENCE_LABEL: predictors.sequence_classifier,
                PREDICTS_TOKEN_LABELS: predictors.token_classifier}
_SERVED = (*_CLASSIFIERS, PREDICTS_TEXT)


def check_objective(objective: Objective, *, caller: str = "llmos eval") -> None:
    """Refuses, before any work, an objective that no predictor serves.

    Args:
      objective: `train.objective`.
      caller: Who evaluates, for the message (`llmos eval`, `train.evaluator`).
    """
    if getattr(objective, "predicts", None) not in _SERVED:
        raise UserError(f"{caller} has no predictor for train.objective="
                        f"{type(objective).__name__}; it evaluates SequenceClassification, "
                        "TokenClassification, Seq2Seq and CausalLm runs (objectives whose "
                        f"`predicts` is one of {', '.join(_SERVED)}).")


def feature_lengths(sequence_length: int | Mapping[str, int],
                    provider: seqio.DatasetProviderBase) -> dict[str, int]:
    """Per-feature lengths of the task's token (rank-1) features, as training cut them.

    Args:
      sequence_length: `train.sequence_length` (one length, or one per feature).
      provider: The Task evaluated or decoded.
    """
    features = {k for k, f in provider.output_features.items() if f.rank == 1}
    if isinstance(sequence_length, Mapping):
        return {k: int(v) for k, v in sequence_length.items() if k in features}
    return dict.fromkeys(features, int(sequence_length))


def mesh_batch_size(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's data-parallel size."""
    parallel = data_parallel_size(mesh)
    return -(-batch_size // parallel) * parallel


def model_functions(objective: Objective, model: nnx.Module, params: Any, *,
                    provider: seqio.Task, lengths: Mapping[str, int], batch_size: int,
                    decode_config: DecodeConfig | None = None, caller: str = "llmos eval",
                    task_setting: str = "--task",
                    engine: DecodingEngine | None = None) -> dict[str, Any]:
    """`predict_fn`/`score_fn` keyword arguments for `evaluate`, chosen by the objective.

    Args:
      objective: The training objective that built `model`.
      model: The model (its graph; `params` are its weights).
      params: Parameters as a pure dict, possibly sharded.
      provider: The Task evaluated (a Mixture's first Task).
      lengths: `feature_lengths` of the task.
      batch_size: Examples per model call (a multiple of the data-parallel size).
      decode_config: How generation objectives decode, used as given; None:
        greedy, stopping at the targets vocabulary's EOS.
      caller: Who evaluates, for messages.
      task_setting: The flag or gin parameter that chooses the task, for messages.
      engine: For generation objectives, an engine of the same model graph kept
        across calls (periodic evaluation), so its programs compile once.

    Raises:
      UserError: an objective no predictor serves, or a task without the
        features the classifier reads.
    """
    check_objective(objective, caller=caller)
    factory = _CLASSIFIERS.get(objective.predicts)
    if factory is not None:
        if "input_ids" not in lengths:
            raise UserError(f"train.objective={type(objective).__name__} reads 'input_ids', "
                            f"which task {provider.name!r} does not have; set {task_setting}.")
        return {"predict_fn": factory(model, params, sequence_length=lengths["input_ids"],
                                      batch_size=batch_size)}
    vocabulary = provider.output_features["targets"].vocabulary
    decode_config = with_default_eos(decode_config, vocabulary.eos_id,
                                     eos_bound=decode_config is not None)
    max_input = lengths.get("inputs")
    return {
        "predict_fn": predictors.generator(model, params, vocabulary=vocabulary,
                                           decode_config=decode_config,
                                           max_input_length=max_input, batch_size=batch_size,
                                           engine=engine),
        "score_fn": predictors.target_scorer(model, params, max_input_length=max_input,
                                             engine=engine),
    }
