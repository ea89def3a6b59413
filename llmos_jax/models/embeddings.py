"""Token and learned-position embeddings, and rotary position embedding."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
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


@dataclasses.dataclass(frozen=True)
class Rope:
    """Rotary embedding settings: base frequency and optional context-extension scaling.

    `scaling` is "none", "linear" (every frequency divided by `factor`, i.e.
    positions compressed) or "llama3" (Llama 3.1: low frequencies divided by
    `factor`, high ones kept, a smooth blend between; see
    `TransformerConfig.rope_scaling`).
    """

    theta: float
    scaling: str = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_len: int = 8192

    def inverse_frequencies(self, dim: int) -> np.ndarray:
        """float32 [dim / 2] angular frequencies of the feature pairs."""
        exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
        freqs = (np.float32(1.0) / np.float32(self.theta) ** exponents).astype(np.float32)
        if self.scaling == "linear":
            return (freqs / np.float32(self.factor)).astype(np.float32)
        if self.scaling == "llama3":
            wavelengths = np.float32(2 * math.pi) / freqs
            low_edge = self.original_max_len / self.low_freq_factor
            high_edge = self.original_max_len / self.high_freq_factor
            smooth = ((self.original_max_len / wavelengths - self.low_freq_factor)
                      / (self.high_freq_factor - self.low_freq_factor))
            blended = (1 - smooth) * freqs / self.factor + smooth * freqs
            scaled = np.where(wavelengths > low_edge, freqs / self.factor, freqs)
            medium = (wavelengths >= high_edge) & (wavelengths <= low_edge)
            return np.where(medium, blended, scaled).astype(np.float32)
        if self.scaling != "none":
            raise ValueError(f"unknown RoPE scaling {self.scaling!r}")
        return freqs


def apply_rope(x: jax.Array, positions: jax.Array, theta: float | Rope) -> jax.Array:
    """Rotates feature pairs of `x` [batch, length, heads, dim] by position.

    Uses the "rotate half" pairing (feature i with i + dim/2), as in GPT-NeoX
    and Llama checkpoints. Angles are computed in float32. `theta` is the base
    frequency, or a `Rope` that may also scale the frequencies.
    """
    dim = x.shape[-1]
    if isinstance(theta, Rope) and theta.scaling != "none":
        freqs = jnp.asarray(theta.inverse_frequencies(dim))
    else:
        base = theta.theta if isinstance(theta, Rope) else theta
        freqs = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [batch, length, dim/2]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
