"""A small sampler for previewing a model during and after training.

It recomputes the whole window for every new token, which is fine for the
short samples printed at the end of a run. The KV-cache decoding engine
(greedy, top-k/top-p, beam search) belongs in its own module.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def sample_tokens(graphdef: nnx.GraphDef, params, prompt: Sequence[int], *, max_len: int,
                  max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                  seed: int = 0, eos_id: int | None = None) -> list[int]:
    """Continues `prompt` with up to `max_new_tokens` sampled tokens (the new tokens only).

    `temperature=0` is greedy. The window slides when the text outgrows `max_len`.
    """
    prompt = list(prompt)[-max_len:] or [0]
    generated: list[int] = []
    window = prompt
    key = jax.random.key(seed)
    step_fn = _next_token_fn(graphdef, max_len, float(temperature), top_k)
    while len(generated) < max_new_tokens:
        length = len(window)
        buffer = jnp.zeros((1, max_len), jnp.int32).at[0, :length].set(jnp.asarray(window, jnp.int32))
        key, sub = jax.random.split(key)
        token = int(step_fn(params, buffer, jnp.int32(length), sub))
        generated.append(token)
        if eos_id is not None and token == eos_id:
            break
        window = (window + [token])[-max_len:]
    return generated


@functools.lru_cache(maxsize=8)
def _next_token_fn(graphdef, max_len, temperature, top_k):
    del max_len  # part of the cache key: one compiled function per window size

    @jax.jit
    def next_token(params, buffer, length, key):
        logits = nnx.merge(graphdef, params)(buffer)[0, length - 1]
        if temperature == 0.0:
            return jnp.argmax(logits)
        logits = logits / temperature
        if top_k is not None:
            k = min(top_k, logits.shape[-1])  # a k past the vocabulary keeps every token
            threshold = jax.lax.top_k(logits, k)[0][-1]
            logits = jnp.where(logits < threshold, -jnp.inf, logits)
        return jax.random.categorical(key, logits)

    return next_token
