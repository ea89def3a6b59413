#!/usr/bin/env python
"""Does the training loop's way of driving the step cost time? Four loops, alternating.

The small setup's jitted train step (4 layers x 128, context 64, batch 12,
vocabulary 65; the step `llmos train` runs) is driven for N steps in four
ways, in turns in one process so background load hits all alike:

- `fixed_async`: the same batch every step, no waiting between steps (JAX's
  asynchronous dispatch queues the next step while one runs);
- `fixed_block`: the same, but waiting for each step's metrics (as a loop
  that fetches metrics every step does);
- `prefetch_async` / `prefetch_block`: a fresh batch per step, made and placed
  on a background thread while the step runs (as `trainer._loop` does).

Prints the median milliseconds per step of each. If the four agree, the loop's
structure (prefetch thread, per-step synchronisation) is not where the time
goes, and the in-loop step should equal the isolated one.

    python benchmarks/loop_dispatch_ab.py [STEPS_PER_TURN] [TURNS]
"""

from __future__ import annotations

import concurrent.futures
import statistics
import sys
import time

from llmos_jax import runtime

runtime.configure_host_runtime()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from llmos_jax.models import DecoderLM, TransformerConfig  # noqa: E402
from llmos_jax.objectives.model_building import model_spec  # noqa: E402
from llmos_jax.partitioning import DEFAULT_RULES, Layout, MeshConfig, build_mesh  # noqa: E402
from llmos_jax.training.optimizers import current_learning_rate, make_optimizer  # noqa: E402
from llmos_jax.training.train_state import init_train_state, state_shardings  # noqa: E402
from llmos_jax.training.train_step import (INPUTS, TARGETS, WEIGHTS, StepConfig,  # noqa: E402
                                           jit_train_step, make_train_step)

BATCH, CONTEXT, VOCAB = 12, 64, 65
MODES = ("fixed_async", "fixed_block", "prefetch_async", "prefetch_block")


def build_small_step(activation: str = "gelu", use_bias: bool = True):
    """The small setup's jitted train step, its initial state, and a batch maker."""
    config = TransformerConfig(
        vocab_size=VOCAB, num_layers=4, embed_dim=128, num_heads=4, max_len=CONTEXT,
        position_embedding="learned", norm="layernorm", norm_eps=1e-5,
        mlp_activation=activation, use_bias=use_bias, tie_embeddings=True, dropout_rate=0.0)
    layout = Layout(build_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]), DEFAULT_RULES)
    spec = model_spec(lambda rngs: DecoderLM(config, rngs=rngs,
                                             shard=layout.activation_sharder), 0)
    tx = make_optimizer(name="adamw", learning_rate=1e-3, b1=0.9, b2=0.99, eps=1e-8,
                        weight_decay=0.1, grad_clip_norm=1.0)
    shardings = state_shardings(spec, tx, layout)
    state = init_train_state(spec, tx, shardings)
    step_fn = jit_train_step(make_train_step(spec, tx, current_learning_rate, StepConfig(), layout),
                             shardings, [INPUTS, TARGETS, WEIGHTS], layout)
    rng = np.random.default_rng(0)

    def make_batch(_step=None):
        tokens = rng.integers(0, VOCAB, (BATCH, CONTEXT + 1), dtype=np.int32)
        return layout.global_batch({INPUTS: tokens[:, :-1], TARGETS: tokens[:, 1:],
                                    WEIGHTS: np.ones((BATCH, CONTEXT), np.float32)})

    return step_fn, state, make_batch


def main(steps: int, turns: int) -> None:
    step_fn, state, make_batch = build_small_step()
    fixed = make_batch(0)
    for _ in range(3):
        state, metrics = step_fn(state, fixed)
    jax.block_until_ready(state)
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def run(mode):
        nonlocal state
        started = time.perf_counter()
        upcoming = pool.submit(make_batch, 0)
        for i in range(steps):
            if mode.startswith("prefetch"):
                batch = upcoming.result()
                upcoming = pool.submit(make_batch, i + 1)
            else:
                batch = fixed
            state, metrics = step_fn(state, batch)
            if mode.endswith("block"):
                jax.block_until_ready(metrics)
        jax.block_until_ready((state, metrics))
        return (time.perf_counter() - started) / steps * 1000

    times = {mode: [] for mode in MODES}
    for turn in range(turns):
        for mode in (MODES if turn % 2 == 0 else MODES[::-1]):
            times[mode].append(run(mode))
    for mode in MODES:
        print(f"{mode} median ms/step {statistics.median(times[mode]):.1f}",
              [f"{t:.0f}" for t in times[mode]])


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50, int(sys.argv[2]) if len(sys.argv) > 2 else 4)
