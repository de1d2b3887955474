#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md. JSON lines go to $OUT (default bench_results/).
#   bash bench/gpu.sh all          # every figure, ours and the peer, in one run of < 8 minutes
#   bash bench/gpu.sh all --tiny   # the same stages at tiny shapes: the CPU check (smoke)
#   bash bench/gpu.sh train        # UL2-medium training throughput and MFU alone (issue 2)
#   bash bench/gpu.sh n1 | n3      # Glauber sampling, L = 1024, batch 64, N = 1 or 3 (issue 4)
# $PYTHON (default python3) is the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
case "${1:-}" in
  all)
    shift
    "$PYTHON" bench/gpu_all.py --out="$OUT" "$@" ;;
  train)
    "$PYTHON" bench/train_throughput.py --gin_file=gin/ul2_medium.gin --batch_size=16 \
      --inputs_length=1024 --targets_length=128 --steps=20 \
      --gin.network.NetworkConfig.vocab_size=32128 | tee -a "$OUT/train_throughput.jsonl" ;;
  n1 | n3)
    "$PYTHON" bench/glauber_sampling.py sampling --gin_file=gin/ul2_medium_glauber.gin \
      --batch_size=64 --num_rounds="${1#n}" | tee -a "$OUT/glauber_sampling.jsonl" ;;
  *)
    echo "usage: bash bench/gpu.sh all [--tiny]|train|n1|n3" >&2
    exit 2 ;;
esac
