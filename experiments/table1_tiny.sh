#!/usr/bin/env bash
# The shape of the paper's Table 1 at tiny scale, on the bundled Shakespeare corpus, with the
# CLIs only: generative perplexity under our own judge and token entropy for CAUSAL-GEN before
# diffusion training, the UL2's own MASK-INFILL rounds (the DiT converted from the UL2 with no
# Glauber training), Glauber N = 1 and N = 3 together with their own drafts (CAUSAL-GEN after
# diffusion training, the same samples before the rounds), MDLM and a causal LM, all with the
# same tokenizer and L = 64, plus each model's likelihood bound on the held-out split.
#
#   bash experiments/table1_tiny.sh [RUN_DIR]      # default runs/table1_tiny
#
# Budgets: the Glauber DiTs get UL2 pretraining (UL2_STEPS) plus GLAUBER_STEPS of diffusion
# training; the causal LM and MDLM get the same number of steps in all (BASELINE_STEPS) at the
# same batch size and a comparable parameter count. Every stage resumes if run again. Results:
# RUN_DIR/eval.jsonl, RUN_DIR/bound_*.jsonl, and the printed tables (docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=${1:-runs/table1_tiny}
UL2_STEPS=${UL2_STEPS:-1000}
GLAUBER_STEPS=${GLAUBER_STEPS:-400}
BASELINE_STEPS=${BASELINE_STEPS:-$((UL2_STEPS + GLAUBER_STEPS))}
JUDGE_STEPS=${JUDGE_STEPS:-1000}
NUM_SAMPLES=${NUM_SAMPLES:-64}
PYTHON=${PYTHON:-python}

source experiments/cli_steps.sh

# 1. Models.
train gin/judge_tiny.gin judge "$JUDGE_STEPS"
train gin/ul2_tiny.gin ul2 "$UL2_STEPS"
for rounds in 1 3; do
  train gin/ul2_tiny_glauber.gin "glauber_n$rounds" "$GLAUBER_STEPS" \
    --gin.NUM_ROUNDS="$rounds" --gin.train.initial_checkpoint="'$RUN_DIR/ul2'"
done
# The same DiT with the pre-diffusion UL2 kept as the prior: its rounds edit that UL2's drafts.
FROZEN=(--gin.glauber_process.GlauberProcess.prior="'frozen'"
        --gin.glauber_process.GlauberProcess.prior_loss_weight=0.0)
train gin/ul2_tiny_glauber.gin glauber_frozen_n1 "$GLAUBER_STEPS" "${FROZEN[@]}" \
  --gin.train.initial_checkpoint="'$RUN_DIR/ul2'"
train gin/ar_tiny.gin ar "$BASELINE_STEPS"
train gin/mdlm_tiny.gin mdlm "$BASELINE_STEPS"

# 2. Samples (unconditional, L = 64 tokens each).
infer gin/ul2_tiny_glauber.gin ul2 causal samples_causal_pre.jsonl
for rounds in 1 3; do
  infer gin/ul2_tiny_glauber.gin ul2 sample "samples_teacher_gibbs_n$rounds.jsonl" \
    --gin.NUM_ROUNDS="$rounds"
  infer gin/ul2_tiny_glauber.gin "glauber_n$rounds" sample "samples_glauber_n$rounds.jsonl" \
    --gin.NUM_ROUNDS="$rounds"
done
infer gin/ul2_tiny_glauber.gin glauber_frozen_n1 sample samples_glauber_frozen_n1.jsonl \
  "${FROZEN[@]}"
infer gin/mdlm_tiny.gin mdlm sample samples_mdlm.jsonl
infer gin/ar_tiny.gin ar sample samples_ar.jsonl

# 3. Judge perplexity, entropy, distinct-n; the Glauber files' drafts get rows of their own.
judge eval.jsonl \
  --samples="$RUN_DIR/samples_causal_pre.jsonl" \
  --samples="$RUN_DIR/samples_teacher_gibbs_n1.jsonl" \
  --samples="$RUN_DIR/samples_teacher_gibbs_n3.jsonl" \
  --samples="$RUN_DIR/samples_glauber_n1.jsonl" --samples="$RUN_DIR/samples_glauber_n3.jsonl" \
  --drafts="$RUN_DIR/samples_glauber_n1.jsonl" --drafts="$RUN_DIR/samples_glauber_n3.jsonl" \
  --samples="$RUN_DIR/samples_glauber_frozen_n1.jsonl" \
  --drafts="$RUN_DIR/samples_glauber_frozen_n1.jsonl" \
  --samples="$RUN_DIR/samples_mdlm.jsonl" --samples="$RUN_DIR/samples_ar.jsonl"

# 4. Likelihood bounds on the held-out split (the causal LMs' are exact perplexities).
for rounds in 1 3; do
  infer gin/ul2_tiny_glauber.gin "glauber_n$rounds" bound "bound_glauber_n$rounds.jsonl" \
    --gin.NUM_ROUNDS="$rounds"
done
infer gin/ul2_tiny_glauber.gin glauber_frozen_n1 bound bound_glauber_frozen_n1.jsonl \
  "${FROZEN[@]}"
for name in mdlm ar judge; do
  infer "gin/${name}_tiny.gin" "$name" bound "bound_$name.jsonl"
done
