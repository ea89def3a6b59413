"""Choosing each slot's next token with that slot's own settings, inside one jitted step.

Every row of the running batch belongs to a different request, so nothing here
is static: temperature, top-k, top-p, penalties, `min_tokens` and the seed are
arrays with one entry per row. Greedy rows (temperature 0) take the argmax of
their processed logits; sampling rows draw from their own key, derived from the
request's seed and the index of the token, so a seeded request gets the same
sample whatever shares the batch. The sort that top-k/top-p need runs only when
some row asks for it, and the top log-probabilities only when some row wants them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from llmos_jax.serving.requests import MAX_TOP_LOGPROBS, SamplingSettings

__all__ = ["SlotSettings", "Choice", "choose_tokens", "slot_key", "settings_rows"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SlotSettings:
    """Per-row sampling settings ([rows] arrays; see `SamplingSettings` for meanings)."""

    temperature: jax.Array        # float32; 0 = greedy
    top_k: jax.Array              # int32; 0 = off
    top_p: jax.Array              # float32 in (0, 1]
    repetition_penalty: jax.Array  # float32; 1 = off
    presence_penalty: jax.Array   # float32
    frequency_penalty: jax.Array  # float32
    min_tokens: jax.Array         # int32
    top_logprobs: jax.Array       # int32; top log-probabilities the row wants (-1: no logprobs)


def settings_rows(rows: list[SamplingSettings | None]) -> SlotSettings:
    """Host arrays for a batch of rows; a None row (a free slot) gets inert greedy settings."""
    def column(name: str, default, dtype) -> np.ndarray:
        return np.asarray([default if s is None else getattr(s, name) for s in rows], dtype)

    return SlotSettings(
        temperature=column("temperature", 0.0, np.float32),
        top_k=column("top_k", 0, np.int32),
        top_p=column("top_p", 1.0, np.float32),
        repetition_penalty=column("repetition_penalty", 1.0, np.float32),
        presence_penalty=column("presence_penalty", 0.0, np.float32),
        frequency_penalty=column("frequency_penalty", 0.0, np.float32),
        min_tokens=column("min_tokens", 0, np.int32),
        top_logprobs=np.asarray([-1 if s is None or s.logprobs is None else s.logprobs
                                 for s in rows], np.int32))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Choice:
    """The chosen tokens [rows], their log-probabilities under the unprocessed model
    distribution [rows], and the `MAX_TOP_LOGPROBS` most likely (ids, log-probs) [rows, K]."""

    tokens: jax.Array
    logprobs: jax.Array
    top_ids: jax.Array
    top_logprobs: jax.Array


def slot_key(seed: int) -> np.ndarray:
    """The raw uint32[2] key of a request's seed (the per-token key folds in the token index)."""
    return np.asarray(jax.random.key_data(jax.random.key(seed & 0xFFFFFFFF)), np.uint32)


def _penalised(logits, settings: SlotSettings, counts, prompt_seen):
    """Repetition penalty (Hugging Face: over prompt and generated tokens), then OpenAI's
    presence and frequency penalties (over generated tokens)."""
    generated = counts > 0
    seen = jnp.logical_or(prompt_seen, generated)
    penalty = settings.repetition_penalty[:, None]
    logits = jnp.where(seen, jnp.where(logits < 0, logits * penalty, logits / penalty), logits)
    return (logits - settings.presence_penalty[:, None] * generated
            - settings.frequency_penalty[:, None] * counts.astype(jnp.float32))


