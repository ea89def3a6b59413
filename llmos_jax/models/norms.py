"""LayerNorm and RMSNorm, computed in float32 whatever the activation dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes


class Norm(nnx.Module):
    """LayerNorm (`kind="layernorm"`, optional bias) or RMSNorm (`kind="rmsnorm"`).

    Statistics are taken in float32: bf16 variance over wide rows loses too
    much precision to be trusted.
    """

    def __init__(self, dim: int, *, kind: str, eps: float, use_bias: bool,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.kind = kind
        self.eps = eps
        self.scale = axes.make_param(rngs, nnx.initializers.ones, (dim,), (axes.EMBED,), param_dtype)
        self.bias = (
            axes.make_param(rngs, nnx.initializers.zeros, (dim,), (axes.EMBED,), param_dtype)
            if use_bias and kind == "layernorm" else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x = x - jnp.mean(x, axis=-1, keepdims=True)
        variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        y = x * jax.lax.rsqrt(variance + self.eps) * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(dtype)
