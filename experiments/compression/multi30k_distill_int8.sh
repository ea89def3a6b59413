#!/usr/bin/env bash
# Multi30k En->De (issue 17), on a schedule that fits the 2-core CPU:
#   1. a teacher: the 7.56M-parameter T5 of experiments/t5_multi30k_en_de_spm (recipe 2:
#      scaled attention, label smoothing 0.1), trained $STEPS steps instead of 4,000;
#   2. its test BLEU (greedy, all 1,000 test2016 sentences) with float32 weights and with
#      --quantize=int8 (dense kernels and the shared token table int8 per output channel);
#   3. a student of about half its size (1 encoder + 1 decoder layer instead of 3 + 3),
#      trained $STEPS steps with and without the teacher's soft targets (KL at T=2,
#      alpha 0.5; the teacher's logits come from the same jitted step), then its test BLEU;
#   4. the three registered in an MLflow registry of their own, students with the teacher
#      as parent.
# Each command's wall time and peak RSS (GNU time) go to $OUT/<name>.log.
#   LLMOS_DATA_DIR: the shared data; OUT: where runs go; STEPS: training steps per run.
set -euo pipefail
OUT=${OUT:-/work/runs/multi30k}
STEPS=${STEPS:-2000}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
RECIPE=experiments/t5_multi30k_en_de_spm/t5_multi30k_scaled_attention_label_smoothing.gin
VOCAB="$OUT/vocab/multi30k_en_de_8k"
SCHEDULE=(--gin.SPM_MODEL="'$VOCAB.model'" --gin.train.num_steps="$STEPS"
          --gin.warmup_then_decay.warmup_steps=$((STEPS / 10))
          --gin.warmup_then_decay.decay_steps="$STEPS" --gin.train.eval_every=$((STEPS / 2))
          --gin.train.checkpoint_every=$((STEPS / 2)) --gin.train.progress_bar=False)
GREEDY=(--split=test --gin.DecodeConfig.method="'greedy'")

source "$(dirname "$0")/timed.sh"

[ -f "$VOCAB.model" ] || timed vocab python tools/train_seq2seq_vocab.py \
  --task=multi30k_en_de_spm --vocab_size=8000 --output="$VOCAB"
timed teacher_train llmos train --gin_file="$RECIPE" "${SCHEDULE[@]}" --model_dir="$OUT/teacher"
timed teacher_test_float32 llmos eval --gin_file="$OUT/teacher/config.gin" \
  --checkpoint="$OUT/teacher/export" "${GREEDY[@]}" --output_dir="$OUT/teacher/eval_float32"
timed teacher_test_int8 llmos eval --gin_file="$OUT/teacher/config.gin" \
  --checkpoint="$OUT/teacher/export" "${GREEDY[@]}" --quantize=int8 \
  --output_dir="$OUT/teacher/eval_int8"
STUDENT=(--gin.EncoderDecoderConfig.num_layers=1 --gin.EncoderDecoderConfig.num_decoder_layers=1)
for run in plain distilled; do
  extra=()
  [ "$run" = distilled ] && extra=("--gin.train.objective=@distillation()"
                                   "--gin.distillation.teacher='$OUT/teacher/export'"
                                   --gin.distillation.temperature=2.0 --gin.distillation.alpha=0.5)
  timed "student_${run}_train" llmos train --gin_file="$RECIPE" "${SCHEDULE[@]}" "${STUDENT[@]}" \
    --model_dir="$OUT/student_$run" "${extra[@]}"
  timed "student_${run}_test" llmos eval --gin_file="$OUT/student_$run/config.gin" \
    --checkpoint="$OUT/student_$run/export" "${GREEDY[@]}" \
    --output_dir="$OUT/student_$run/eval_float32"
done
export LLMOS_HOME="$OUT/llmos_home"  # a registry of its own, so the versions are 1
llmos models register --model_dir="$OUT/teacher" --name=multi30k_teacher
llmos models register --model_dir="$OUT/student_plain" --name=multi30k_student_plain
llmos models register --model_dir="$OUT/student_distilled" --name=multi30k_student_distilled \
  --parent=multi30k_teacher/1 --compression=distillation
grep -H '"bleu"' "$OUT"/*/eval_*/eval_results/test_step*.json || true
