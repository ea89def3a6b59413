#!/usr/bin/env bash
# Distillation on Shakespeare characters (issue 17): a 2-layer student (half the teacher's
# 4 layers x 128, RoPE) trained 2,000 steps with and without the teacher's soft targets
# (KL at temperature 2, alpha 0.5), everything else equal (experiments/shakespeare_char/
# shakespeare_char_cpu_rope.gin: batch 12 x 64, seed 1337, whole validation split at the end).
# Then both students are registered in MLflow with the teacher as parent.
#   TEACHER: the teacher run's folder (trained with shakespeare_char_cpu_rope.gin, see
#            experiments/serving_apps/SHAKESPEARE.md); OUT: where the students go.
set -euo pipefail
TEACHER=${TEACHER:-/work/runs/shakespeare_rope}
OUT=${OUT:-/work/runs/distill}
STUDENT=(--gin_file=experiments/shakespeare_char/shakespeare_char_cpu_rope.gin
         --gin.TransformerConfig.num_layers=2 --gin.train.progress_bar=False
         --gin.train.sample_new_tokens=0)
uptime
for run in plain distilled; do
  extra=()
  [ "$run" = distilled ] && extra=("--gin.train.objective=@distillation()"
                                   "--gin.distillation.teacher='$TEACHER/export'"
                                   --gin.distillation.temperature=2.0 --gin.distillation.alpha=0.5)
  start=$(date +%s)
  /usr/bin/time -f "$run: %e s wall, %M KB peak RSS" \
    llmos train "${STUDENT[@]}" --model_dir="$OUT/student_$run" "${extra[@]}"
  echo "$run took $(( $(date +%s) - start )) s"
done
uptime
# A registry of its own (embedded MLflow under LLMOS_HOME), so the versions are 1.
export LLMOS_HOME="$OUT/llmos_home"
llmos models register --model_dir="$TEACHER" --name=shakespeare_teacher
llmos models register --model_dir="$OUT/student_plain" --name=shakespeare_student_plain
llmos models register --model_dir="$OUT/student_distilled" --name=shakespeare_student_distilled \
  --parent=shakespeare_teacher/1 --compression=distillation
# The same held-out measure for all three (the distilled run's own eval "loss" mixes in the
# soft-target term): next-character NLL over the whole validation split.
for name in shakespeare_teacher shakespeare_student_plain shakespeare_student_distilled; do
  llmos eval --checkpoint="models:/$name/1" --output_dir="$OUT/eval_$name" \
    --gin.register_lm_task.metric_fns="[@perplexity]"
done
