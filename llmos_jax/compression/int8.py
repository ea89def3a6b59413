"""Post-training int8 weight-only quantization, per output channel.

`quantize_int8` swaps, in place, every `Dense` for an `Int8Dense` and the
token embedding for an `Int8Embedding`. Each keeps its weight as an int8
`nnx.Param` under the same name (`kernel`, `embedding`) plus a float32 scale
per output channel (`kernel_scale`, `embedding_scale`), so the weights stay
int8 in device memory and are passed int8 into every compiled program. A
matmul runs `(x @ int8_kernel.astype(x.dtype)) * scale`: the scale is per
output channel, so it factors out of the contraction. XLA:CPU does not fuse
the conversion into the matmul: converted whole, each kernel became a float32
temporary as large as the float model's weight. On CPU the matmul therefore
runs over blocks of the weight's rows (`blockwise_matmul`), so only one
block (about `BLOCK_BYTES` of float32) is converted at a time and stays in
cache: GPT-2 small's decode step then needs 10.4 MB of temporaries, not 504 MB
(docs/compression.md).
Biases, norms, position tables and T5's relative-position tables (small)
stay float.

Rounding `w / scale` with `scale = max|w| / 127` (per output channel) errs by
at most `scale / 2` per weight.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes
from llmos_jax.models.dense import Dense, project
from llmos_jax.models.embeddings import TokenEmbedding

QMAX = 127
# Float32 bytes of one converted block of an int8 weight on CPU: small enough to stay in a
# core's cache, large enough that the per-block loop costs little.
BLOCK_BYTES = 2 << 20
MIN_BLOCK_ROWS = 8


def block_rows(rows: int, bytes_per_row: int) -> int:
    """Rows per converted block: the divisor of `rows` whose block is nearest `BLOCK_BYTES`.

    Blocks must divide the rows (they are a free reshape of the weight, which a
    loop then reads in place); a weight that fits one block, or whose nearest
    divisor is more than 8x off, is converted whole (`rows`).
    """
    if rows * bytes_per_row <= BLOCK_BYTES:
        return rows
    divisors = [d for d in range(1, rows) if rows % d == 0] or [rows]
    best = min(divisors, key=lambda d: abs(math.log(d * bytes_per_row / BLOCK_BYTES)))
    off = best * bytes_per_row / BLOCK_BYTES
    return best if 1 / 8 <= off <= 8 and best >= MIN_BLOCK_ROWS else rows


def blockwise_matmul(x: jax.Array, q: jax.Array, *, transpose_q: bool = False) -> jax.Array:
    """`x @ q.astype(x.dtype)` (`x @ q.T` with `transpose_q`) for 2-D `x` and int8 `q`.

    On CPU, a loop reads q a block of rows at a time and converts and multiplies
    each block while it is in cache. Without `transpose_q` the blocks split the
    contraction and are summed; with it (the tied output layer's [vocab, dim]
    table) they are output columns. Off CPU, or when q is one block, it is the
    plain expression. (Unrolled slices instead of a loop let XLA convert every
    block first; a loop over `dynamic_slice`s copied q into the loop's state.)
    On a CPU mesh that shards q's rows the loop would gather q on each device:
    quantized serving on CPU is meant for one device.
    """
    rows, cols = q.shape
    block = block_rows(rows, cols * jnp.dtype(x.dtype).itemsize)
    if jax.default_backend() != "cpu" or block >= rows:
        w = q.astype(x.dtype)
        return x @ (w.T if transpose_q else w)
    q_blocks = q.reshape(rows // block, block, cols)
    if transpose_q:
        y = jax.lax.map(lambda q_block: x @ q_block.astype(x.dtype).T, q_blocks)
        return jnp.moveaxis(y, 0, 1).reshape(x.shape[0], rows)
    x_blocks = jnp.moveaxis(x.reshape(x.shape[0], rows // block, block), 1, 0)

    def add_block(total, blocks):  # summed in float32 whatever x's dtype, rounded once
        x_block, q_block = blocks
        return total + jnp.matmul(x_block, q_block.astype(x.dtype),
                                  preferred_element_type=jnp.float32), None

    total, _ = jax.lax.scan(add_block, jnp.zeros((x.shape[0], cols), jnp.float32),
                            (x_blocks, q_blocks))
    return total.astype(x.dtype)


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
        # Under a scanned stack `nnx.scan` hands each layer its own slice of the kernel.
        if jax.default_backend() == "cpu":  # as `project`: 2-D, converted block by block
            fan_in, fan_out = math.prod(self.in_features), math.prod(self.out_features)
            lead = x.shape[:x.ndim - len(self.in_features)]
            y = blockwise_matmul(x.reshape((-1, fan_in)),
                                 self.kernel[...].reshape((fan_in, fan_out)))
            y = y.reshape(lead + tuple(self.out_features))
        else:
            y = project(x, self.kernel[...].astype(x.dtype), self.in_features, self.out_features)
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
        table = self.embedding[...]
        logits = blockwise_matmul(x.reshape((-1, x.shape[-1])), table, transpose_q=True)
        logits = logits.reshape(x.shape[:-1] + (table.shape[0],))
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
