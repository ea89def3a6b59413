#!/bin/bash
# Session of 2026-12-07 night (22:15-23:53 UTC). Repository root, venv active, machine otherwise idle.
# A first run (empty compilation cache, --cold) and a repeated run of the whole command against nanoGPT,
# after the compiler's heap fragments are retired (llmos_jax.runtime.retire_heap_fragments).
set -x
OUT=docs/performance_runs/2026-12-08
lscpu > $OUT/cpu.txt
LLMOS_DATA_DIR=/work/shared/data python benchmarks/train_vs_nanogpt.py /tmp/nanogpt --repeats=3 --cold \
  --output=$OUT/vs_nanogpt_cold.json > $OUT/vs_nanogpt_cold.log 2>&1
LLMOS_DATA_DIR=/work/shared/data python benchmarks/train_vs_nanogpt.py /tmp/nanogpt --repeats=1 \
  --output=$OUT/vs_nanogpt_warm.json > $OUT/vs_nanogpt_warm.log 2>&1
# The step alone: compiled in the process, compiled then fragments retired, loaded from the cache.
python benchmarks/compiled_step_heap.py --pairs=3 --output=$OUT/compiled_step_heap.json \
  > $OUT/compiled_step_heap.log 2>&1
# This change alone: first runs of the whole job from the tree before it (513eb31, a git worktree
# at /tmp/old_tree) and after it, alternating.
for i in 1 2 3; do
  bash $OUT/ab_cold.sh /tmp/old_tree before; bash $OUT/ab_cold.sh $PWD after
done > $OUT/ab_cold.log 2>&1
# With the final version of retire_heap_fragments (00:22 UTC): first runs against nanoGPT again,
# and the small step against PyTorch on tonight's (slower) machine.
LLMOS_DATA_DIR=/work/shared/data python benchmarks/train_vs_nanogpt.py /tmp/nanogpt --repeats=2 --cold \
  --output=$OUT/vs_nanogpt_cold_final.json > $OUT/vs_nanogpt_cold_final.log 2>&1
python benchmarks/compare_train_speed.py --setup=small --reps=20 --block=10 > $OUT/small.log 2>&1
python benchmarks/compare_train_speed.py --setup=large --reps=6 --block=4 --worker_pairs=3 \
  > $OUT/large_pairs.log 2>&1
