#!/usr/bin/env bash
# Trains the Tang-poem SentencePiece vocabulary (train split only), then the LM.
# Usage: bash experiments/tang_poems_spm/run.sh [MODEL_DIR] [extra llmos flags]
set -euo pipefail
source "$(dirname "$0")/../../tools/venv.sh" all
cd "$REPO_ROOT"
MODEL_DIR="${1:-runs/tang_poems_spm}"; shift || true
mkdir -p "$MODEL_DIR"
SPM="$MODEL_DIR/vocab/tang_poems_8k"
if [ ! -f "$SPM.model" ]; then
  llmos vocab train --task=tang_poems_bytes --vocab_size=8000 --model_type=unigram --output="$SPM"
fi
llmos train --gin_file=experiments/tang_poems_spm/tang_poems_spm.gin --model_dir="$MODEL_DIR" \
  --gin.SPM_MODEL="'$SPM.model'" "$@"
