#!/bin/bash
# One first run (empty compilation cache) of the issue's 2,000-step `llmos train` job from the
# source tree TREE, printing wall time, the in-loop median step and peak memory (GNU time).
# usage: ab_cold.sh TREE TAG [STEPS]   (the virtualenv active; TREE's llmos_jax is imported)
TREE=$1; TAG=$2; STEPS=${3:-2000}
D=/tmp/abrun_$TAG; rm -rf $D /tmp/abcache_$TAG
cd $TREE
s=$(date +%s.%N)
PYTHONPATH=$TREE LLMOS_COMPILATION_CACHE=/tmp/abcache_$TAG LLMOS_DATA_DIR=${LLMOS_DATA_DIR:-/work/shared/data} \
  /usr/bin/time -f "%M KB peak" python -m llmos_jax train \
  --gin_file=experiments/shakespeare_char/shakespeare_char_cpu.gin --model_dir=$D \
  --gin.train.num_steps=$STEPS --gin.warmup_then_decay.decay_steps=$STEPS \
  --gin.warmup_then_decay.warmup_steps=100 --gin.train.eval_every=$STEPS --gin.train.eval_batches=20 \
  --gin.train.checkpoint_every=$STEPS --gin.train.progress_bar=False \
  --gin.train.sample_new_tokens=0 > /tmp/abrun_$TAG.log 2>&1
e=$(date +%s.%N)
python - $D $TAG $s $e <<'PY'
import json, sys, statistics
recs = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
tr = [r for r in recs if r.get("split") == "train" and "step_time" in r]
print(sys.argv[2], "wall %.1f s" % (float(sys.argv[4]) - float(sys.argv[3])),
      "median step %.1f ms" % (1000 * statistics.median(r["step_time"] for r in tr[1:])),
      "intervals", len(tr), end=", ")
PY
tail -1 /tmp/abrun_$TAG.log
