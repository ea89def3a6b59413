#!/usr/bin/env python
"""Times the training step of a gin experiment (a benchmark, not a test).

Builds exactly the model, mesh, optimizer and jit-compiled step that
`llmos train` would build from the same gin files, feeds it synthetic token
batches of the configured shape (so data loading is not measured), and prints
the median step time, tokens/s, MFU against this machine's *measured* matmul
peak, and peak memory.

    python tools/bench_train.py --gin_file=experiments/quickstart/quickstart.gin \
        [--gin.train.global_batch_size=32] [--steps=20] [--warmup=3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--gin_search_path", action="append", default=[])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compile, caches)")
    parser.add_argument("--peak_size", type=int, default=None,
                        help="matmul size for the peak measurement (default 2048 on CPU, 8192 else)")
    from llmos_jax.cli.gin_config import parse_tool_args

    args, bindings = parse_tool_args(parser, argv)
    return args, bindings


def main(argv=None) -> int:
    args, bindings = _parse_args(sys.argv[1:] if argv is None else argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.models.decoder import DecoderLM
    from llmos_jax.models.flops import decoder_training_flops_per_token
    from llmos_jax.monitoring.flops import mfu
    from llmos_jax.monitoring.peak_flops import measure_matmul_peak
    from llmos_jax.partitioning import Layout
    from llmos_jax.training.optimizers import current_learning_rate
    from llmos_jax.training.train_config import TrainConfig
    from llmos_jax.training.train_state import init_train_state, state_shardings
    from llmos_jax.objectives.model_building import model_spec
    from llmos_jax.training.train_step import (
        INPUTS,
        TARGETS,
        WEIGHTS,
        StepConfig,
        jit_train_step,
        make_train_step,
    )

    parse_gin(args.gin_file, bindings, args.gin_search_path)
    settings = TrainConfig.from_gin()
    config = settings.model_config
    batch_size, length = settings.global_batch_size, settings.sequence_length
    layout = Layout.build(settings.mesh_config, settings.axis_rules)
    mesh = layout.mesh

    spec = model_spec(lambda rngs: DecoderLM(config, rngs=rngs, shard=layout.activation_sharder),
                      settings.seed)
    tx = settings.optimizer_factory()
    shardings = state_shardings(spec, tx, layout)
    state = init_train_state(spec, tx, shardings)
    step_config = StepConfig(microbatches=settings.microbatches, z_loss=settings.z_loss,
                             use_dropout=config.dropout_rate > 0)
    step_fn = jit_train_step(make_train_step(spec, tx, current_learning_rate, step_config,
                                             layout), shardings, [INPUTS, TARGETS, WEIGHTS],
                             layout)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, (batch_size, length + 1), dtype=np.int32)
    local_rows = batch_size // jax.process_count()
    host_batch = {INPUTS: tokens[:local_rows, :-1], TARGETS: tokens[:local_rows, 1:],
                  WEIGHTS: np.ones((local_rows, length), np.float32)}
    batch = layout.global_batch(host_batch)

    compile_start = time.perf_counter()
    for _ in range(args.warmup):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    warmup_seconds = time.perf_counter() - compile_start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)

    median = statistics.median(times)
    tokens_per_second = batch_size * length / median
    flops_per_token = decoder_training_flops_per_token(
        num_layers=config.num_layers, embed_dim=config.embed_dim, num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads, head_dim=config.head_dim, mlp_dim=config.mlp_dim,
        vocab_size=config.vocab_size, seq_len=length, gated_mlp=config.gated_mlp)
    on_cpu = jax.default_backend() == "cpu"
    peak_size = args.peak_size or (2048 if on_cpu else 8192)
    per_device_peak = measure_matmul_peak(config.compute_dtype, size=peak_size)
    # Simulated CPU devices share one host's cores: the measured peak is the host's.
    peak = per_device_peak if on_cpu else per_device_peak * jax.device_count()
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        memory = f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB peak on {device.device_kind}"
    else:
        memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB host max RSS"

    params = sum(x.size for x in jax.tree.leaves(state.params))
    print(f"model: {params / 1e6:.2f}M params, {config.num_layers} layers x {config.embed_dim}, "
          f"dtype {config.dtype}; batch {batch_size} x {length} tokens; "
          f"mesh {dict(mesh.shape)} on {jax.device_count()} {device.platform} device(s)")
    print(f"compile + {args.warmup} warm-up steps: {warmup_seconds:.1f} s")
    print(f"median step time: {median * 1e3:.1f} ms over {args.steps} steps "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})")
    print(f"tokens/s: {tokens_per_second:,.0f}")
    print(f"model FLOPs/token: {flops_per_token / 1e6:.2f} M (6N + causal attention)")
    print(f"measured matmul peak: {peak / 1e9:,.1f} GFLOP/s "
          f"({jnp.dtype(config.compute_dtype).name}, {peak_size}^2)")
    print(f"MFU: {100 * mfu(flops_per_token=flops_per_token, tokens_per_second=tokens_per_second, peak_flops_per_second=peak):.1f}%")
    print(f"memory: {memory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
