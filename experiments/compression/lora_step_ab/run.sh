#!/usr/bin/env bash
# A/B of the MiniLM CoNLL-2003 train step (experiments/compression/README.md, "LoRA step
# time"): 30-step `llmos train` runs of each VARIANT, printing the median 5-step
# step_time after the first interval (`train_vs_nanogpt.llmos_log_figures`). Variants: full, lora, lora_nodrop. To time another
# checkout (e.g. the commit before a change), set PYTHONPATH to it: the `llmos` script
# then imports that llmos_jax.
#   LLMOS_DATA_DIR=/path/to/data OUT=/tmp/lora_ab bash experiments/compression/lora_step_ab/run.sh lora full
set -u
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/lora_step_ab}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
COMMON="--gin.train.num_steps=30 --gin.train.eval_every=1000 --gin.train.checkpoint_every=1000 --gin.train.log_every=5 --gin.train.progress_bar=False"
for variant in "$@"; do
  case $variant in
    full) GIN="--gin_file=experiments/minilm_conll2003/minilm_conll2003.gin" ;;
    lora) GIN="--gin_file=experiments/minilm_conll2003/minilm_conll2003_lora.gin" ;;
    lora_nodrop) GIN="--gin_file=experiments/minilm_conll2003/minilm_conll2003_lora.gin --gin.LoraConfig.dropout=0.0" ;;
    *) echo "unknown variant $variant (full, lora, lora_nodrop)"; exit 2 ;;
  esac
  rm -rf "$OUT/$variant"
  # shellcheck disable=SC2086
  /usr/bin/time -f "$variant: %e s wall %M KB" llmos train $GIN $COMMON \
    --model_dir="$OUT/$variant" > "$OUT/$variant.log" 2>&1
  tail -1 "$OUT/$variant.log"
  python -c "import sys, pathlib; sys.path.insert(0, 'benchmarks')
from train_vs_nanogpt import llmos_log_figures
print('$variant: median step_time over the 5-step intervals after the first: %.0f ms'
      % llmos_log_figures(pathlib.Path('$OUT/$variant'))['median_step_ms'])"
done
