"""Logit transforms applied before a token is chosen, with Hugging Face's semantics.

Penalties (repetition, no-repeat n-gram) look at the tokens generated so far;
warpers (temperature, top-k, top-p) reshape the distribution for sampling.
All work on a batch of rows `[rows, vocab]` inside the jitted decoding loop;
the sequence so far is a fixed-size buffer `[rows, slots]` with a validity
mask (False for padding and not-yet-written slots).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmos_jax.inference.decode_config import DecodeConfig


def _token_presence(tokens: jax.Array, valid: jax.Array, vocab_size: int) -> jax.Array:
    """bool [rows, vocab]: which tokens occur in the valid slots of each row."""
    rows = jnp.arange(tokens.shape[0])[:, None]
    return jnp.zeros((tokens.shape[0], vocab_size), bool).at[rows, tokens].max(valid)


def repetition_penalty(logits: jax.Array, tokens: jax.Array, valid: jax.Array,
                       penalty: float) -> jax.Array:
    """CTRL's penalty: seen tokens' positive scores / penalty, negative ones * penalty."""
    seen = _token_presence(tokens, valid, logits.shape[-1])
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def no_repeat_ngram(logits: jax.Array, tokens: jax.Array, valid: jax.Array,
                    last_slot: jax.Array, size: int) -> jax.Array:
    """Bans tokens that would complete an n-gram already present in the row.

    Args:
      tokens, valid: The sequence buffer [rows, slots] and its validity.
      last_slot: Slot of the newest token (shared by all rows).
      size: n.
    """
    slots = tokens.shape[1]
    if size > slots:
        return logits
    starts = slots - size + 1
    windows = jnp.stack([tokens[:, i:i + starts] for i in range(size)], axis=-1)
    window_valid = jnp.stack([valid[:, i:i + starts] for i in range(size)], axis=-1).all(-1)
    # The last size-1 tokens (the prefix a new token would extend).
    prefix = jax.lax.dynamic_slice_in_dim(tokens, last_slot - (size - 2), size - 1, axis=1)
    prefix_valid = jax.lax.dynamic_slice_in_dim(valid, last_slot - (size - 2), size - 1,
                                                axis=1).all(-1)
    ends_in_time = jnp.arange(starts) + size - 1 <= last_slot
    match = (jnp.all(windows[..., :-1] == prefix[:, None, :], axis=-1) & window_valid
             & ends_in_time[None, :] & prefix_valid[:, None]
             & (last_slot >= size - 2))
    rows = jnp.arange(tokens.shape[0])[:, None]
    banned = jnp.zeros(logits.shape, bool).at[rows, windows[..., -1]].max(match)
    return jnp.where(banned, -jnp.inf, logits)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k highest scores (ties with the k-th included); the rest -inf."""
    k = min(k, logits.shape[-1])
    threshold = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < threshold, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filter: drops the least likely tokens whose total probability is <= 1 - p.

    The most likely token is always kept.
    """
    order = jnp.argsort(logits, axis=-1)  # ascending, as Hugging Face sorts
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = cumulative <= 1.0 - p
    remove_sorted = remove_sorted.at[..., -1].set(False)
    rows = jnp.arange(logits.shape[0])[:, None]
    remove = jnp.zeros(logits.shape, bool).at[rows, order].set(remove_sorted)
    return jnp.where(remove, -jnp.inf, logits)


def apply_penalties(scores: jax.Array, tokens: jax.Array, valid: jax.Array,
                    last_slot: jax.Array, config: DecodeConfig) -> jax.Array:
    """Repetition and no-repeat-ngram penalties (HF's order), on logits or log-probs."""
    if config.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, tokens, valid, config.repetition_penalty)
    if config.no_repeat_ngram_size > 0:
        scores = no_repeat_ngram(scores, tokens, valid, last_slot, config.no_repeat_ngram_size)
    return scores


def apply_warpers(logits: jax.Array, config: DecodeConfig) -> jax.Array:
    """Temperature, then top-k, then top-p (HF's order)."""
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k is not None:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None and config.top_p < 1.0:
        logits = top_p_filter(logits, config.top_p)
    return logits
