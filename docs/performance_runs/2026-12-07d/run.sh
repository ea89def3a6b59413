#!/bin/bash
# Session of 2026-12-07 evening (from ~20:10 UTC). Repository root, venv active, machine otherwise idle.
set -x
OUT=docs/performance_runs/2026-12-07d
lscpu > $OUT/cpu.txt
for i in 1 2 3 4; do
  python benchmarks/compare_train_speed.py --setup=large --reps=8 --block=4 > $OUT/large_$i.log 2>&1
done
python benchmarks/compare_train_speed.py --setup=small --reps=20 --block=10 > $OUT/small.log 2>&1
LLMOS_DATA_DIR=/work/shared/data python benchmarks/train_vs_nanogpt.py /tmp/nanogpt --repeats=1 \
  --output=$OUT/vs_nanogpt.json > $OUT/vs_nanogpt.log 2>&1
# Run by hand right after (19:43), a first run's cost: every llmos run gets an empty compilation cache.
LLMOS_DATA_DIR=/work/shared/data python benchmarks/train_vs_nanogpt.py /tmp/nanogpt --repeats=1 --cold \
  --output=$OUT/vs_nanogpt_cold.json > $OUT/vs_nanogpt_cold.log 2>&1
