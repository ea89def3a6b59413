"""Token and learned-position embeddings, and rotary position embedding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes


class TokenEmbedding(nnx.Module):
    """Token lookup; `attend` reuses the table for tied output logits."""

    def __init__(self, vocab_size: int, dim: int, *, init_std: float,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs, row_axis: str = axes.VOCAB):
        # `row_axis` names the table's rows for sharding, e.g. BERT's token
        # types (axes.SEGMENT_TYPES) reuse this lookup with a tiny table.
        self.embedding = axes.make_param(
            rngs, nnx.initializers.normal(init_std), (vocab_size, dim),
            (row_axis, axes.EMBED), param_dtype)

    def __call__(self, tokens: jax.Array, dtype: jnp.dtype,
                 shard: axes.ActivationSharder = axes.no_sharding) -> jax.Array:
        return _lookup(self.embedding[...], tokens, dtype, shard)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...d,vd->...v", x, self.embedding[...].astype(x.dtype))


class PositionEmbedding(nnx.Module):
    """A learned table of absolute positions (GPT-2)."""

    def __init__(self, max_len: int, dim: int, *, init_std: float,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.max_len = max_len
        self.embedding = axes.make_param(
            rngs, nnx.initializers.normal(init_std), (max_len, dim),
            (axes.POSITION, axes.EMBED), param_dtype)

    def __call__(self, positions: jax.Array, dtype: jnp.dtype,
                 shard: axes.ActivationSharder = axes.no_sharding) -> jax.Array:
        return _lookup(self.embedding[...], positions, dtype, shard)


def _lookup(table: jax.Array, ids: jax.Array, dtype: jnp.dtype,
            shard: axes.ActivationSharder) -> jax.Array:
    """Gathers rows of a table whose shards are first all-gathered.

    A gather from a table sharded over the same mesh axes as the batch cannot be
    partitioned efficiently (XLA falls back to full rematerialisation); gathering
    the table first is the FSDP pattern and keeps the lookup local.
    """
    table = shard(table.astype(dtype), (None, None))
    return jnp.take(table, ids, axis=0)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotates feature pairs of `x` [batch, length, heads, dim] by position.

    Uses the "rotate half" pairing (feature i with i + dim/2), as in GPT-NeoX
    and Llama checkpoints. Angles are computed in float32.
    """
    dim = x.shape[-1]
    freqs = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [batch, length, dim/2]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
