#!/usr/bin/env bash
# Loop overhead (issue 15): median step inside `llmos train` on the issue's job vs the
# isolated step of the same model and batch, timed in a tight loop; alternated twice.
cd /work/main; source .venv/bin/activate
export LLMOS_DATA_DIR=/work/shared/data
for turn in 1 2; do
  rm -rf /work/runs/perf15b/job$turn
  /usr/bin/time -f "llmos train turn $turn: %e s wall, %M KB peak" llmos train --gin_file=experiments/shakespeare_char/shakespeare_char_cpu.gin --model_dir=/work/runs/perf15b/job$turn --gin.train.eval_every=2000 --gin.train.eval_batches=20 --gin.train.checkpoint_every=2000 --gin.train.progress_bar=False --gin.train.sample_new_tokens=0 > /work/runs/perf15b/job$turn.log 2>&1
  tail -1 /work/runs/perf15b/job$turn.log
  python - /work/runs/perf15b/job$turn/metrics.jsonl <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
t = [r["step_time"] for r in rows if r.get("split") == "train" and "step_time" in r]
print("in-loop step_time per 50-step interval (ms):", [round(x * 1000, 1) for x in t])
print("median excluding the first interval (compilation) and the last (eval, checkpoint): %.2f ms" % (statistics.median(t[1:-1]) * 1000))
PY
  python benchmarks/compare_train_speed.py --setup=small --reps=20 --block=10 --jax.use_bias=False --jax.mlp_activation=gelu_exact --jax.vocab_size=68 2>&1 | grep -E "median step|Error"
done
