#!/bin/bash
# Issue 15, large setup after query-blocked causal attention (2026-12-07, ~17:35 UTC on).
# Run from the repository root with the project's venv active; machine otherwise idle.
set -x
OUT=docs/performance_runs/2026-12-07c
lscpu | grep -E "Model name|^CPU\(s\)" > $OUT/cpu.txt
python benchmarks/compare_train_speed.py --setup=large --reps=6 --block=4 > $OUT/large_1.log 2>&1
python benchmarks/compare_train_speed.py --setup=small --reps=20 --block=10 > $OUT/small.log 2>&1
python benchmarks/compare_train_speed.py --setup=large --reps=6 --block=4 > $OUT/large_2.log 2>&1
python benchmarks/compare_train_speed.py --setup=large --reps=6 --block=4 --reference=jax \
  --jax.attention_query_block=0 > $OUT/ablation_query_block_0.log 2>&1
python benchmarks/compare_train_speed.py --setup=large --reps=6 --block=4 > $OUT/large_3.log 2>&1
python benchmarks/compare_train_speed.py --setup=large --reps=10 > $OUT/large_single_step_turns.log 2>&1
