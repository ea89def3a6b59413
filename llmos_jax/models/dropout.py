"""Functional dropout driven by an explicit key.

The key is derived from (seed, step, layer) by the caller, so a resumed run
draws exactly the masks an uninterrupted run would have drawn.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Zeroes a `rate` fraction of `x` and rescales; identity without a key or rate."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def split_key(key: jax.Array | None, n: int) -> tuple[jax.Array | None, ...]:
    """`n` independent keys, or `n` Nones when dropout is off."""
    if key is None:
        return (None,) * n
    return tuple(jax.random.split(key, n))
