"""Scoring: the log-likelihood a model gives to given targets after given prompts.

One teacher-forced forward pass per batch (no cache needed): for a
decoder-only model the prompt and target are concatenated and the target
tokens' log-probabilities summed; for an encoder-decoder the prompt is the
encoder input and the decoder reads the target shifted right after the
start token. A request that does not fit the model is reported with its
own error; the others are scored.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmos_jax.inference.decoding_model import is_encoder_decoder

_LENGTH_BUCKET = 8


@dataclasses.dataclass(frozen=True)
class TargetScore:
    """Sum of the target tokens' log-probabilities, their count, or an error.

    `num_correct` counts target tokens that are the model's argmax (for token
    accuracy); None when the request failed.
    """

    log_likelihood: float | None
    num_tokens: int
    error: str | None = None
    num_correct: int | None = None


def score(model: nnx.Module, params: Any, prompts: Sequence[Sequence[int]],
          targets: Sequence[Sequence[int]], *, decoder_start_id: int = 0,
          pad_id: int = 0) -> list[TargetScore]:
    """log p(target | prompt) for each pair, under a `DecoderLM` or `EncoderDecoderLM`.

    Args:
      model: The model (its weights are used when `params` is None).
      params: Pure dict or `nnx.State` of parameters, or None.
      prompts: Token ids; the encoder input for encoder-decoders.
      targets: Token ids to score.
      decoder_start_id: First decoder input of encoder-decoders (T5: 0).
      pad_id: Fills padding.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"score got {len(prompts)} prompts and {len(targets)} targets")
    if params is None:
        params = nnx.state(model, nnx.Param)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    encoder_decoder = is_encoder_decoder(model)
    max_len = model.config.max_len
    results: list[TargetScore | None] = [None] * len(prompts)
    good = []
    for i, (prompt, target) in enumerate(zip(prompts, targets)):
        # A decoder-only model reads prompt + target minus the last target token.
        length = len(prompt) + (0 if encoder_decoder else len(target) - 1)
        if not encoder_decoder and not prompt:
            results[i] = TargetScore(None, len(target), f"request {i}: the prompt is empty; the "
                                     "first target token needs context (e.g. a BOS id).")
        elif length > max_len or (encoder_decoder and len(target) > max_len):
            results[i] = TargetScore(None, len(target), f"request {i}: {length} tokens do not fit "
                                     f"the model's max_len={max_len}; shorten the request.")
        else:
            good.append(i)
    if not good:
        return results  # type: ignore[return-value]
    batch = len(good)
    if encoder_decoder:
        enc_width = _round_up(max(len(prompts[i]) for i in good))
        dec_width = _round_up(max(len(targets[i]) for i in good) or 1)
        encoder = np.full((batch, enc_width), pad_id, np.int32)
        encoder_valid = np.zeros((batch, enc_width), np.int32)
        decoder = np.full((batch, dec_width), pad_id, np.int32)
        labels = np.full((batch, dec_width), pad_id, np.int32)
        weights = np.zeros((batch, dec_width), np.float32)
        for row, i in enumerate(good):
            prompt, target = list(prompts[i]), list(targets[i])
            encoder[row, :len(prompt)], encoder_valid[row, :len(prompt)] = prompt, 1
            decoder[row, :len(target)] = ([decoder_start_id] + target)[:len(target)]
            labels[row, :len(target)], weights[row, :len(target)] = target, 1.0
        sums = _encoder_decoder_fn(nnx.graphdef(model))(params, encoder, encoder_valid, decoder,
                                                        labels, weights)
    else:
        width = _round_up(max(len(prompts[i]) + len(targets[i]) - 1 for i in good))
        inputs = np.full((batch, width), pad_id, np.int32)
        labels = np.full((batch, width), pad_id, np.int32)
        weights = np.zeros((batch, width), np.float32)
        for row, i in enumerate(good):
            sequence = list(prompts[i]) + list(targets[i])
            inputs[row, :len(sequence) - 1] = sequence[:-1]
            labels[row, :len(sequence) - 1] = sequence[1:]
            weights[row, len(prompts[i]) - 1:len(sequence) - 1] = 1.0
        sums = _decoder_fn(nnx.graphdef(model))(params, inputs, labels, weights)
    sums, correct = (np.asarray(x) for x in jax.device_get(sums))
    for row, i in enumerate(good):
        results[i] = TargetScore(float(sums[row]), len(targets[i]),
                                 num_correct=int(round(float(correct[row]))))
    return results  # type: ignore[return-value]


def _round_up(n: int) -> int:
    return -(-max(n, 1) // _LENGTH_BUCKET) * _LENGTH_BUCKET


def _target_log_likelihood(logits, labels, weights):
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(picked * weights, axis=-1), jnp.sum(hits * weights, axis=-1)


@functools.lru_cache(maxsize=8)
def _decoder_fn(graphdef):
    @jax.jit
    def run(params, inputs, labels, weights):
        logits = nnx.merge(graphdef, params)(inputs)
        return _target_log_likelihood(logits, labels, weights)
    return run


@functools.lru_cache(maxsize=8)
def _encoder_decoder_fn(graphdef):
    @jax.jit
    def run(params, encoder, encoder_valid, decoder, labels, weights):
        logits = nnx.merge(graphdef, params)(encoder, decoder, encoder_segment_ids=encoder_valid)
        return _target_log_likelihood(logits, labels, weights)
    return run
