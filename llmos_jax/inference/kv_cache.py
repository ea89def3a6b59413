"""The preallocated key/value cache that decoding reads and writes in place.

One `[rows, kv_heads, slots, head_dim]` array of keys and one of values per
layer (a tuple, not a stacked array: each layer's update is then an in-place
`dynamic_update_slice` with no per-step slicing of a stacked buffer). Heads
come before slots because that is the layout attention's matmuls read: with
slots first, XLA transposed every layer's whole cache at every step (on CPU
that made attention at batch 16 about ten times slower). The arrays carry
logical axis names (`CACHE_AXES`), so on a training mesh the rows follow the
batch layout and the heads follow tensor parallelism.
Encoder-decoders add the cross-attention keys and values, computed once.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmos_jax.models import axes
from llmos_jax.models.attention import CACHE_AXES  # [rows, kv_heads, slots, head_dim]

__all__ = ["CACHE_AXES", "KVCache", "empty_cache", "repeat_rows", "select_rows"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Per-layer self-attention keys and values, and which slots hold real tokens.

    Attributes:
      keys, values: One [rows, kv_heads, slots, head_dim] array per layer.
      key_valid: bool [rows, slots]; False for a row's left padding.
      cross_keys, cross_values: Encoder-decoders: per decoder layer
        [rows, kv_heads, encoder_len, head_dim]; empty tuples otherwise.
      encoder_valid: Encoder-decoders: bool [rows, encoder_len]; None otherwise.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    key_valid: jax.Array
    cross_keys: tuple[jax.Array, ...] = ()
    cross_values: tuple[jax.Array, ...] = ()
    encoder_valid: jax.Array | None = None

    @property
    def slots(self) -> int:
        return self.keys[0].shape[2]


def empty_cache(num_layers: int, rows: int, slots: int, kv_heads: int, head_dim: int,
                dtype: jnp.dtype, key_valid: jax.Array,
                shard: axes.ActivationSharder = axes.no_sharding) -> KVCache:
    """Zeroed keys and values for `num_layers` layers, laid out by `shard`."""

    def zeros() -> jax.Array:
        return shard(jnp.zeros((rows, kv_heads, slots, head_dim), dtype), CACHE_AXES)

    return KVCache(keys=tuple(zeros() for _ in range(num_layers)),
                   values=tuple(zeros() for _ in range(num_layers)), key_valid=key_valid)


def select_rows(cache: KVCache, rows: jax.Array) -> KVCache:
    """The cache of the given rows (beam search reorders beams with this)."""
    return jax.tree.map(lambda a: jnp.take(a, rows, axis=0), cache)


def repeat_rows(cache: KVCache, times: int) -> KVCache:
    """Each row repeated `times` times in a row (one prompt's prefill, shared by its beams)."""
    return jax.tree.map(lambda a: jnp.repeat(a, times, axis=0), cache)
