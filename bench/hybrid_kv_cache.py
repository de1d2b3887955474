r"""Block- or slide-schedule sampling of the epsilon-hybrid with and without the KV cache.

  python bench/hybrid_kv_cache.py [--schedule=block --seq_len=256 --width=64 --num_levels=8
      --batch_size=8]

A bidirectional single stack with random weights (``--d_model``, ``--num_layers``; no time
input) samples a whole hyperschedule generation twice, with the process's own samplers
(``EpsilonHybridProcess.epsilon_sampler``): the uncached forward over all ``L`` positions under
the schedule's mask at every call (``attention = "schedule"``), and the cached decoding
(``"cached"``: the active block or window only, settled positions' keys and values appended
once; ``--schedule=slide`` needs ``--num_levels >= --width``). Prints one JSON line: seconds per
batch of each (compilation excluded, the best of ``--repeats`` synchronised calls), their ratio,
and whether the samples are identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import denoiser_networks, network, synthetic, vocabularies
from glauber_jax.processes import hybrid_process


def best_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
  """The fastest of ``repeats`` synchronised calls after a first (compiling) one."""
  result = jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times), result


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--schedule", choices=("block", "slide"), default="block")
  for name, default in (("seq_len", 256), ("width", 64), ("num_levels", 8), ("batch_size", 8),
                        ("d_model", 128), ("num_layers", 4), ("repeats", 3)):
    parser.add_argument(f"--{name}", type=int, default=default)
  args = parser.parse_args(argv)
  vocabulary = vocabularies.LetterVocabulary(synthetic.alphabet(26))
  config = network.NetworkConfig(
      vocab_size=vocabulary.vocab_size, d_model=args.d_model, num_heads=4,
      head_dim=args.d_model // 4, d_ff=3 * args.d_model, num_encoder_layers=args.num_layers,
      max_encoder_length=args.seq_len, dtype="float32", position_scheme="rope",
      time_conditioning=False)
  denoiser = denoiser_networks.SingleStackDenoiser(config, vocabulary)
  params = denoiser.init_variables(jax.random.PRNGKey(0), 1, args.seq_len)["params"]
  process = hybrid_process.EpsilonHybridProcess(args.seq_len)
  options = process.sampler_options(hybrid_process.HybridSamplerOptions(
      schedule=args.schedule, width=args.width, num_levels=args.num_levels))
  uncached, cached = (jax.jit(process.epsilon_sampler(
      denoiser, params, dataclasses.replace(options, attention=attention)))
                      for attention in ("schedule", "cached"))
  initial = jnp.full((args.batch_size, args.seq_len), denoiser.special_ids.mask, jnp.int32)
  frozen = jnp.zeros(initial.shape, bool)
  key = jax.random.PRNGKey(1)
  uncached_s, plain = best_seconds(lambda: uncached(key, initial, frozen), args.repeats)
  cached_s, fast = best_seconds(lambda: cached(key, initial, frozen), args.repeats)
  schedule = process.hyperschedule(options)
  print(json.dumps({
      "device": jax.devices()[0].device_kind, "schedule": args.schedule,
      "seq_len": args.seq_len, "width": args.width,
      "num_levels": args.num_levels, "num_calls": schedule.num_calls,
      "batch_size": args.batch_size, "d_model": args.d_model, "num_layers": args.num_layers,
      "uncached_seconds": round(uncached_s, 3), "cached_seconds": round(cached_s, 3),
      "speedup": round(uncached_s / cached_s, 2),
      "identical_samples": bool(np.array_equal(np.asarray(plain[0]), np.asarray(fast[0])))}))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
