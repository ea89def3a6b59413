"""A multi-axis dense layer whose kernel dimensions carry logical names.

Keeping head and feature axes separate in the kernel (e.g. q: [embed, heads,
kv]) lets the sharding rules split heads over the `tensor` mesh axis without
any reshapes in the model.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def project(x: jax.Array, kernel: jax.Array, in_features: Sequence[int],
            out_features: Sequence[int]) -> jax.Array:
    """x's trailing `in_features` axes contracted with `kernel` [in..., out...].

    On CPU it is one 2-D matmul, [tokens, fan_in] @ [fan_in, fan_out], reshaped
    back. Written as a `[batch, length, ...]` einsum, XLA:CPU laid out the
    kernel's gradient dot so that it transposed the output gradient through a
    slow copy: in a 4 x 128 GPT without biases, 8 ms per layer of an 86 ms
    step (found with `jax.profiler`; docs/performance.md). Elsewhere the einsum
    stays: TPU tiles would turn the reshapes into copies.
    """
    n_in, n_out = len(in_features), len(out_features)
    if jax.default_backend() == "cpu":
        fan_in, fan_out = math.prod(in_features), math.prod(out_features)
        y = x.reshape((-1, fan_in)) @ kernel.reshape((fan_in, fan_out))
        return y.reshape(x.shape[:x.ndim - n_in] + tuple(out_features))
    contract = _LETTERS[x.ndim - n_in: x.ndim]
    out = _LETTERS[x.ndim: x.ndim + n_out]
    return jnp.einsum(f"...{contract},{contract}{out}->...{out}", x, kernel)


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
        kernel = self.kernel[...].astype(x.dtype)
        y = project(x, kernel, self.in_features, self.out_features)
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