def _top_k_top_p(scaled: jax.Array, settings: SlotSettings) -> jax.Array:
    """Each row's top-k, then top-p (on the top-k distribution), as Hugging Face orders them."""
    vocab = scaled.shape[-1]
    ordered = -jnp.sort(-scaled, axis=-1)  # descending
    rank = jnp.arange(vocab)[None, :]
    k = jnp.where(settings.top_k > 0, jnp.minimum(settings.top_k, vocab), vocab)[:, None]
    ordered = jnp.where(rank < k, ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = jnp.logical_and(rank < k, mass_before < settings.top_p[:, None])
    kept = jnp.sum(keep, axis=-1)  # >= 1: the first token always has mass_before 0
    threshold = jnp.take_along_axis(ordered, (kept - 1)[:, None], axis=-1)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def choose_tokens(logits: jax.Array, settings: SlotSettings, *, counts: jax.Array,
                  prompt_seen: jax.Array, stop_ban: jax.Array, generated: jax.Array,
                  keys: jax.Array) -> Choice:
    """Next token of every row.

    Each optional stage (penalties, the top-k/top-p sort, sampling noise, log-probabilities)
    runs only when some row needs it: on CPU, sampling noise and a full-vocabulary
    log-softmax for 32 rows cost about as much as a third of a GPT-2-small decode step.

    Args:
      logits: float32 [rows, vocab] from the model.
      settings: Per-row settings.
      counts: int32 [rows, vocab], how often each token was generated so far.
      prompt_seen: bool [rows, vocab], tokens in the row's prompt.
      stop_ban: bool [rows, vocab], EOS and stop token ids, masked while the row has
        generated fewer than `min_tokens`.
      generated: int32 [rows], tokens generated so far (the index of this one).
      keys: uint32 [rows, 2], each row's request key.
    """
    rows, vocab = logits.shape
    penalised = jnp.logical_or(settings.repetition_penalty != 1.0, jnp.logical_or(
        settings.presence_penalty != 0.0, settings.frequency_penalty != 0.0))
    processed = jax.lax.cond(jnp.any(penalised),
                             lambda x: _penalised(x, settings, counts, prompt_seen),
                             lambda x: x, logits)
    too_early = generated < settings.min_tokens
    processed = jax.lax.cond(
        jnp.any(too_early),
        lambda x: jnp.where(jnp.logical_and(stop_ban, too_early[:, None]), -jnp.inf, x),
        lambda x: x, processed)
    greedy = jnp.argmax(processed, axis=-1).astype(jnp.int32)

    sampling = settings.temperature > 0

    def sample(x):
        scaled = x / jnp.where(sampling, settings.temperature, 1.0)[:, None]
        filtering = jnp.logical_and(sampling, jnp.logical_or(settings.top_k > 0,
                                                             settings.top_p < 1.0))
        scaled = jax.lax.cond(jnp.any(filtering), _top_k_top_p, lambda s, _: s, scaled,
                              settings)
        step_keys = jax.vmap(lambda key, index: jax.random.fold_in(
            jax.random.wrap_key_data(key), index))(keys, generated)
        sampled = jax.vmap(jax.random.categorical)(step_keys, scaled).astype(jnp.int32)
        return jnp.where(sampling, sampled, greedy)

    tokens = jax.lax.cond(jnp.any(sampling), sample, lambda x: greedy, processed)
    k = min(MAX_TOP_LOGPROBS, vocab)

    def with_logprobs(x):
        model_logprobs = jax.nn.log_softmax(x, axis=-1)
        chosen = jnp.take_along_axis(model_logprobs, tokens[:, None], axis=-1)[:, 0]
        top_ids, top_values = jax.lax.cond(
            jnp.any(settings.top_logprobs > 0),
            lambda lp: tuple(jax.lax.top_k(lp, k))[::-1],
            lambda lp: (jnp.zeros((rows, k), jnp.int32), jnp.zeros((rows, k), lp.dtype)),
            model_logprobs)
        return chosen, top_ids.astype(jnp.int32), top_values

    def without(x):
        return (jnp.zeros((rows,), x.dtype), jnp.zeros((rows, k), jnp.int32),
                jnp.zeros((rows, k), x.dtype))

    chosen, top_ids, top_values = jax.lax.cond(jnp.any(settings.top_logprobs >= 0),
                                               with_logprobs, without, logits)
    return Choice(tokens=tokens, logprobs=chosen, top_ids=top_ids, top_logprobs=top_values)
