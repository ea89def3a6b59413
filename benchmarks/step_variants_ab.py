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

BATCH, CONTEXT, VOCAB, STEPS, TURNS = 12, 64, 65, 40, 6
VARIANTS = {"exact_nobias": ("gelu_exact", False), "tanh_nobias": ("gelu", False),
            "tanh_bias": ("gelu", True), "exact_bias": ("gelu_exact", True)}


def build(activation: str, bias: bool):
    config = TransformerConfig(
        vocab_size=VOCAB, num_layers=4, embed_dim=128, num_heads=4, max_len=CONTEXT,
        position_embedding="learned", norm="layernorm", norm_eps=1e-5, mlp_activation=activation,
        use_bias=bias, tie_embeddings=True, dropout_rate=0.0)
    layout = Layout(build_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]), DEFAULT_RULES)
    spec = model_spec(lambda rngs: DecoderLM(config, rngs=rngs,
                                             shard=layout.activation_sharder), 0)
    tx = make_optimizer(name="adamw", learning_rate=1e-3, b1=0.9, b2=0.99, eps=1e-8,
                        weight_decay=0.1, grad_clip_norm=1.0)
    shardings = state_shardings(spec, tx, layout)
    state = init_train_state(spec, tx, shardings)
    step = jit_train_step(make_train_step(spec, tx, current_learning_rate, StepConfig(), layout),
                          shardings, [INPUTS, TARGETS, WEIGHTS], layout)
    tokens = np.random.default_rng(0).integers(0, VOCAB, (BATCH, CONTEXT + 1), dtype=np.int32)
    batch = layout.global_batch({INPUTS: tokens[:, :-1], TARGETS: tokens[:, 1:],
                                 WEIGHTS: np.ones((BATCH, CONTEXT), np.float32)})
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
