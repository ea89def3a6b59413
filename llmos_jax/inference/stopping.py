"""When a generated sequence ends: EOS, a stop sequence, or its length budget."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmos_jax.inference.decode_config import DecodeConfig

# Finish reasons as stored in the loops' int arrays.
RUNNING, EOS, STOP, LENGTH = 0, 1, 2, 3
FINISH_NAMES = {EOS: "eos", STOP: "stop", LENGTH: "length"}


def ends_with_stop_sequence(tokens: jax.Array, last_slot: jax.Array, generated: jax.Array,
                            config: DecodeConfig) -> jax.Array:
    """bool [...]: the generated tokens ending at `last_slot` end with a stop sequence.

    Args:
      tokens: int [..., slots] sequence buffers.
      last_slot: Slot of the newest token (shared).
      generated: int [...] tokens generated so far, the newest included; a
        stop sequence must lie entirely in the generated part.
      config: Holds `stop_sequences`.
    """
    hit = jnp.zeros(tokens.shape[:-1], bool)
    for stop in config.stop_sequences:
        size = len(stop)
        if size > tokens.shape[-1]:
            continue
        tail = jax.lax.dynamic_slice_in_dim(tokens, last_slot - (size - 1), size, axis=-1)
        matches = jnp.all(tail == jnp.asarray(stop, tokens.dtype), axis=-1)
        hit = hit | (matches & (generated >= size) & (last_slot >= size - 1))
    return hit


def finish_reason(token: jax.Array, stop_hit: jax.Array, generated: jax.Array,
                  budget: jax.Array, config: DecodeConfig) -> jax.Array:
    """int reason (EOS, STOP, LENGTH, or RUNNING) after `token` was generated."""
    eos = (token == config.eos_id) if config.eos_id is not None else jnp.zeros(token.shape, bool)
    return jnp.where(eos, EOS, jnp.where(stop_hit, STOP,
                                         jnp.where(generated >= budget, LENGTH, RUNNING)))
