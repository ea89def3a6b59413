#!/usr/bin/env bash
# Installs what it needs, then trains the default experiment (no network, no data
# files): a byte-level GPT on this Python's standard library. Extra flags are
# passed to `llmos train`, e.g. --gin.train.num_steps=200.
set -euo pipefail
source "$(dirname "$0")/venv.sh" all
MODEL_DIR="${MODEL_DIR:-$REPO_ROOT/runs/quickstart}"
cd "$REPO_ROOT"
llmos train --gin_file=experiments/quickstart/quickstart.gin --model_dir="$MODEL_DIR" "$@"
echo "[llmos] done: checkpoints, TensorBoard events, metrics.jsonl and config.gin are in $MODEL_DIR" >&2
