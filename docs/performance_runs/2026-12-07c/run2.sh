#!/bin/bash
# After the never-trim allocator fix (2026-12-07, ~18:05 UTC on). Repository root, venv active, idle.
set -x
OUT=docs/performance_runs/2026-12-07c
for i in 1 2 3; do
  python benchmarks/compare_train_speed.py --setup=large --reps=6 --block=4 > $OUT/after_trim_fix_large_$i.log 2>&1
done
LLMOS_DATA_DIR=/work/shared/data python benchmarks/train_vs_nanogpt.py /tmp/nanogpt --repeats=1 \
  --output=$OUT/after_trim_fix_vs_nanogpt.json > $OUT/after_trim_fix_vs_nanogpt.log 2>&1
