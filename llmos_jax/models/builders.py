"""Sublayers built from a `TransformerConfig`, for every family.

The decoder, the encoder, the encoder-decoder and the task heads build their
norms, attention, MLPs and dense projections here and nowhere else, so the
config-to-argument wiring lives in one place, and a different kind of layer
(an adapter, a quantized projection) has one place to plug in for all
families. The order in which a block calls these fixes its parameters'
initial values (each draws from `rngs` in turn), so keep call order stable.
"""

from __future__ import annotations

import math

from flax import nnx

from llmos_jax.models import axes
from llmos_jax.models.attention import SelfAttention
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.dense import Dense, DenseFactory
from llmos_jax.models.mlp import Mlp
from llmos_jax.models.norms import Norm


def residual_init_std(config: TransformerConfig, num_layers: int | None = None) -> float:
    """GPT-2's scaled init for projections that write into the residual stream."""
    return config.init_std / math.sqrt(2 * (num_layers or config.num_layers))


def dense_layer(config: TransformerConfig) -> DenseFactory:
    """The projection every dense layer of the model is built with.

    Always the plain `Dense` today; the one place where adapters (LoRA) or
    quantized kernels would be chosen from the config, for every family.
    """
    del config
    return Dense


def norm_for(config: TransformerConfig, rngs: nnx.Rngs) -> Norm:
    """The config's LayerNorm or RMSNorm over the residual width."""
    return Norm(config.embed_dim, kind=config.norm, eps=config.norm_eps,
                use_bias=config.use_bias, param_dtype=config.storage_dtype, rngs=rngs)


def attention_for(config: TransformerConfig, rngs: nnx.Rngs, *,
                  scale_queries: bool = True) -> SelfAttention:
    """Self- or cross-attention; `scale_queries=False` for T5's unscaled scores."""
    return SelfAttention(
        config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim,
        use_bias=config.use_bias, init_std=config.init_std,
        out_init_std=residual_init_std(config), impl=config.attention_impl,
        param_dtype=config.storage_dtype, rngs=rngs, scale_queries=scale_queries,
        dense=dense_layer(config), qkv_bias=config.qkv_bias,
        query_block=config.attention_query_block)


def mlp_for(config: TransformerConfig, rngs: nnx.Rngs) -> Mlp:
    """The position-wise MLP (gated when the activation is)."""
    return Mlp(config.embed_dim, config.mlp_dim, activation=config.mlp_activation,
               gated=config.gated_mlp, use_bias=config.use_bias, init_std=config.init_std,
               out_init_std=residual_init_std(config), param_dtype=config.storage_dtype,
               rngs=rngs, dense=dense_layer(config))


def dense_for(config: TransformerConfig, rngs: nnx.Rngs, in_features: int, out_features: int,
              in_axis: str, out_axis: str, *, use_bias: bool | None = None) -> nnx.Module:
    """A single-axis projection initialised like the rest of the model.

    Args:
      in_axis, out_axis: Logical axis names of the kernel's two dimensions.
      use_bias: Defaults to `config.use_bias`.
    """
    return dense_layer(config)(
        (in_features,), (out_features,), (in_axis,), (out_axis,),
        use_bias=config.use_bias if use_bias is None else use_bias,
        init_std=config.init_std, param_dtype=config.storage_dtype, rngs=rngs)


def lm_head_for(config: TransformerConfig, rngs: nnx.Rngs) -> nnx.Module | None:
    """The untied output projection to the vocabulary (no bias); None when tied."""
    if config.tie_embeddings:
        return None
    return dense_for(config, rngs, config.embed_dim, config.vocab_size, axes.EMBED, axes.VOCAB,
                     use_bias=False)
