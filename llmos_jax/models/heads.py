"""Fine-tuning and pre-training heads on an `Encoder`, and the models they make.

- `MaskedLmHead`: BERT's transform (dense, activation, LayerNorm) then logits
  tied to the token embedding, plus a per-token bias.
- `ClassifierHead`: one dense layer to `num_classes` outputs; BERT's NSP head
  (2 classes on the pooled [CLS]), sequence and token classification reuse it.
- `pool_sequence`: [CLS] (BERT pooler) or mean over non-padding tokens.

The `EncoderFor...` models pair an `Encoder` with heads; their parameter
names mirror BERT's so checkpoints convert by table.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import axes
from llmos_jax.models.builders import dense_for, norm_for
from llmos_jax.models.dropout import dropout
from llmos_jax.models.embeddings import TokenEmbedding
from llmos_jax.models.encoder import Encoder, EncoderConfig
from llmos_jax.models.mlp import ACTIVATIONS

Pooling = Literal["cls", "mean"]


class MaskedLmHead(nnx.Module):
    """hidden [..., embed] -> vocabulary logits via the (tied) token embedding."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        self.activation = config.mlp_activation
        self.transform = dense_for(config, rngs, config.embed_dim, config.embed_dim, axes.EMBED,
                                   axes.EMBED)
        self.transform_norm = norm_for(config, rngs)
        self.bias = axes.make_param(rngs, nnx.initializers.zeros, (config.vocab_size,),
                                    (axes.VOCAB,), config.storage_dtype)

    def __call__(self, hidden: jax.Array, token_embed: TokenEmbedding) -> jax.Array:
        h = self.transform_norm(ACTIVATIONS[self.activation](self.transform(hidden)))
        return token_embed.attend(h) + self.bias[...].astype(h.dtype)


class ClassifierHead(nnx.Module):
    """features [..., embed] -> logits [..., num_classes] (dropout, then dense)."""

    def __init__(self, config: EncoderConfig, num_classes: int, *, rngs: nnx.Rngs):
        if num_classes <= 0:
            raise UserError(f"num_classes must be positive, got {num_classes}; pass the number "
                            "of labels of your task.")
        self.dropout_rate = config.dropout_rate
        self.dense = dense_for(config, rngs, config.embed_dim, num_classes, axes.EMBED,
                               axes.CLASSES, use_bias=True)

    def __call__(self, features: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        return self.dense(dropout(features, self.dropout_rate, dropout_key)).astype(jnp.float32)


def pool_sequence(encoder: Encoder, hidden: jax.Array, segment_ids: jax.Array | None,
                  pooling: Pooling) -> jax.Array:
    """[batch, embed]: BERT's pooled [CLS] ("cls"), or the mean of non-padding tokens ("mean")."""
    if pooling == "cls":
        return encoder.pool(hidden)
    if segment_ids is None:
        return jnp.mean(hidden, axis=1)
    weights = (segment_ids != 0).astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class EncoderForPreTraining(nnx.Module):
    """BERT pre-training: (masked-LM logits [batch, length, vocab], NSP logits [batch, 2])."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs,
                 shard: axes.ActivationSharder = axes.no_sharding):
        if not config.pooler:
            raise UserError("EncoderForPreTraining needs EncoderConfig.pooler=True for NSP.")
        self.config = config
        self.shard = shard
        self.encoder = Encoder(config, rngs=rngs, shard=shard)
        self.mlm_head = MaskedLmHead(config, rngs=rngs)
        self.nsp_head = ClassifierHead(config, 2, rngs=rngs)

    def __call__(self, tokens: jax.Array, *, token_type_ids: jax.Array | None = None,
                 segment_ids: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        hidden = self.encoder(tokens, token_type_ids=token_type_ids, segment_ids=segment_ids,
                              dropout_key=dropout_key)
        mlm = self.mlm_head(hidden, self.encoder.token_embed)
        mlm = self.shard(mlm, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB))
        nsp = self.nsp_head(self.encoder.pool(hidden))
        return mlm.astype(jnp.float32), nsp


class EncoderForSequenceClassification(nnx.Module):
    """Sentence(-pair) classification: logits [batch, num_classes].

    Args:
      pooling: "cls" (BERT: pooled [CLS]; needs the pooler) or "mean" (mean
        over non-padding tokens, as sentence-embedding models pool).
    """

    def __init__(self, config: EncoderConfig, num_classes: int, *, rngs: nnx.Rngs,
                 pooling: Pooling = "cls", shard: axes.ActivationSharder = axes.no_sharding):
        if pooling not in ("cls", "mean"):
            raise UserError(f"pooling={pooling!r} is not one of cls, mean.")
        if pooling == "cls" and not config.pooler:
            raise UserError("pooling='cls' needs EncoderConfig.pooler=True; or use pooling='mean'.")
        self.config = config
        self.pooling = pooling
        self.encoder = Encoder(config, rngs=rngs, shard=shard)
        self.classifier = ClassifierHead(config, num_classes, rngs=rngs)

    def __call__(self, tokens: jax.Array, *, token_type_ids: jax.Array | None = None,
                 segment_ids: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        encoder_key, head_key = (None, None) if dropout_key is None else jax.random.split(dropout_key)
        hidden = self.encoder(tokens, token_type_ids=token_type_ids, segment_ids=segment_ids,
                              dropout_key=encoder_key)
        return self.classifier(pool_sequence(self.encoder, hidden, segment_ids, self.pooling),
                               head_key)


class EncoderForTokenClassification(nnx.Module):
    """Per-token labels (tagging): logits [batch, length, num_classes]."""

    def __init__(self, config: EncoderConfig, num_classes: int, *, rngs: nnx.Rngs,
                 shard: axes.ActivationSharder = axes.no_sharding):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs, shard=shard)
        self.classifier = ClassifierHead(config, num_classes, rngs=rngs)

    def __call__(self, tokens: jax.Array, *, token_type_ids: jax.Array | None = None,
                 segment_ids: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        encoder_key, head_key = (None, None) if dropout_key is None else jax.random.split(dropout_key)
        hidden = self.encoder(tokens, token_type_ids=token_type_ids, segment_ids=segment_ids,
                              dropout_key=encoder_key)
        return self.classifier(hidden, head_key)
