#!/usr/bin/env python
"""Snapshots an experiment's train and eval splits for hosts without TensorFlow.

Runs seqio here (a host with the data extra), exactly as `llmos train` would
for the same gin files, and saves the materialised splits. On the other host
(a GPU image without TensorFlow), train on them unchanged:

    python tools/snapshot_splits.py \\
        --gin_file=experiments/shakespeare_char/shakespeare_char_gpu.gin --output_dir=DIR
    llmos train --gin_file=experiments/shakespeare_char/shakespeare_char_gpu.gin \\
        --model_dir=... --gin.LMBatches.snapshot_dir="'DIR'"

The batches there equal the batches here, step for step. Gin overrides
(`--gin.NAME=VALUE`) that change the data (sequence length, task, converter)
must be given to both commands; a mismatch is refused when the snapshot is read.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--gin_search_path", action="append", default=[])
    parser.add_argument("--output_dir", required=True, help="folder for LMBatches.snapshot_dir")
    from llmos_jax.cli.gin_config import parse_tool_args

    args, bindings = parse_tool_args(parser, argv)
    return args, bindings


def main(argv=None) -> int:
    args, bindings = _parse_args(sys.argv[1:] if argv is None else argv)

    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.data.lm_batches import LMBatches
    from llmos_jax.errors import UserError
    from llmos_jax.training.train_config import TrainConfig

    try:
        parse_gin(args.gin_file, bindings, args.gin_search_path)
        settings = TrainConfig.from_gin()
        batches = settings.batches
        if not settings.task_name:
            raise UserError("the gin files bind no train.task_name: nothing to snapshot.")
        if getattr(batches, "__name__", None) != "LMBatches":
            raise UserError(f"train.batches={batches!r}: only LMBatches splits can be "
                            "snapshotted.")
        splits = ["train"] + ([settings.eval_split] if settings.eval_every else [])
        for split in splits:
            data = LMBatches(settings.task_name, split, settings.sequence_length,
                             settings.global_batch_size, seed=settings.seed, pack=settings.pack)
            data.save_snapshot(args.output_dir)
            print(f"{split}: {data.num_examples} rows -> {args.output_dir}")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
