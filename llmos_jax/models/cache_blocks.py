"""A layer's decoding cache split along its slots into blocks, read by prefix without a copy.

The serving engine's decode step attends over the first `read_len` slots of each
row (the longest live row, rounded up to a block boundary), not the whole
preallocated cache. With one `[rows, kv_heads, slots, head_dim]` array per layer,
`cache[:, :, :read_len]` is a strided slice that XLA:CPU copies into a fresh
buffer before the attention matmuls can read it: measured on the 2-core VM for
GPT-2-small at 32 rows and 256 of 1,024 slots, those copies made attention three
times slower than the matmuls themselves (12 layers: 123 ms of CPU time against
43 ms blocked). Here each layer's cache is a tuple of blocks; the prefix is the
first few blocks, which the matmuls read in place, and the softmax runs over the
concatenated (small) scores.

A decode step writes one new key/value per row, each row at its own slot, so a
write is one scatter per block that drops the rows whose slot lies elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["CacheBlocks", "block_sizes", "blocked_attention"]

_NEG_INF = -1e30  # as in `attention`: finite, so a fully masked row gives no NaN


def block_sizes(slots: int, block_len: int) -> tuple[int, ...]:
    """`block_len`-slot blocks covering `slots` (the last one shorter if it must be)."""
    full, rest = divmod(slots, block_len)
    return (block_len,) * full + ((rest,) if rest else ())


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class CacheBlocks:
    """One layer's keys (or values) as consecutive blocks [rows, kv_heads, block, head_dim]."""

    blocks: tuple[jax.Array, ...]

    @classmethod
    def zeros(cls, rows: int, kv_heads: int, slots: int, head_dim: int, dtype: jnp.dtype,
              block_len: int) -> CacheBlocks:
        return cls(tuple(jnp.zeros((rows, kv_heads, size, head_dim), dtype)
                         for size in block_sizes(slots, block_len)))

    @property
    def starts(self) -> tuple[int, ...]:
        """The first slot of each block."""
        starts, slot = [], 0
        for block in self.blocks:
            starts.append(slot)
            slot += block.shape[2]
        return tuple(starts)

    @property
    def slots(self) -> int:
        return sum(block.shape[2] for block in self.blocks)

    @property
    def dtype(self) -> jnp.dtype:
        return self.blocks[0].dtype

    def map(self, fn: Callable[[jax.Array], jax.Array]) -> CacheBlocks:
        return CacheBlocks(tuple(fn(block) for block in self.blocks))

    def astype(self, dtype: jnp.dtype) -> CacheBlocks:
        return self if dtype == self.dtype else self.map(lambda block: block.astype(dtype))

    def prefix(self, read_len: int) -> CacheBlocks:
        """The blocks holding slots [0, read_len); `read_len` must end a block."""
        ends = [start + block.shape[2] for start, block in zip(self.starts, self.blocks)]
        if read_len not in ends:
            raise ValueError(f"read_len {read_len} does not end a cache block (block ends: "
                             f"{ends})")
        return CacheBlocks(self.blocks[:ends.index(read_len) + 1])

    def write(self, new: jax.Array, write_index: jax.Array) -> CacheBlocks:
        """`new` [rows, kv_heads, 1, head_dim] written at each row's slot `write_index` [rows]."""
        if new.shape[2] != 1 or jnp.ndim(write_index) != 1:
            raise ValueError("CacheBlocks.write takes one new slot per row (a decode step) "
                             f"and one index per row; got {new.shape[2]} slots and index "
                             f"shape {jnp.shape(write_index)}")
        rows = jnp.arange(new.shape[0])
        update = new[:, :, 0].astype(self.dtype)  # [rows, kv_heads, head_dim]
        written = []
        for start, block in zip(self.starts, self.blocks):
            size = block.shape[2]
            inside = (write_index >= start) & (write_index < start + size)
            # Rows writing elsewhere get an index past the block, which the scatter drops.
            at = jnp.where(inside, write_index - start, size)
            written.append(block.at[rows, :, at].set(update, mode="drop"))
        return CacheBlocks(tuple(written))


def blocked_attention(q: jax.Array, keys: CacheBlocks, values: CacheBlocks,
                      mask: jax.Array | None) -> jax.Array:
    """Attention of (already scaled) q [batch, t, heads, head_dim] over blocked keys/values.

    `mask` is [batch, 1, t, S] with S the slots the blocks cover. Grouped-query
    attention (fewer kv heads than heads) is supported. Returns [batch, t, heads,
    head_dim].
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = keys.blocks[0].shape[1]
    groups = heads // kv_heads
    if groups == 1:  # plain multi-head: 4-D einsums, no size-1 group axis
        scores = jnp.concatenate([
            jnp.einsum("bthd,bhsd->bhts", q, block, preferred_element_type=jnp.float32)
            for block in keys.blocks], axis=-1)
        head_mask = mask
    else:
        q = q.reshape(batch, length, kv_heads, groups, head_dim)
        scores = jnp.concatenate([
            jnp.einsum("btkgd,bksd->bkgts", q, block, preferred_element_type=jnp.float32)
            for block in keys.blocks], axis=-1)
        head_mask = None if mask is None else mask[:, :, None]
    if head_mask is not None:
        scores = jnp.where(head_mask, scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    spec = "bhts,bhsd->bthd" if groups == 1 else "bkgts,bksd->btkgd"
    y = None
    for start, block in zip(values.starts, values.blocks):
        part = jnp.einsum(spec, probs[..., start:start + block.shape[2]], block)
        y = part if y is None else y + part
    return y.reshape(batch, length, heads, head_dim)
