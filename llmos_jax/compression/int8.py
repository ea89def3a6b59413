"""Post-training int8 weight-only quantization, per output channel.

`quantize_int8` swaps, in place, every `Dense` for an `Int8Dense` and the
token embedding for an `Int8Embedding`. Each keeps its weight as an int8
`nnx.Param` under the same name (`kernel`, `embedding`) plus a float32 scale
per output channel (`kernel_scale`, `embedding_scale`), so the weights stay
int8 in device memory and are passed int8 into every compiled program. A
matmul runs `(x @ int8_kernel.astype(x.dtype)) * scale`: the scale is per
output channel, so it factors out of the contraction. XLA:CPU materialises
the converted kernel as a temporary per matmul (measured in
docs/compression.md: stored bytes drop 3.9x, the decode step's temporaries
and time do not). Biases, norms, position tables and T5's relative-position
tables (small) stay float.

Rounding `w / scale` with `scale = max|w| / 127` (per output channel) errs by
at most `scale / 2` per weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes
from llmos_jax.models.dense import _LETTERS, Dense
from llmos_jax.models.embeddings import TokenEmbedding

QMAX = 127


def quantize_per_channel(weight: jax.Array, reduce_axes: tuple[int, ...]
                         ) -> tuple[jax.Array, jax.Array]:
    """(int8 weight, float32 scale) with `scale` = max|w| / 127 over `reduce_axes`.

    The scale keeps every non-reduced axis (size 1 is squeezed away).
    """
    w = weight.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=reduce_axes, keepdims=True) / QMAX
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.clip(jnp.round(w / scale), -QMAX, QMAX).astype(jnp.int8)
    return q, jnp.squeeze(scale, axis=reduce_axes)


class Int8Dense(Dense):
    """`Dense` with an int8 kernel and a float32 scale per output feature."""

    def __init__(self, base: Dense):
        self.in_features, self.out_features = base.in_features, base.out_features
        kernel_axes = axes.logical_axes_of(base.kernel)
        stacked = base.kernel.ndim - len(self.in_features) - len(self.out_features)
        reduce = tuple(range(stacked, stacked + len(self.in_features)))
        q, scale = quantize_per_channel(base.kernel[...], reduce)
        self.kernel = nnx.Param(q, out_sharding=kernel_axes, eager_sharding=False)
        scale_axes = kernel_axes[:stacked] + kernel_axes[stacked + len(self.in_features):]
        self.kernel_scale = nnx.Param(scale, out_sharding=scale_axes, eager_sharding=False)
        self.bias = base.bias

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in, n_out = len(self.in_features), len(self.out_features)
        contract = _LETTERS[x.ndim - n_in: x.ndim]
        out = _LETTERS[x.ndim: x.ndim + n_out]
        y = jnp.einsum(f"...{contract},{contract}{out}->...{out}", x,
                       self.kernel[...].astype(x.dtype))
        y = y * self.kernel_scale[...].astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class Int8Embedding(TokenEmbedding):
    """An int8 token table with a float32 scale per row (token).

    Per row serves both uses: a looked-up row is rescaled by its own scale,
    and tied output logits `x . e_v` by token v's scale.
    """

    def __init__(self, base: TokenEmbedding):
        table_axes = axes.logical_axes_of(base.embedding)
        q, scale = quantize_per_channel(base.embedding[...], (1,))
        self.embedding = nnx.Param(q, out_sharding=table_axes, eager_sharding=False)
        self.embedding_scale = nnx.Param(scale, out_sharding=table_axes[:1],
                                         eager_sharding=False)

    def __call__(self, tokens: jax.Array, dtype: jnp.dtype,
                 shard: axes.ActivationSharder = axes.no_sharding) -> jax.Array:
        table = shard(self.embedding[...], (None, None))
        rows = jnp.take(table, tokens, axis=0).astype(dtype)
        return rows * jnp.take(self.embedding_scale[...], tokens, axis=0)[..., None].astype(dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        logits = jnp.einsum("...d,vd->...v", x, self.embedding[...].astype(x.dtype))
        return logits * self.embedding_scale[...].astype(x.dtype)


def quantize_int8(model: nnx.Module, *, embeddings: bool = True) -> dict[str, int]:
    """Quantizes the model's dense projections (and token embeddings) in place.

    Args:
      embeddings: Also the token-embedding tables (for tied models also the
        output layer; an untied `lm_head` is a `Dense` and always quantized).

    Returns:
      How many layers of each kind were quantized.
    """
    counts = {"dense": 0, "embedding": 0}
    for path, node in list(nnx.iter_graph(model)):
        if not path:
            continue
        if type(node) is Dense:
            _replace(model, path, Int8Dense(node))
            counts["dense"] += 1
        elif embeddings and type(node) is TokenEmbedding and path[-1] == "token_embed":
            _replace(model, path, Int8Embedding(node))
            counts["embedding"] += 1
    return counts


def parameter_bytes(params) -> int:
    """Bytes of every array in a parameter tree, as held in memory."""
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params))


def _replace(model: nnx.Module, path: tuple, module: nnx.Module) -> None:
    parent = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = module
    else:
        setattr(parent, path[-1], module)


def int8_parameter_bytes(build) -> tuple[int, int]:
    """(float bytes, int8 bytes) of the model `build()` returns, computed abstractly.

    Nothing is allocated: the model is built and quantized under `nnx.eval_shape`,
    so this sizes a registered export's int8 form without reading its weights.
    """
    def built_and_quantized():
        model = build()
        before = nnx.state(model, nnx.Param)
        quantize_int8(model)
        return before, nnx.state(model, nnx.Param)

    before, after = nnx.eval_shape(built_and_quantized)
    return parameter_bytes(before), parameter_bytes(after)
