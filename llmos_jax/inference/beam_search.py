"""Beam search in one `while_loop`, step for step the vectorised algorithm of
Hugging Face `generate` (transformers >= 4.50), so n-best lists match it.

Per request, `num_beams` running beams and `num_beams` finished hypotheses.
Each step takes the top `2 * num_beams` continuations over all beams;
those that end (EOS, a stop sequence, the length budget) may enter the
finished set with score `sum_logprobs / generated_length ** length_penalty`;
the best `num_beams` that do not end keep running, and the KV cache rows are
reordered to follow their parents. The prompt is prefilled once per request
and its cache copied to the beams.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmos_jax.inference import stopping
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.decoding_model import DecodingModel
from llmos_jax.inference.kv_cache import KVCache, repeat_rows, select_rows
from llmos_jax.inference.logits_processors import apply_penalties

_NEG = -1.0e9  # Hugging Face's "never pick" offset


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BeamState:
    running: jax.Array          # int [batch, beams, slots]
    running_scores: jax.Array   # float [batch, beams]: summed log-probs
    finished: jax.Array         # int [batch, beams, slots]
    finished_scores: jax.Array  # float [batch, beams]: length-penalised
    finished_lengths: jax.Array  # int [batch, beams]: generated tokens
    finished_reasons: jax.Array  # int [batch, beams]
    is_finished: jax.Array      # bool [batch, beams]
    improvable: jax.Array       # bool [batch, 1]: HF's early-stop heuristic unsatisfied
    all_hit: jax.Array          # bool scalar: every candidate of the last step ended
    cache: KVCache              # batch * beams rows
    logits: jax.Array           # float [batch * beams, vocab]
    index: jax.Array            # int scalar: slot of the newest running token


@dataclasses.dataclass(frozen=True)
class BeamOutput:
    tokens: jax.Array    # int [batch, beams, slots], best first
    scores: jax.Array    # float [batch, beams]
    lengths: jax.Array   # int [batch, beams] generated tokens
    finish: jax.Array    # int [batch, beams]


def _gather(values: jax.Array, indices: jax.Array) -> jax.Array:
    """values[b, indices[b, j], ...] for [batch, n, ...] values and [batch, m] indices."""
    expanded = indices.reshape(indices.shape + (1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, expanded, axis=1)


def _step(state: BeamState, prefix_valid: jax.Array, budgets: jax.Array, config: DecodeConfig,
          prefix_len: int) -> BeamState:
    batch, beams, slots = state.running.shape
    vocab = state.logits.shape[-1]
    index = state.index
    generated = index + 2 - prefix_len  # tokens generated once this step's token is added
    flat = state.running.reshape(batch * beams, slots)
    slot_ids = jnp.arange(slots)
    valid = jnp.where(slot_ids[None, :] < prefix_len,
                      jnp.pad(prefix_valid, ((0, 0), (0, slots - prefix_len))),
                      slot_ids[None, :] <= index)
    valid = jnp.repeat(valid, beams, axis=0)
    log_probs = jax.nn.log_softmax(state.logits, axis=-1)
    log_probs = apply_penalties(log_probs, flat, valid, index, config)
    log_probs = log_probs.reshape(batch, beams, vocab) + state.running_scores[:, :, None]
    keep = 2 * beams
    top_scores, top_ids = jax.lax.top_k(log_probs.reshape(batch, beams * vocab), keep)
    parents = top_ids // vocab
    tokens = (top_ids % vocab).astype(jnp.int32)
    candidates = _gather(state.running, parents)
    candidates = jax.lax.dynamic_update_slice_in_dim(candidates, tokens[..., None], index + 1,
                                                     axis=2)
    stop_hit = stopping.ends_with_stop_sequence(candidates, index + 1, generated, config)
    reasons = stopping.finish_reason(tokens, stop_hit, generated, budgets[:, None], config)
    hits = reasons != stopping.RUNNING

    # Running beams for the next step: the best continuations that did not end.
    running_scores = top_scores + hits.astype(jnp.float32) * _NEG
    next_ids = jax.lax.top_k(running_scores, beams)[1]
    running = _gather(candidates, next_ids)
    next_parents = _gather(parents, next_ids)

    # Finished hypotheses: merge those that just ended (among the top `beams`).
    just_finished = hits & (jnp.arange(keep) < beams)[None, :]
    penalised = top_scores / (generated.astype(jnp.float32) ** config.length_penalty)
    if config.early_stopping is True:
        full = jnp.all(state.is_finished, axis=-1, keepdims=True)
        penalised = penalised + full.astype(jnp.float32) * _NEG
    penalised = penalised + (~state.improvable).astype(jnp.float32) * _NEG
    penalised = penalised + (~just_finished).astype(jnp.float32) * _NEG
    merged_scores = jnp.concatenate([state.finished_scores, penalised], axis=1)
    best = jax.lax.top_k(merged_scores, beams)[1]
    merged_lengths = jnp.concatenate(
        [state.finished_lengths, jnp.broadcast_to(generated, (batch, keep))], axis=1)

    rows = (jnp.arange(batch)[:, None] * beams + next_parents).reshape(-1)
    running_scores = _gather(running_scores, next_ids)
    is_finished = _gather(jnp.concatenate([state.is_finished, just_finished], axis=1), best)
    finished_scores = _gather(merged_scores, best)
    new_index = index + 1
    improvable = state.improvable & _could_improve(running_scores, finished_scores, is_finished,
                                                   new_index + 1 - prefix_len, budgets, config)
    return dataclasses.replace(
        state, running=running, running_scores=running_scores,
        finished=_gather(jnp.concatenate([state.finished, candidates], axis=1), best),
        finished_scores=finished_scores, finished_lengths=_gather(merged_lengths, best),
        finished_reasons=_gather(jnp.concatenate([state.finished_reasons, reasons], axis=1),
                                 best),
        is_finished=is_finished, improvable=improvable, all_hit=jnp.all(hits),
        cache=select_rows(state.cache, rows), index=new_index)


def _could_improve(running_scores, finished_scores, is_finished, current_length, budgets,
                   config: DecodeConfig) -> jax.Array:
    """HF's early-stop heuristic: can the best running beam still beat the worst finished?"""
    if config.early_stopping == "never" and config.length_penalty > 0.0:
        length = budgets[:, None].astype(jnp.float32)
    else:
        length = jnp.asarray(current_length, jnp.float32)
    best_running = running_scores[:, :1] / (length ** config.length_penalty)
    worst_finished = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), _NEG)
    return jnp.any(best_running > worst_finished, axis=-1, keepdims=True)


