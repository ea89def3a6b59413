#!/usr/bin/env python
"""The small setup's train step in a tight loop: exact (erf) or tanh GELU, with or without biases.

Four variants of the 4 x 128 step (context 64, batch 12, vocabulary 65), each
compiled once, then timed in turns (40 steps per turn, 6 turns, order reversed
every other turn) so background load hits all alike; prints the median ms/step.
nanoGPT's configuration (and `gin/models/gpt_char_small.gin`) is exact GELU
without biases.

    python benchmarks/step_variants_ab.py
"""

from __future__ import annotations

import statistics
import time

# First: it tunes the host allocator before JAX starts (benchmarks/ is on sys.path when run).
from loop_dispatch_ab import build_small_step

import jax  # noqa: E402

STEPS, TURNS = 40, 6
VARIANTS = {"exact_nobias": ("gelu_exact", False), "tanh_nobias": ("gelu", False),
            "tanh_bias": ("gelu", True), "exact_bias": ("gelu_exact", True)}


def build(activation: str, use_bias: bool):
    step, state, make_batch = build_small_step(activation, use_bias)
    batch = make_batch()
    for _ in range(3):
        state, metrics = step(state, batch)
    jax.block_until_ready(state)
    return [step, state, batch]


def main() -> None:
    built = {name: build(*settings) for name, settings in VARIANTS.items()}
    times = {name: [] for name in VARIANTS}
    for turn in range(TURNS):
        for name in (list(VARIANTS) if turn % 2 == 0 else list(VARIANTS)[::-1]):
            step, state, batch = built[name]
            started = time.perf_counter()
            for _ in range(STEPS):
                state, metrics = step(state, batch)
            jax.block_until_ready((state, metrics))
            built[name][1] = state
            times[name].append((time.perf_counter() - started) / STEPS * 1000)
    for name in VARIANTS:
        print(f"{name} median ms/step {statistics.median(times[name]):.1f}",
              [f"{t:.0f}" for t in times[name]])


if __name__ == "__main__":
    main()
