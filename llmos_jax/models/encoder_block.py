"""The bidirectional Transformer block shared by BERT's encoder and T5's encoder.

It lives apart from both families so that neither imports the other: model
families share building blocks (this, `builders`, `layer_stack`), never each
other (an import-linter contract in pyproject.toml).
"""

from __future__ import annotations

import jax
from flax import nnx

from llmos_jax.models import axes
from llmos_jax.models.builders import attention_for, mlp_for, norm_for
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.dropout import split_key

_RESIDUAL = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)


class EncoderBlock(nnx.Module):
    """Bidirectional self-attention then MLP, with post- or pre-norm residuals.

    Also the T5 encoder block (`post_norm=False`, `scale_queries=False`,
    a relative-position `bias`).
    """

    def __init__(self, config: TransformerConfig, *, post_norm: bool, rngs: nnx.Rngs,
                 scale_queries: bool = True):
        self.post_norm = post_norm
        self.attn_norm = norm_for(config, rngs)
        self.attn = attention_for(config, rngs, scale_queries=scale_queries)
        self.mlp_norm = norm_for(config, rngs)
        self.mlp = mlp_for(config, rngs)

    def __call__(self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None,
                 config: TransformerConfig, shard: axes.ActivationSharder,
                 dropout_key: jax.Array | None, bias: jax.Array | None = None) -> jax.Array:
        attn_key, mlp_key = split_key(dropout_key, 2)
        rope_theta = config.rope_theta if config.position_embedding == "rope" else None

        def attend(h):
            return self.attn(h, positions=positions, segment_ids=segment_ids,
                             rope_theta=rope_theta, shard=shard,
                             dropout_rate=config.dropout_rate, dropout_key=attn_key,
                             causal=False, bias=bias)

        def feed_forward(h):
            # One dropout on the MLP's output (`Mlp` applies it), as BERT's
            # BertOutput does; a second one here would drop 19% at rate 0.1.
            return self.mlp(h, shard=shard, dropout_rate=config.dropout_rate, dropout_key=mlp_key,
                            hidden_dropout_rate=config.mlp_hidden_dropout_rate)

        if self.post_norm:
            x = shard(self.attn_norm(x + attend(x)), _RESIDUAL)
            return shard(self.mlp_norm(x + feed_forward(x)), _RESIDUAL)
        x = shard(x + attend(self.attn_norm(x)), _RESIDUAL)
        return shard(x + feed_forward(self.mlp_norm(x)), _RESIDUAL)
