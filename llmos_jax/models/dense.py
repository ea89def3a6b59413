"""A multi-axis dense layer whose kernel dimensions carry logical names.

Keeping head and feature axes separate in the kernel (e.g. q: [embed, heads,
kv]) lets the sharding rules split heads over the `tensor` mesh axis without
any reshapes in the model.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


class Dense(nnx.Module):
    """Contracts the trailing `in_features` axes of x with a kernel of shape in + out."""

    def __init__(self, in_features: Sequence[int], out_features: Sequence[int],
                 in_axes: axes.LogicalAxes, out_axes: axes.LogicalAxes, *,
                 use_bias: bool, init_std: float, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.in_features = tuple(in_features)
        self.out_features = tuple(out_features)
        self.kernel = axes.make_param(
            rngs, nnx.initializers.normal(init_std), self.in_features + self.out_features,
            tuple(in_axes) + tuple(out_axes), param_dtype)
        self.bias = (
            axes.make_param(rngs, nnx.initializers.zeros, self.out_features, tuple(out_axes),
                            param_dtype)
            if use_bias else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in, n_out = len(self.in_features), len(self.out_features)
        contract = _LETTERS[x.ndim - n_in: x.ndim]
        out = _LETTERS[x.ndim: x.ndim + n_out]
        kernel = self.kernel[...].astype(x.dtype)
        y = jnp.einsum(f"...{contract},{contract}{out}->...{out}", x, kernel)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class DenseFactory(Protocol):
    """Builds a projection with `Dense`'s signature and parameter layout.

    `SelfAttention` and `Mlp` take one, so that `llmos_jax.models.builders`
    decides, in one place for every family, what kind of projection a model
    has (plain today; adapters or quantized kernels plug in there).
    """

    def __call__(self, in_features: Sequence[int], out_features: Sequence[int],
                 in_axes: axes.LogicalAxes, out_axes: axes.LogicalAxes, *, use_bias: bool,
                 init_std: float, param_dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Module: ...
