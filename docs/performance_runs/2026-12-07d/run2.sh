#!/bin/bash
# After the -O1 initialiser compile (commit 7039310), ~20:25 UTC on. Repository root, venv active, idle.
set -x
OUT=docs/performance_runs/2026-12-07d
python benchmarks/compare_train_speed.py --setup=large --reps=6 --block=4 --worker_pairs=5 \
  --json=$OUT/large_pairs.json > $OUT/large_pairs.log 2>&1
LLMOS_DATA_DIR=/work/shared/data python benchmarks/train_vs_nanogpt.py /tmp/nanogpt --repeats=2 --cold \
  --output=$OUT/vs_nanogpt_cold2.json > $OUT/vs_nanogpt_cold2.log 2>&1
LLMOS_DATA_DIR=/work/shared/data python benchmarks/train_vs_nanogpt.py /tmp/nanogpt --repeats=2 \
  --output=$OUT/vs_nanogpt_warm2.json > $OUT/vs_nanogpt_warm2.log 2>&1
