#!/usr/bin/env bash
# LoRA r=8 on all-MiniLM-L6-v2 (issue 17), ours against Hugging Face peft + PyTorch, run
# in turns so that machine load falls on both sides alike: SST-2 at seeds $SEEDS, then
# CoNLL-2003 at seeds $CONLL_SEEDS. Ours: llmos train with the *_lora.gin files (adapters
# on attention + MLP, alpha 16, dropout 0.1, the fresh head trained in full, lr 5e-4; the
# data, batches and schedule of the full fine-tunes in experiments/minilm_*). Theirs:
# benchmarks/hf_finetune_minilm.py --lora_rank 8 --lr 5e-4 (peft LoRA on the same modules).
# Each command's wall time, CPU time and peak RSS (GNU time) and the load before and after
# land in $OUT/<run>.log.
set -euo pipefail
OUT=${OUT:-/work/runs/minilm_lora}
SEEDS=${SEEDS:-"0 1 2"}
CONLL_SEEDS=${CONLL_SEEDS:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

source "$(dirname "$0")/timed.sh"

for seed in $SEEDS; do
  timed "ours_sst2_seed$seed" llmos train --gin_file=experiments/minilm_sst2/minilm_sst2_lora.gin \
    --model_dir="$OUT/ours_sst2_seed$seed" --gin.train.seed="$seed" --gin.train.progress_bar=False
  timed "peft_sst2_seed$seed" python benchmarks/hf_finetune_minilm.py --task sst2 --lora_rank 8 \
    --lr 5e-4 --seed "$seed" --out "$OUT/peft_sst2_seed$seed.json"
done
for seed in $CONLL_SEEDS; do
  timed "ours_conll_seed$seed" llmos train \
    --gin_file=experiments/minilm_conll2003/minilm_conll2003_lora.gin \
    --model_dir="$OUT/ours_conll_seed$seed" --gin.train.seed="$seed" --gin.train.progress_bar=False
  timed "ours_conll_test_seed$seed" llmos eval \
    --gin_file=experiments/minilm_conll2003/minilm_conll2003_lora.gin \
    --checkpoint="$OUT/ours_conll_seed$seed" --split=test
  timed "peft_conll_seed$seed" python benchmarks/hf_finetune_minilm.py --task conll --steps 300 \
    --lora_rank 8 --lr 5e-4 --seed "$seed" --out "$OUT/peft_conll_seed$seed.json"
done
