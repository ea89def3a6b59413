#!/usr/bin/env bash
# Shakespeare character model (4 layers, 128 wide, RoPE; /work/runs/shakespeare_rope, step 2000):
# validation perplexity/loss with float32 weights and with int8 weights (`--quantize=int8`).
set -euo pipefail
RUN=${RUN:-/work/runs/shakespeare_rope}
OUT=${OUT:-experiments/compression/shakespeare_rope_eval}
uptime
for q in float32 int8; do
  extra=(); [ "$q" = int8 ] && extra=(--quantize=int8)
  start=$(date +%s)
  llmos eval --gin_file="$RUN/config.gin" --checkpoint="$RUN/export" --output_dir="$OUT/$q" \
    --gin.register_lm_task.metric_fns="[@perplexity]" "${extra[@]}"
  echo "$q eval took $(( $(date +%s) - start ))s"
done
uptime
