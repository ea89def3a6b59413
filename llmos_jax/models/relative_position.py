"""T5's bucketed relative position bias.

Distances between query and key positions fall into `num_buckets` buckets:
exact for short distances, logarithmic up to `max_distance`, one bucket
beyond. Each bucket has a learned scalar per head, added to the attention
scores. Bidirectional (encoder) buckets tell before from after; causal
(decoder) buckets only look back. T5 computes the bias once per stack and
shares it across layers, so one table lives on the stack, not on a block.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes


def relative_position_buckets(query_len: int, key_len: int, *, bidirectional: bool,
                              num_buckets: int, max_distance: int) -> jax.Array:
    """int32 [query, key] bucket of each (query, key) distance, as T5 computes it."""
    relative = jnp.arange(key_len)[None, :] - jnp.arange(query_len)[:, None]
    buckets = jnp.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative)
    else:
        distance = -jnp.minimum(relative, 0)
    max_exact = num_buckets // 2
    scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
              / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    large = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, large)


class RelativePositionBias(nnx.Module):
    """A [buckets, heads] table giving the additive score bias [1, heads, query, key]."""

    def __init__(self, num_buckets: int, num_heads: int, *, max_distance: int,
                 bidirectional: bool, init_std: float, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embedding = axes.make_param(
            rngs, nnx.initializers.normal(init_std), (num_buckets, num_heads),
            (axes.RELPOS_BUCKETS, axes.HEADS), param_dtype)

    def __call__(self, query_len: int, key_len: int) -> jax.Array:
        buckets = relative_position_buckets(
            query_len, key_len, bidirectional=self.bidirectional,
            num_buckets=self.num_buckets, max_distance=self.max_distance)
        values = jnp.take(self.embedding[...].astype(jnp.float32), buckets, axis=0)
        return jnp.transpose(values, (2, 0, 1))[None]
