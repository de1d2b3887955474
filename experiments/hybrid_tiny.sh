#!/usr/bin/env bash
# Issue 13's comparison (item 7) on the bundled Shakespeare corpus, with the CLIs only: the
# hybrid family beside MDLM at matched parameters, training steps and model calls, judged like
# the rows of experiments/table1_tiny.sh (generative perplexity under the same judge, token
# entropy) plus each model's likelihood bound on the held-out split. Run it on table1's RUN_DIR
# to put its rows beside the Glauber ones: the judge and MDLM are trained once (a finished run
# resumes to nothing).
#
#   bash experiments/hybrid_tiny.sh [RUN_DIR]      # default runs/table1_tiny
#
# Rows (L = 64; every sampler makes 64 model calls, as MDLM's 64 steps):
#   hybrid_epsilon          epsilon-hybrid, HDCE, flat hyperschedule of 64 levels
#   hybrid_epsilon (ACS)    the same checkpoint, ACS at eta = 0.05
#   hybrid_epsilon_block    epsilon-hybrid trained for Block^16 (annealed HDCE, schedule masks,
#                           the efficient 2L layout); 16 levels a block, KV cache, ACS 0.05
#   hybrid_gamma            gamma-hybrid, score entropy, flat hyperschedule of 64 levels
#   hybrid_gamma_block      gamma-hybrid, per-token time, trained and sampled on Block^16
#                           (16 levels a block)
#   hybrid_gamma (16)       hybrid_gamma's checkpoint on a flat hyperschedule of 16 levels (16
#                           calls): as few levels a position as the block row gets
# Results: RUN_DIR/eval_hybrid.jsonl, RUN_DIR/bound_hybrid_*.jsonl and the printed tables
# (docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=${1:-runs/table1_tiny}
STEPS=${STEPS:-1400}            # table1_tiny.sh's BASELINE_STEPS
JUDGE_STEPS=${JUDGE_STEPS:-1000}
NUM_SAMPLES=${NUM_SAMPLES:-64}
PYTHON=${PYTHON:-python}
BLOCK=(--gin.BLOCK_LEVELS=16)   # gin/hybrid_epsilon_block_tiny.gin: 4 blocks x 16 levels
ACS=(--gin.hybrid_process.EpsilonHybridProcess.eta=0.05)

source experiments/cli_steps.sh

# 1. Models.
train gin/judge_tiny.gin judge "$JUDGE_STEPS"
train gin/mdlm_tiny.gin mdlm "$STEPS"
train gin/hybrid_epsilon_tiny.gin hybrid_epsilon "$STEPS"
train gin/hybrid_epsilon_block_tiny.gin hybrid_epsilon_block "$STEPS" "${BLOCK[@]}"
train gin/hybrid_gamma_tiny.gin hybrid_gamma "$STEPS"
train gin/hybrid_gamma_block_tiny.gin hybrid_gamma_block "$STEPS"

# 2. Samples (unconditional, L = 64 tokens each).
infer gin/mdlm_tiny.gin mdlm sample samples_mdlm.jsonl
infer gin/hybrid_epsilon_tiny.gin hybrid_epsilon sample samples_hybrid_epsilon.jsonl
infer gin/hybrid_epsilon_tiny.gin hybrid_epsilon sample samples_hybrid_epsilon_acs.jsonl "${ACS[@]}"
infer gin/hybrid_epsilon_block_tiny.gin hybrid_epsilon_block sample \
  samples_hybrid_epsilon_block.jsonl "${BLOCK[@]}"
infer gin/hybrid_gamma_tiny.gin hybrid_gamma sample samples_hybrid_gamma.jsonl
infer gin/hybrid_gamma_tiny.gin hybrid_gamma sample samples_hybrid_gamma_16.jsonl \
  --gin.hybrid_process.GammaHybridProcess.num_levels=16
infer gin/hybrid_gamma_block_tiny.gin hybrid_gamma_block sample samples_hybrid_gamma_block.jsonl

# 3. Judge perplexity, entropy, distinct-n.
judge eval_hybrid.jsonl \
  --samples="$RUN_DIR/samples_mdlm.jsonl" \
  --samples="$RUN_DIR/samples_hybrid_epsilon.jsonl" \
  --samples="$RUN_DIR/samples_hybrid_epsilon_acs.jsonl" \
  --samples="$RUN_DIR/samples_hybrid_epsilon_block.jsonl" \
  --samples="$RUN_DIR/samples_hybrid_gamma.jsonl" \
  --samples="$RUN_DIR/samples_hybrid_gamma_16.jsonl" \
  --samples="$RUN_DIR/samples_hybrid_gamma_block.jsonl"

# 4. Likelihood bounds on the held-out split.
infer gin/hybrid_epsilon_tiny.gin hybrid_epsilon bound bound_hybrid_epsilon.jsonl
infer gin/hybrid_epsilon_block_tiny.gin hybrid_epsilon_block bound \
  bound_hybrid_epsilon_block.jsonl "${BLOCK[@]}"
infer gin/hybrid_gamma_tiny.gin hybrid_gamma bound bound_hybrid_gamma.jsonl
infer gin/hybrid_gamma_block_tiny.gin hybrid_gamma_block bound bound_hybrid_gamma_block.jsonl
