"""Text samples for previewing a model during and after training.

A thin wrapper over `DecodingEngine.generate` that keeps going past the
model's `max_len`: when the cache is full, the last half window becomes the
prompt of the next chunk (a strided sliding window). The chunks share one
engine; pass a kept `engine` to reuse its programs across calls.
"""

from __future__ import annotations

from typing import Sequence

from flax import nnx

from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.decoding_engine import DecodingEngine
from llmos_jax.inference.stopping import EOS, FINISH_NAMES


def sample_tokens(graphdef: nnx.GraphDef, params, prompt: Sequence[int], *, max_len: int,
                  max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                  seed: int = 0, eos_id: int | None = None,
                  engine: DecodingEngine | None = None) -> list[int]:
    """Continues `prompt` with up to `max_new_tokens` sampled tokens (the new tokens only).

    `temperature=0` is greedy. Past `max_len` positions the context slides.
    `engine`: an engine of the same model graph (e.g. kept by the trainer
    across previews) whose compiled programs are reused with `params`;
    None: a new engine for this call.
    """
    if engine is None:
        engine = DecodingEngine(nnx.merge(graphdef, params), params)
    else:
        engine = engine.with_params(params)
    window = list(prompt)[-(max_len - 1):] or [0]
    generated: list[int] = []
    chunk = 0
    while len(generated) < max_new_tokens:
        config = DecodeConfig(
            method="greedy" if temperature == 0 else "sample",
            temperature=temperature or 1.0, top_k=top_k, eos_id=eos_id, max_cache_len=max_len,
            max_new_tokens=min(max_new_tokens - len(generated), max_len - len(window)))
        result = engine.generate([window], config, seeds=[seed + 104729 * chunk])[0]
        generated.extend(result.tokens)
        if result.completions[0].finish_reason == FINISH_NAMES[EOS]:
            break
        window = (window + list(result.tokens))[-(max_len // 2):]
        chunk += 1
    return generated
