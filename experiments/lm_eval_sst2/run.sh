#!/usr/bin/env bash
# The whole comparison, as recorded in RESULTS.md: bash experiments/lm_eval_sst2/run.sh /tmp/sst2_cmp
set -euo pipefail
OUT=${1:-/tmp/sst2_cmp}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
SCRIPT=experiments/lm_eval_sst2/compare.py
[ -d "$OUT/hf_model" ] || python $SCRIPT prepare "$OUT"
for SHOTS in 0 4; do
  uptime
  time python $SCRIPT ours "$OUT" --shots $SHOTS
  time lm_eval --model hf --model_args "pretrained=$OUT/hf_model,dtype=float32" \
    --tasks sst2_llmos_${SHOTS}shot --include_path "$OUT/tasks" --num_fewshot 0 \
    --batch_size 16 --device cpu --log_samples --output_path "$OUT/lm_eval_${SHOTS}shot"
  python $SCRIPT compare "$OUT" --shots $SHOTS
done
