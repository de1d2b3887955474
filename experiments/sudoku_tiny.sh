#!/usr/bin/env bash
# Sudoku solve rates (the paper's appendix B) at tiny scale: the Glauber DiT against MDLM and a
# causal LM of comparable size and training budget, on the bytes of puzzle + solution documents
# (task sudoku_lm, L = 163: 81 puzzle cells, 81 solution cells, EOS), with the CLIs only.
#
#   bash experiments/sudoku_tiny.sh [RUN_DIR]      # default runs/sudoku_tiny
#
# Each model is prompted with the first NUM_PUZZLES validation puzzles and continues with its
# answer; `glauber_jax.eval --puzzles` checks the answers by the rules (exact solve) and against
# the unique solution (cell accuracy on the blanks). Budgets: the Glauber DiT gets UL2_STEPS of
# UL2 pretraining (sudoku_ul2) plus GLAUBER_STEPS; MDLM and the causal LM get their sum.
# Results: RUN_DIR/eval.jsonl and the printed table (docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=${1:-runs/sudoku_tiny}
UL2_STEPS=${UL2_STEPS:-600}
GLAUBER_STEPS=${GLAUBER_STEPS:-300}
BASELINE_STEPS=${BASELINE_STEPS:-$((UL2_STEPS + GLAUBER_STEPS))}
NUM_ROUNDS=${NUM_ROUNDS:-2}
NUM_PUZZLES=${NUM_PUZZLES:-64}
PYTHON=${PYTHON:-python}
PUZZLES="$RUN_DIR/sudoku_validation.jsonl"

# Byte vocabulary, L = 163 (UL2: inputs and targets up to 168).
UL2_SHAPE=(--gin.network.NetworkConfig.vocab_size=384
           --gin.network.NetworkConfig.max_encoder_length=168
           --gin.network.NetworkConfig.max_decoder_length=168)
SINGLE_STACK_SHAPE=(--gin.single_stack/network.NetworkConfig.vocab_size=384
                    --gin.single_stack/network.NetworkConfig.max_encoder_length=163)
GLAUBER=(--gin_file=gin/ul2_tiny_glauber.gin --gin.MIXTURE_OR_TASK_NAME="'sudoku_lm'"
         --gin.SEQ_LEN=163 --gin.NUM_ROUNDS="$NUM_ROUNDS" "${UL2_SHAPE[@]}")
LM=(--gin.MIXTURE_OR_TASK_NAME="'sudoku_lm'" --gin.SEQ_LEN=163 "${SINGLE_STACK_SHAPE[@]}")

train() {  # train NAME STEPS FLAGS...
  local name=$1 steps=$2
  shift 2
  "$PYTHON" -m glauber_jax.train --gin.MODEL_DIR="'$RUN_DIR/$name'" --gin.TRAIN_STEPS="$steps" \
    "$@"
}

solve() {  # solve CHECKPOINT MODE OUTPUT FLAGS...: one answer per puzzle
  local checkpoint=$1 mode=$2 output=$3
  shift 3
  "$PYTHON" -m glauber_jax.infer --checkpoint="$RUN_DIR/$checkpoint" --mode="$mode" \
    --output_file="$RUN_DIR/$output" --gin.infer.prompts_file="'$PUZZLES'" \
    --gin.infer.num_samples=1 --gin.infer.batch_size=32 --gin.infer.print_samples=1 "$@"
}

mkdir -p "$RUN_DIR"
"$PYTHON" -m tasks.puzzles --kind=sudoku --split=validation --num_examples="$NUM_PUZZLES" \
  --output="$PUZZLES"

# 1. Models.
train ul2 "$UL2_STEPS" --gin_file=gin/ul2_tiny.gin --gin.MIXTURE_OR_TASK_NAME="'sudoku_ul2'" \
  --gin.TASK_FEATURE_LENGTHS="{'inputs': 168, 'targets': 168}" "${UL2_SHAPE[@]}"
train glauber "$GLAUBER_STEPS" "${GLAUBER[@]}" --gin.train.initial_checkpoint="'$RUN_DIR/ul2'"
train mdlm "$BASELINE_STEPS" --gin_file=gin/mdlm_tiny.gin "${LM[@]}"
train ar "$BASELINE_STEPS" --gin_file=gin/ar_tiny.gin "${LM[@]}"

# 2. Answers: the DiT's causal draft (N = 0) and Algorithm 2 with N rounds; MDLM with as many
# denoising steps as cells; the causal LM greedy and sampled.
solve glauber causal answers_glauber_causal.jsonl "${GLAUBER[@]}"
solve glauber sample answers_glauber.jsonl "${GLAUBER[@]}"
solve mdlm sample answers_mdlm.jsonl --gin_file=gin/mdlm_tiny.gin "${LM[@]}" \
  --gin.absorbing_process.AbsorbingProcess.num_steps=81
solve ar sample answers_ar.jsonl --gin_file=gin/ar_tiny.gin "${LM[@]}"
solve ar sample answers_ar_greedy.jsonl --gin_file=gin/ar_tiny.gin "${LM[@]}" \
  --gin.infer.temperature=0.0

# 3. Exact solve and cell accuracy.
"$PYTHON" -m glauber_jax.eval --output="$RUN_DIR/eval.jsonl" --puzzles="$PUZZLES" \
  --samples="$RUN_DIR/answers_glauber_causal.jsonl" --samples="$RUN_DIR/answers_glauber.jsonl" \
  --samples="$RUN_DIR/answers_mdlm.jsonl" --samples="$RUN_DIR/answers_ar.jsonl" \
  --samples="$RUN_DIR/answers_ar_greedy.jsonl"
