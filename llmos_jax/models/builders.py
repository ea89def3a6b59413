"""Sublayers built from a `TransformerConfig`, shared by the encoder families.

Encoder, encoder-decoder and their heads all build the same `Norm`,
`SelfAttention` and `Mlp` modules; these helpers keep the config-to-argument
wiring in one place.
"""

from __future__ import annotations

import math

from flax import nnx

from llmos_jax.models.attention import SelfAttention
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.mlp import Mlp
from llmos_jax.models.norms import Norm


def residual_init_std(config: TransformerConfig, num_layers: int | None = None) -> float:
    """GPT-2's scaled init for projections that write into the residual stream."""
    return config.init_std / math.sqrt(2 * (num_layers or config.num_layers))


def norm_for(config: TransformerConfig, rngs: nnx.Rngs) -> Norm:
    return Norm(config.embed_dim, kind=config.norm, eps=config.norm_eps,
                use_bias=config.use_bias, param_dtype=config.storage_dtype, rngs=rngs)


def attention_for(config: TransformerConfig, rngs: nnx.Rngs, *,
                  scale_queries: bool = True) -> SelfAttention:
    return SelfAttention(
        config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim,
        use_bias=config.use_bias, init_std=config.init_std,
        out_init_std=residual_init_std(config), impl=config.attention_impl,
        param_dtype=config.storage_dtype, rngs=rngs, scale_queries=scale_queries)


def mlp_for(config: TransformerConfig, rngs: nnx.Rngs) -> Mlp:
    return Mlp(config.embed_dim, config.mlp_dim, activation=config.mlp_activation,
               gated=config.gated_mlp, use_bias=config.use_bias, init_std=config.init_std,
               out_init_std=residual_init_std(config), param_dtype=config.storage_dtype,
               rngs=rngs)
