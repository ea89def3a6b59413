"""Encoder (BERT-style) objectives: MLM + NSP pretraining, sequence and token classification.

Every one reads `input_ids` (padding id 0, which also masks attention: the
encoder's `segment_ids` are 1 on real tokens) and optionally
`token_type_ids`. Features are those of
`llmos_jax.data.pretraining.bert_pretraining` and of the classification tasks:

=========================  ==================================================
`BertPretraining`          mlm_targets, mlm_weights [B, L]; nsp_label [B]
`SequenceClassification`   label [B]
`TokenClassification`      labels [B, L]; label_weights [B, L] (1 on the first
                           sub-token of each word)
=========================  ==================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import axes
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.families import (PRETRAINING, SEQUENCE_CLASSIFICATION,
                                       TOKEN_CLASSIFICATION, ArchitectureKind)
from llmos_jax.objectives.base import (PREDICTS_SEQUENCE_LABEL, PREDICTS_TOKEN_LABELS, Batch,
                                       Sums, mean, model_family, padding_segments,
                                       prefixed_cross_entropy, real_rows)

INPUT_IDS = "input_ids"
TOKEN_TYPES = "token_type_ids"


def _encoder_inputs(batch: Batch) -> tuple[jax.Array, dict[str, Any]]:
    tokens = batch[INPUT_IDS]
    return tokens, {"token_type_ids": batch.get(TOKEN_TYPES),
                    "segment_ids": padding_segments(tokens)}


def _encoder_head(objective: str, config: TransformerConfig, task: str) -> type[nnx.Module]:
    """The `task` model of `config`'s encoder family (e.g. BERT's `EncoderFor...` heads)."""
    family = model_family(objective, config, ArchitectureKind.ENCODER)
    return family.head(task, caller=f"train.objective={objective}")


def _check_classes(objective: str, num_classes: int) -> None:
    if num_classes < 2:
        raise UserError(f"{objective}.num_classes={num_classes} must be at least 2; set it to the "
                        "number of labels of your task in gin.")


@dataclasses.dataclass(frozen=True)
class BertPretraining:
    """Masked LM + next-sentence prediction; loss = MLM mean + NSP mean.

    The MLM mean is over masked tokens, the NSP mean over (real) examples, of
    the whole global batch.
    """

    features: tuple[str, ...] = (INPUT_IDS, TOKEN_TYPES, "mlm_targets", "mlm_weights",
                                 "nsp_label")
    generates_text: bool = False

    def build_model(self, config: TransformerConfig, *, rngs: nnx.Rngs,
                    shard: axes.ActivationSharder) -> nnx.Module:
        head = _encoder_head("BertPretraining", config, PRETRAINING)
        return head(config, rngs=rngs, shard=shard)

    def sums(self, model: nnx.Module, batch: Batch, *, dropout_key,
             z_loss: float) -> Sums:
        tokens, inputs = _encoder_inputs(batch)
        mlm_logits, nsp_logits = model(tokens, dropout_key=dropout_key, **inputs)
        return {**prefixed_cross_entropy("mlm_", mlm_logits, batch["mlm_targets"],
                                         batch["mlm_weights"], z_loss),
                **prefixed_cross_entropy("nsp_", nsp_logits, batch["nsp_label"],
                                         real_rows(tokens), z_loss)}

    def denominators(self, batch: Batch) -> Sums:
        return {"mlm": jnp.sum(batch["mlm_weights"].astype(jnp.float32)),
                "nsp": jnp.sum(real_rows(batch[INPUT_IDS]))}

    def loss(self, sums: Sums, denominators: Sums) -> jax.Array:
        return (sums["mlm_loss"] / jnp.maximum(denominators["mlm"], 1.0)
                + sums["nsp_loss"] / jnp.maximum(denominators["nsp"], 1.0))

    def metrics(self, sums: Sums) -> dict[str, Any]:
        mlm_loss = mean(sums["mlm_cross_entropy"], sums["mlm_weight"])
        nsp_loss = mean(sums["nsp_cross_entropy"], sums["nsp_weight"])
        return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
                "mlm_accuracy": mean(sums["mlm_correct"], sums["mlm_weight"]),
                "nsp_accuracy": mean(sums["nsp_correct"], sums["nsp_weight"]),
                "masked_tokens": sums["mlm_weight"], "examples": sums["nsp_weight"]}

    def describe(self) -> dict[str, Any]:
        return {"name": "BertPretraining"}


class _SingleTermClassifier:
    """Cross-entropy of one head; `metrics` names its weight `count_name`."""

    count_name = "examples"

    def denominators(self, batch: Batch) -> Sums:
        return {"weight": jnp.sum(self._weights(batch))}

    def loss(self, sums: Sums, denominators: Sums) -> jax.Array:
        return sums["loss"] / jnp.maximum(denominators["weight"], 1.0)

    def metrics(self, sums: Sums) -> dict[str, Any]:
        return {"loss": mean(sums["cross_entropy"], sums["weight"]),
                "accuracy": mean(sums["correct"], sums["weight"]),
                self.count_name: sums["weight"]}

    def _weights(self, batch: Batch) -> jax.Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class SequenceClassification(_SingleTermClassifier):
    """One label per example (sentence or sentence pair), e.g. SST-2.

    Attributes:
      num_classes: Number of labels.
      pooling: "cls" (BERT's pooled [CLS]) or "mean" (mean of non-padding
        tokens, as sentence-embedding models such as MiniLM pool).
    """

    num_classes: int = 2
    pooling: str = "cls"
    features: tuple[str, ...] = (INPUT_IDS, "label")
    generates_text: bool = False
    predicts: ClassVar[str] = PREDICTS_SEQUENCE_LABEL

    def __post_init__(self) -> None:
        _check_classes("SequenceClassification", self.num_classes)

    def build_model(self, config: TransformerConfig, *, rngs: nnx.Rngs,
                    shard: axes.ActivationSharder) -> nnx.Module:
        head = _encoder_head("SequenceClassification", config, SEQUENCE_CLASSIFICATION)
        return head(config, self.num_classes, rngs=rngs, pooling=self.pooling, shard=shard)

    def sums(self, model, batch: Batch, *, dropout_key, z_loss: float) -> Sums:
        tokens, inputs = _encoder_inputs(batch)
        logits = model(tokens, dropout_key=dropout_key, **inputs)
        return prefixed_cross_entropy("", logits, batch["label"], self._weights(batch), z_loss)

    def _weights(self, batch: Batch) -> jax.Array:
        return real_rows(batch[INPUT_IDS])

    def describe(self) -> dict[str, Any]:
        return {"name": "SequenceClassification", "num_classes": self.num_classes,
                "pooling": self.pooling}


@dataclasses.dataclass(frozen=True)
class TokenClassification(_SingleTermClassifier):
    """One label per token (tagging, e.g. NER), scored where `label_weights` is 1.

    Attributes:
      num_classes: Number of tags.
    """

    num_classes: int = 2
    features: tuple[str, ...] = (INPUT_IDS, "labels", "label_weights")
    generates_text: bool = False
    predicts: ClassVar[str] = PREDICTS_TOKEN_LABELS
    count_name = "tokens"

    def __post_init__(self) -> None:
        _check_classes("TokenClassification", self.num_classes)

    def build_model(self, config: TransformerConfig, *, rngs: nnx.Rngs,
                    shard: axes.ActivationSharder) -> nnx.Module:
        head = _encoder_head("TokenClassification", config, TOKEN_CLASSIFICATION)
        return head(config, self.num_classes, rngs=rngs, shard=shard)

    def sums(self, model, batch: Batch, *, dropout_key, z_loss: float) -> Sums:
        tokens, inputs = _encoder_inputs(batch)
        logits = model(tokens, dropout_key=dropout_key, **inputs)
        return prefixed_cross_entropy("", logits, batch["labels"], self._weights(batch), z_loss)

    def _weights(self, batch: Batch) -> jax.Array:
        return batch["label_weights"].astype(jnp.float32)

    def describe(self) -> dict[str, Any]:
        return {"name": "TokenClassification", "num_classes": self.num_classes}
