#!/usr/bin/env bash
# Shared by the experiment scripts (sourced, not run): one training run, one infer run and one
# judged evaluation through the CLIs, under RUN_DIR, with NUM_SAMPLES samples and the
# interpreter PYTHON. Sourcing it also sets the scripts' strict mode.
set -euo pipefail

train() {  # train GIN_FILE NAME STEPS [BINDINGS...]; resumes, and does nothing once finished.
  local gin_file=$1 name=$2 steps=$3
  shift 3
  "$PYTHON" -m glauber_jax.train --gin_file="$gin_file" --gin.MODEL_DIR="'$RUN_DIR/$name'" \
    --gin.TRAIN_STEPS="$steps" "$@"
}

infer() {  # infer GIN_FILE CHECKPOINT MODE OUTPUT [BINDINGS...]
  local gin_file=$1 checkpoint=$2 mode=$3 output=$4
  shift 4
  "$PYTHON" -m glauber_jax.infer --gin_file="$gin_file" --checkpoint="$RUN_DIR/$checkpoint" \
    --mode="$mode" --output_file="$RUN_DIR/$output" --gin.infer.num_samples="$NUM_SAMPLES" \
    --gin.infer.batch_size=32 --gin.infer.print_samples=1 "$@"
}

judge() {  # judge OUTPUT --samples=FILE... [--drafts=FILE...]: eval under RUN_DIR/judge.
  local output=$1
  shift
  "$PYTHON" -m glauber_jax.eval --output="$RUN_DIR/$output" --judge_gin=gin/judge_tiny.gin \
    --judge_checkpoint="$RUN_DIR/judge" "$@"
}
