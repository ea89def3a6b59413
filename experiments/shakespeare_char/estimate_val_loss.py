#!/usr/bin/env python
"""Validation loss of a trained shakespeare_char run, with both estimators side by side.

`llmos train` reports the loss over the whole validation split. nanoGPT's README
number comes from `estimate_loss()`: the mean of `eval_iters` (20) batches of 12
windows of 64 characters at random offsets of the split. This script reads a run's
exported weights (`<model_dir>/export`) and prints:

  * the whole-split loss, in consecutive windows of the context length (every
    character but the first is a target once; no EOS) -- the protocol of
    `benchmarks/torch_shakespeare.py`, so the two are comparable;
  * `--draws` independent nanoGPT-style 20-batch estimates on validation
    (and train): mean, spread, and how many are <= 1.88.

    python experiments/shakespeare_char/estimate_val_loss.py \
        --gin_file=experiments/shakespeare_char/shakespeare_char_cpu.gin \
        --model_dir=runs/shakespeare_char_cpu [--gin.NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--eval_iters", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--seed", type=int, default=12345, help="seeds the random windows")
    parser.add_argument("--json", help="also write the results to this file")
    from llmos_jax.cli.gin_config import parse_tool_args

    args, bindings = parse_tool_args(parser, argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import seqio
    from flax import nnx

    import gin
    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.data.catalog import BUILTIN_TASKS, SHAKESPEARE, nanogpt_char_split
    from llmos_jax.data.data_dir import resolve_data_path
    from llmos_jax.models import DecoderLM
    from llmos_jax.checkpoints.checkpointer import load_exported_params

    parse_gin(args.gin_file, bindings)
    config = gin.get_bindings("train")["model_config"]
    context = gin.get_bindings("train")["sequence_length"]
    if SHAKESPEARE not in seqio.TaskRegistry.names():
        BUILTIN_TASKS[SHAKESPEARE]()
    vocabulary = seqio.get_mixture_or_task(SHAKESPEARE).output_features["targets"].vocabulary
    text = resolve_data_path("tinyshakespeare/input.txt", "data").read_text(encoding="utf-8")
    splits = {name: np.asarray(vocabulary.encode(part), np.int32)
              for name, part in nanogpt_char_split(text, 0.9).items()}

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0))),
                            nnx.Param)
    params = load_exported_params(os.path.join(args.model_dir, "export"))

    @jax.jit
    def nll_sum(params, inputs, targets):
        logits = nnx.merge(graphdef, params)(inputs)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.sum(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))

    def full_split(data: np.ndarray, rows: int = 256) -> float:
        starts = np.arange(0, len(data) - 1, context)
        full = starts[starts + context + 1 <= len(data)]
        total, count = 0.0, 0
        for i in range(0, len(full), rows):
            s = full[i:i + rows]
            window = np.stack([data[o:o + context + 1] for o in s])
            total += float(nll_sum(params, window[:, :-1], window[:, 1:]))
            count += window[:, 1:].size
        for o in starts[len(full):]:
            window = data[o:][None]
            total += float(nll_sum(params, window[:, :-1], window[:, 1:]))
            count += window.shape[1] - 1
        return total / count

    rng = np.random.default_rng(args.seed)

    def estimate(data: np.ndarray) -> float:
        losses = []
        for _ in range(args.eval_iters):
            offsets = rng.integers(0, len(data) - context, size=args.batch_size)
            window = np.stack([data[o:o + context + 1] for o in offsets])
            losses.append(float(nll_sum(params, window[:, :-1], window[:, 1:])) / window[:, 1:].size)
        return float(np.mean(losses))

    result = {"model_dir": args.model_dir, "val_full": full_split(splits["validation"]),
              "train_full": full_split(splits["train"])}
    for split, name in (("validation", "val"), ("train", "train")):
        draws = [estimate(splits[split]) for _ in range(args.draws)]
        result[f"{name}_estimates"] = {
            "n": len(draws), "mean": statistics.mean(draws),
            "stdev": statistics.stdev(draws) if len(draws) > 1 else 0.0,
            "min": min(draws), "max": max(draws),
            "share_le_1.88": sum(d <= 1.88 for d in draws) / len(draws)}
    print(f"{args.model_dir}: full val {result['val_full']:.4f}, full train "
          f"{result['train_full']:.4f}")
    for name in ("val", "train"):
        d = result[f"{name}_estimates"]
        print(f"  {d['n']} nanoGPT-style {args.eval_iters}x{args.batch_size}x{context} {name} "
              f"estimates: mean {d['mean']:.4f}, stdev {d['stdev']:.4f}, range "
              f"{d['min']:.4f}-{d['max']:.4f}, {100 * d['share_le_1.88']:.0f}% <= 1.88")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
