r"""Glauber sampling speed (Algorithm 2) of a gin-configured DiT with random weights.

  python bench/glauber_sampling.py --gin_file=gin/ul2_medium_glauber.gin --batch_size=64 \
      --num_rounds=1 --num_rounds=3

For each ``--num_rounds`` (default: the config's ``N``) prints one JSON line: seconds per batch
of the whole compiled sampler (CAUSAL-GEN of ``L`` tokens, then ``N * L`` MASK-INFILL steps),
the causal phase alone, seconds per MASK-INFILL step (the difference over ``N * L``) and the MFU
of the infill steps (forward FLOPs of an ``L + 2``-token encoder and 2 decoder positions,
against the data-sheet dense bf16 peak of ``glauber_jax.throughput``). Compilation is excluded;
every timed call is synchronised.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import gin
import jax

from glauber_jax import gin_utils, models, throughput
from glauber_jax.processes import glauber_process
import glauber_jax.train  # noqa: F401  Registers the configurables the gin files name.
import tasks  # noqa: F401  Registers the tasks whose vocabularies the gin files name.


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
  """``(compile_and_first_call_seconds, mean_seconds_per_later_call)``."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return first, (time.perf_counter() - start) / repeats


def main(argv: list[str]) -> None:
  gin_files, bindings, rest = gin_utils.split_gin_args(argv)
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--num_rounds", type=int, action="append")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args(rest)
  gin_utils.parse_gin(gin_files, ["MODEL_DIR='/tmp/glauber_bench'"] + bindings)
  model = gin.query_parameter("train.model").scoped_configurable_fn()
  if not isinstance(getattr(model, "process", None), glauber_process.GlauberProcess):
    raise SystemExit("this benchmark needs a *_glauber.gin configuration.")
  shapes = model.input_shapes(args.batch_size, {"targets": model.seq_len})
  params = jax.jit(lambda: nn.meta.unbox(
      model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]))()
  rng = jax.random.PRNGKey(1)
  _, causal_seconds = timed(
      lambda: model.sample(params, rng, args.batch_size, num_rounds=0), args.repeats)
  config = model.denoiser.network_config
  infill_flops = throughput.encoder_decoder_training_flops(config, model.seq_len + 2, 2) / 3
  peak = throughput.peak_flops_per_device()
  for num_rounds in args.num_rounds or [model.process.schedule.num_rounds]:
    compile_seconds, batch_seconds = timed(
        lambda: model.sample(params, rng, args.batch_size, num_rounds=num_rounds), args.repeats)
    steps = num_rounds * model.seq_len
    step_seconds = (batch_seconds - causal_seconds) / steps
    step_flops_per_second = infill_flops * args.batch_size / step_seconds
    print(json.dumps({
        "benchmark": "glauber_sampling",
        "date": datetime.date.today().isoformat(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "gin_files": gin_files,
        "bindings": bindings,
        "params": models.count_params(params),
        "batch_size": args.batch_size,
        "seq_len": model.seq_len,
        "num_rounds": num_rounds,
        "model_calls": model.seq_len + steps,
        "compile_and_first_batch_seconds": round(compile_seconds, 2),
        "seconds_per_batch": round(batch_seconds, 4),
        "causal_gen_seconds": round(causal_seconds, 4),
        "seconds_per_infill_step": round(step_seconds, 6),
        "infill_mfu": (None if peak is None else
                       round(throughput.mfu(step_flops_per_second, peak, 1), 4)),
    }), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
