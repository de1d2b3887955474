#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, one stage per call (each fits a 10-minute limit at the
# targets' speeds); JSON lines are appended to $OUT (default bench_results/).
#   bash bench/gpu.sh train   # UL2-medium training throughput and MFU (issue 2)
#   bash bench/gpu.sh n1      # Glauber sampling, L = 1024, batch 64, N = 1 (issue 4)
#   bash bench/gpu.sh n3      # the same, N = 3
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
case "${1:-}" in
  train)
    python3 bench/train_throughput.py --gin_file=gin/ul2_medium.gin --batch_size=16 \
      --inputs_length=1024 --targets_length=128 --steps=20 \
      --gin.network.NetworkConfig.vocab_size=32128 | tee -a "$OUT/train_throughput.jsonl" ;;
  n1 | n3)
    python3 bench/glauber_sampling.py --gin_file=gin/ul2_medium_glauber.gin --batch_size=64 \
      --num_rounds="${1#n}" --repeats=1 | tee -a "$OUT/glauber_sampling.jsonl" ;;
  *)
    echo "usage: bash bench/gpu.sh train|n1|n3" >&2
    exit 2 ;;
esac
