"""Next-token objectives: the decoder-only LM and the encoder-decoder (T5) LM.

Both read seqio's model features (`decoder_*`, plus `encoder_*` for the
encoder-decoder) and report the same metrics: token cross-entropy (`loss`),
z-loss, token accuracy and the token count. The mean is over target tokens
of the whole global batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import axes
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.families import ArchitectureKind
from llmos_jax.objectives.base import (
    PREDICTS_TEXT,
    Batch,
    Sums,
    mean,
    model_family,
    padding_segments,
)
from llmos_jax.objectives.loss import cross_entropy_sums

INPUTS = "decoder_input_tokens"
TARGETS = "decoder_target_tokens"
WEIGHTS = "decoder_loss_weights"
SEGMENTS = "decoder_segment_ids"
POSITIONS = "decoder_positions"
ENCODER_INPUTS = "encoder_input_tokens"
ENCODER_SEGMENTS = "encoder_segment_ids"


class _TokenLoss:
    """Shared by both: one cross-entropy term weighted by `decoder_loss_weights`.

    Subclasses carry a `label_smoothing` field; the reported `loss` (and the
    evaluation's perplexity) is always the plain NLL, the trained loss the
    smoothed one.
    """

    label_smoothing: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"{type(self).__name__}.label_smoothing={self.label_smoothing!r} "
                            "must be in [0, 1); 0.1 is the usual value, 0 turns it off.")

    def _sums(self, logits: jax.Array, batch: Batch, z_loss: float) -> Sums:
        return cross_entropy_sums(logits, batch[TARGETS], batch[WEIGHTS], z_loss,
                                  self.label_smoothing)

    def denominators(self, batch: Batch) -> Sums:
        return {"weight": jnp.sum(batch[WEIGHTS].astype(jnp.float32))}

    def loss(self, sums: Sums, denominators: Sums) -> jax.Array:
        return sums["loss"] / jnp.maximum(denominators["weight"], 1.0)

    def metrics(self, sums: Sums) -> dict[str, Any]:
        loss = mean(sums["cross_entropy"], sums["weight"])
        accuracy = mean(sums["correct"], sums["weight"])
        if isinstance(loss, float):  # Host-side totals of an eval pass (no z-loss there).
            return {"loss": loss, "accuracy": accuracy, "perplexity": math.exp(min(loss, 50.0)),
                    "tokens": sums["weight"]}
        return {"loss": loss, "z_loss": mean(sums["z_loss"], sums["weight"]),
                "accuracy": accuracy, "tokens": sums["weight"]}

    def describe(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "label_smoothing": self.label_smoothing}


@dataclasses.dataclass(frozen=True)
class CausalLm(_TokenLoss):
    """A decoder-only LM (a decoder family's model, e.g. `DecoderLM`): predict each next token."""

    features: tuple[str, ...] = (INPUTS, TARGETS, WEIGHTS)
    generates_text: bool = True
    label_smoothing: float = 0.0
    predicts: ClassVar[str] = PREDICTS_TEXT

    def build_model(self, config: TransformerConfig, *, rngs: nnx.Rngs,
                    shard: axes.ActivationSharder) -> nnx.Module:
        family = model_family("CausalLm", config, ArchitectureKind.DECODER)
        return family.build(config, rngs=rngs, shard=shard)

    def sums(self, model: nnx.Module, batch: Batch, *, dropout_key, z_loss: float) -> Sums:
        return self._sums(self.logits(model, batch, dropout_key=dropout_key), batch, z_loss)

    def logits(self, model: nnx.Module, batch: Batch, *, dropout_key=None) -> jax.Array:
        """Next-token logits [batch, length, vocab] (distillation reads a teacher's too)."""
        return model(batch[INPUTS], positions=batch.get(POSITIONS),
                     segment_ids=batch.get(SEGMENTS), dropout_key=dropout_key)


@dataclasses.dataclass(frozen=True)
class Seq2Seq(_TokenLoss):
    """An encoder-decoder LM (e.g. `EncoderDecoderLM`, T5): span corruption or seq2seq fine-tuning.

    Unpacked batches carry no `encoder_segment_ids`; padding (id 0) of the
    encoder input is then masked from id 0 itself. The decoder needs no mask
    unpacked (it is causal and its padding only trails).
    """

    features: tuple[str, ...] = (ENCODER_INPUTS, INPUTS, TARGETS, WEIGHTS)
    generates_text: bool = False
    label_smoothing: float = 0.0
    predicts: ClassVar[str] = PREDICTS_TEXT

    def build_model(self, config: TransformerConfig, *, rngs: nnx.Rngs,
                    shard: axes.ActivationSharder) -> nnx.Module:
        family = model_family("Seq2Seq", config, ArchitectureKind.ENCODER_DECODER)
        return family.build(config, rngs=rngs, shard=shard)

    def sums(self, model: nnx.Module, batch: Batch, *, dropout_key,
             z_loss: float) -> Sums:
        return self._sums(self.logits(model, batch, dropout_key=dropout_key), batch, z_loss)

    def logits(self, model: nnx.Module, batch: Batch, *, dropout_key=None) -> jax.Array:
        """Decoder logits [batch, length, vocab] (distillation reads a teacher's too)."""
        encoder_tokens = batch[ENCODER_INPUTS]
        encoder_segments = batch.get(ENCODER_SEGMENTS)
        if encoder_segments is None:
            encoder_segments = padding_segments(encoder_tokens)
        return model(encoder_tokens, batch[INPUTS], encoder_segment_ids=encoder_segments,
                     decoder_segment_ids=batch.get(SEGMENTS), dropout_key=dropout_key)
