"""`generate`: prompts in, n-best completions (token ids, scores, texts) out.

A one-call convenience over `DecodingEngine`: it builds an engine for
`model`/`params`, decodes, and drops it, so its programs are compiled for
this call only. Code that decodes more than once with a model (batch
inference, evaluation, benchmarks, a server) builds one `DecodingEngine`
and keeps it; see `decoding_engine` for batching, padding and errors.
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx

from llmos_jax.inference.completions import RequestResult
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.decoding_engine import DecodingEngine, Prompt, Vocabulary

__all__ = ["Prompt", "Vocabulary", "generate"]


def generate(model: nnx.Module, params: Any, prompts: Sequence[Prompt], config: DecodeConfig, *,
             vocabulary: Vocabulary | None = None, seeds: Sequence[int] | None = None,
             max_batch_size: int | None = None) -> list[RequestResult]:
    """Continues each prompt with `config`'s method; one `RequestResult` per prompt.

    Args:
      model: A `DecoderLM` or `EncoderDecoderLM` (its graph; its weights are
        used when `params` is None).
      params: Parameters as a pure dict or `nnx.State` (e.g. a train state's
        `params`, possibly sharded), or None.
      prompts: Token-id sequences, or strings when `vocabulary` is given. For
        encoder-decoders, the encoder input.
      config: The decoding method and its settings (used as given).
      vocabulary: Encodes string prompts and decodes completions to text.
      seeds: Per-request sampling seeds (default `config.seed + index`).
      max_batch_size: Decode at most this many requests at once.

    Raises:
      UserError: For settings the model cannot satisfy (e.g. more beams than
        vocabulary entries). Per-request problems are reported in the results.
    """
    engine = DecodingEngine(model, params, vocabulary=vocabulary)
    return engine.generate(prompts, config, seeds=seeds, max_batch_size=max_batch_size)
