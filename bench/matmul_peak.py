r"""The chip's measured bf16 matmul peak: the best FLOP/s of a large square ``jnp.dot``.

  python bench/matmul_peak.py --size=8192

Prints one JSON line with ``measured_peak_flops``, which ``bench/gpu_all.py`` hands to the
other stages as the denominator of their MFU. Each trial dispatches ``--repeats`` products
asynchronously and waits once, so launch overhead is hidden; the best of ``--trials`` counts.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp

import bench_common
from glauber_jax import throughput


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--size", type=int, default=8192)
  parser.add_argument("--repeats", type=int, default=50)
  parser.add_argument("--trials", type=int, default=3)
  bench_common.add_common_arguments(parser)
  args = parser.parse_args(argv)
  keys = jax.random.split(jax.random.PRNGKey(0))
  a, b = (jax.random.normal(key, (args.size, args.size), jnp.bfloat16) for key in keys)
  product = jax.jit(jnp.dot)
  first_seconds, seconds = bench_common.timed(lambda: product(a, b), jax.block_until_ready, 1)
  repeats = bench_common.repeats_within(seconds, args.time_budget / (2 * args.trials),
                                        args.repeats)
  best = float("inf")
  for _ in range(args.trials):
    start = time.perf_counter()
    results = [product(a, b) for _ in range(repeats)]
    jax.block_until_ready(results)
    best = min(best, (time.perf_counter() - start) / repeats)
  flops = 2.0 * args.size ** 3
  bench_common.emit(
      "matmul_peak", "ours", jax.devices()[0].device_kind, jax=jax.__version__,
      size=args.size, dtype="bfloat16", repeats=repeats, trials=args.trials,
      compile_seconds=round(first_seconds, 3), seconds_per_matmul=round(best, 6),
      measured_peak_flops=round(flops / best),
      datasheet_peak_flops=throughput.peak_flops_per_device(),
      peak_memory_bytes=bench_common.jax_peak_memory_bytes())


if __name__ == "__main__":
  main(sys.argv[1:])
