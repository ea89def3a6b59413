"""Scoring: the log-likelihood a model gives to given targets after given prompts.

A one-call convenience over `DecodingEngine.score` (one teacher-forced
forward pass per batch, no cache): it builds an engine for `model`/`params`
and drops it, so its program is compiled for this call only. Code that
scores repeatedly keeps one `DecodingEngine`.
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx

from llmos_jax.inference.completions import TargetScore
from llmos_jax.inference.decoding_engine import DecodingEngine

__all__ = ["TargetScore", "score"]


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
    return DecodingEngine(model, params).score(prompts, targets, decoder_start_id=decoder_start_id,
                                               pad_id=pad_id)
