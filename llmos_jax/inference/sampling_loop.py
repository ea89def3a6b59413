"""The greedy / sampling decoding loop: prefill, then one token per `while_loop` step.

Everything has a static shape: a `[rows, slots]` token buffer (prompt, then
generated tokens), the KV cache, and per-row done flags. The loop ends when
every row is done or `num_steps` tokens were generated. Each row samples
with its own key (`fold_in(row key, step)`), so a request's sample does not
depend on the other requests in its batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmos_jax.inference import stopping
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.decoding_model import DecodingModel
from llmos_jax.inference.kv_cache import KVCache
from llmos_jax.inference.logits_processors import apply_penalties, apply_warpers


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SamplingState:
    """Loop carry. `index` is the slot of the newest token (shared by all rows)."""

    tokens: jax.Array    # int [rows, slots]
    valid: jax.Array     # bool [rows, slots]: real tokens
    cache: KVCache
    logits: jax.Array    # float [rows, vocab]: for the token after `index`
    index: jax.Array     # int scalar
    step: jax.Array      # int scalar: tokens generated
    generated: jax.Array  # int [rows]
    finish: jax.Array    # int [rows]: stopping.RUNNING until done
    log_likelihood: jax.Array  # float [rows]: sum of the model's log-probs of its tokens


@dataclasses.dataclass(frozen=True)
class SamplingOutput:
    tokens: jax.Array          # int [rows, slots]; generated ones start at the prefix length
    generated: jax.Array       # int [rows]
    finish: jax.Array          # int [rows]
    log_likelihood: jax.Array  # float [rows]


def _choose(state: SamplingState, config: DecodeConfig, row_keys: jax.Array | None,
            budgets: jax.Array) -> SamplingState:
    """Picks each running row's next token from `state.logits` and records it."""
    done = state.finish != stopping.RUNNING
    log_probs = jax.nn.log_softmax(state.logits, axis=-1)
    scores = apply_penalties(state.logits, state.tokens, state.valid, state.index, config)
    if config.method == "greedy":
        token = jnp.argmax(scores, axis=-1)
    else:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, state.step)
        token = jax.vmap(jax.random.categorical)(keys, apply_warpers(scores, config))
    token = jnp.where(done, config.pad_id, token).astype(jnp.int32)
    slot = state.index + 1
    tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, token[:, None], slot, axis=1)
    valid = jax.lax.dynamic_update_slice_in_dim(state.valid, ~done[:, None], slot, axis=1)
    generated = state.generated + (~done).astype(jnp.int32)
    picked = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    stop_hit = stopping.ends_with_stop_sequence(tokens, slot, generated, config)
    reason = stopping.finish_reason(token, stop_hit, generated, budgets, config)
    return dataclasses.replace(
        state, tokens=tokens, valid=valid, index=slot, step=state.step + 1, generated=generated,
        finish=jnp.where(done, state.finish, reason),
        log_likelihood=state.log_likelihood + jnp.where(done, 0.0, picked))


def sampling_decode(model: DecodingModel, prefix: jax.Array, prefix_valid: jax.Array,
                    prompt: jax.Array, prompt_valid: jax.Array, budgets: jax.Array,
                    row_keys: jax.Array | None, config: DecodeConfig,
                    num_steps: int) -> SamplingOutput:
    """Greedy or sampled continuations of every row (call inside `jax.jit`).

    Args:
      model: The family adapter.
      prefix, prefix_valid: The decoder's tokens before generation [rows, P]
        (the left-padded prompt, or T5's start token) and their validity.
      prompt, prompt_valid: What `model.prefill` consumes (the same prompt,
        or the encoder input).
      budgets: int [rows] most tokens each row may generate (<= num_steps).
      row_keys: Typed PRNG keys [rows] ("sample"), or None ("greedy").
      config: The method and its knobs.
      num_steps: Static bound on generated tokens.
    """
    rows, prefix_len = prefix.shape
    slots = prefix_len + num_steps
    logits, cache = model.prefill(prompt, prompt_valid, slots)
    pad = jnp.full((rows, num_steps), config.pad_id, jnp.int32)
    state = SamplingState(
        tokens=jnp.concatenate([prefix.astype(jnp.int32), pad], axis=1),
        valid=jnp.concatenate([prefix_valid, jnp.zeros((rows, num_steps), bool)], axis=1),
        cache=cache, logits=logits, index=jnp.int32(prefix_len - 1), step=jnp.int32(0),
        generated=jnp.zeros((rows,), jnp.int32),
        finish=jnp.where(budgets > 0, stopping.RUNNING, stopping.LENGTH).astype(jnp.int32),
        log_likelihood=jnp.zeros((rows,), jnp.float32))
    state = _choose(state, config, row_keys, budgets)

    def running(state: SamplingState) -> jax.Array:
        return (state.step < num_steps) & jnp.any(state.finish == stopping.RUNNING)

    def advance(state: SamplingState) -> SamplingState:
        last = jax.lax.dynamic_index_in_dim(state.tokens, state.index, axis=1, keepdims=False)
        logits, cache = model.step(last, state.cache, state.index)
        return _choose(dataclasses.replace(state, logits=logits, cache=cache), config, row_keys,
                       budgets)

    state = jax.lax.while_loop(running, advance, state)
    return SamplingOutput(tokens=state.tokens, generated=state.generated, finish=state.finish,
                          log_likelihood=state.log_likelihood)