def _continues(state: BeamState, config: DecodeConfig) -> jax.Array:
    open_beam = ~(jnp.all(state.is_finished) & (config.early_stopping is True))
    return jnp.any(state.improvable) & open_beam & ~state.all_hit


def beam_decode(model: DecodingModel, prefix: jax.Array, prefix_valid: jax.Array,
                prompt: jax.Array, prompt_valid: jax.Array, budgets: jax.Array,
                config: DecodeConfig, num_steps: int) -> BeamOutput:
    """The `num_beams` best hypotheses of every request, best first (call inside jit).

    Args are those of `sampling_decode`, one row per request.
    """
    batch, prefix_len = prefix.shape
    beams = config.num_beams
    slots = prefix_len + num_steps
    logits, cache = model.prefill(prompt, prompt_valid, slots)
    sequences = jnp.concatenate(
        [prefix.astype(jnp.int32), jnp.full((batch, num_steps), config.pad_id, jnp.int32)], axis=1)
    sequences = jnp.broadcast_to(sequences[:, None], (batch, beams, slots))
    state = BeamState(
        running=sequences,
        running_scores=jnp.where(jnp.arange(beams) == 0, 0.0, _NEG)[None].repeat(batch, 0),
        finished=sequences, finished_scores=jnp.full((batch, beams), _NEG),
        finished_lengths=jnp.zeros((batch, beams), jnp.int32),
        finished_reasons=jnp.full((batch, beams), stopping.LENGTH, jnp.int32),
        is_finished=jnp.zeros((batch, beams), bool), improvable=jnp.ones((batch, 1), bool),
        all_hit=jnp.bool_(False), cache=repeat_rows(cache, beams),
        logits=jnp.repeat(logits, beams, axis=0), index=jnp.int32(prefix_len - 1))
    state = _step(state, prefix_valid, budgets, config, prefix_len)

    def advance(state: BeamState) -> BeamState:
        last = jax.lax.dynamic_index_in_dim(state.running, state.index, axis=2, keepdims=False)
        logits, cache = model.step(last.reshape(-1), state.cache, state.index)
        return _step(dataclasses.replace(state, logits=logits, cache=cache), prefix_valid,
                     budgets, config, prefix_len)

    state = jax.lax.while_loop(lambda s: _continues(s, config) & (s.index < slots - 1),
                               advance, state)
    return BeamOutput(tokens=state.finished, scores=state.finished_scores,
                      lengths=state.finished_lengths, finish=state.finished_reasons)
