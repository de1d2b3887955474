r"""Glauber sampling speed (Algorithm 2) of a gin-configured DiT with random weights.

  python bench/glauber_sampling.py infill_forward --gin_file=gin/ul2_medium_glauber.gin \
      --batch_size=64
  python bench/glauber_sampling.py causal_gen --gin_file=gin/ul2_medium_glauber.gin \
      --batch_size=64
  python bench/glauber_sampling.py sampling --gin_file=gin/ul2_medium_glauber.gin \
      --batch_size=64 --num_rounds=1 --num_rounds=3

One JSON line per figure (``bench_common.emit``); compilation is excluded from every timing
(ahead-of-time ``lower().compile()``) and every timed call is synchronised.

- ``infill_forward``: one MASK-INFILL forward (``[NLU] x_{-k} [EOS]``, ``L + 2`` encoder and 2
  decoder tokens): seconds, model TFLOP/s and MFU, and XLA's own cost analysis of the program
  (and, with ``--profile_dir``, a profiler trace of one more forward).
- ``causal_gen``: the CAUSAL-GEN draft of ``L`` tokens with the KV cache (``num_rounds = 0``).
- ``sampling``: for each ``--num_rounds`` (default: the config's ``N``), the whole sampler
  (CAUSAL-GEN, then ``N * L`` MASK-INFILL steps). ``--infill_steps`` compiled steps of the
  reverse sweep are timed first; when the end-to-end run would not fit ``--time_budget`` (or
  ``N`` exceeds ``--max_end_to_end_rounds``), the line gives ``causal_gen_seconds + N L x
  seconds_per_infill_step`` instead, with ``"extrapolated": true`` and the number of steps timed
  (``--profile_dir``: a profiler trace of one more run of those steps).
  Every line also gives that estimate (``extrapolated_seconds_per_batch``, to check it against
  the end-to-end figure), and ``seconds_per_infill_step`` always comes from the timed steps.

``bench/hf_peer.py`` times the first two in Hugging Face T5 of the same shape.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

import bench_common
from glauber_jax import gin_utils, models, throughput
from glauber_jax.processes import glauber, glauber_process
import glauber_jax.train  # noqa: F401  Registers the configurables the gin files name.
import tasks  # noqa: F401  Registers the tasks whose vocabularies the gin files name.

STAGES = ("infill_forward", "causal_gen", "sampling")


def compiled_seconds(fn: Any, *args: Any, warmup: bool = True) -> tuple[Any, float, float]:
  """``(compiled, compile_seconds, seconds_of_one_call)`` of ``jax.jit(fn)`` on ``args``,
  compiled ahead of time; after one untimed call unless ``warmup`` is off (for programs of
  seconds, where a second run would cost more than the first call's allocations)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_seconds = time.perf_counter() - start
  if warmup:
    _, seconds = bench_common.timed(lambda: compiled(*args), jax.block_until_ready, 1)
  else:
    seconds, _ = bench_common.timed(lambda: compiled(*args), jax.block_until_ready, 0)
  return compiled, compile_seconds, seconds


def xla_cost(compiled: Any) -> dict[str, Any]:
  """XLA's FLOPs and bytes accessed of a compiled program (None where unreported)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  cost = cost or {}
  return {"xla_flops": cost.get("flops"), "xla_bytes_accessed": cost.get("bytes accessed")}


def infill_forward(model: models.DiffusionModel, params: Any, args: argparse.Namespace,
                   common: dict[str, Any]) -> None:
  """One batch of MASK-INFILL logits at random sites."""
  denoiser, batch = model.denoiser, args.batch_size
  keys = jax.random.split(jax.random.PRNGKey(2), 2)
  tokens = jax.random.randint(keys[0], (batch, model.seq_len), 3, 100, jnp.int32)
  sites = jax.random.randint(keys[1], (batch,), 0, model.seq_len, jnp.int32)
  times = jnp.full((batch,), model.process.num_steps, jnp.int32)
  compiled, compile_seconds, first = compiled_seconds(denoiser.infill_logits, params, tokens,
                                                      sites, times)
  repeats = bench_common.repeats_within(first, args.time_budget / 2, args.repeats)
  _, seconds = bench_common.timed(lambda: compiled(params, tokens, sites, times),
                                  jax.block_until_ready, repeats)
  flops = batch * throughput.encoder_decoder_training_flops(
      denoiser.network_config, model.seq_len + 2, 2) / 3
  bench_common.emit(
      "infill_forward", **common, compile_seconds=round(compile_seconds, 2),
      timed_calls=repeats, seconds=round(seconds, 6), model_flops=flops,
      **bench_common.utilisation(flops / seconds, args.measured_peak_flops,
                                 throughput.peak_flops_per_device()),
      **xla_cost(compiled), peak_memory_bytes=bench_common.jax_peak_memory_bytes())
  bench_common.traced(lambda: compiled(params, tokens, sites, times), args.profile_dir)


def draft_seconds(model: models.DiffusionModel, params: Any, args: argparse.Namespace
                  ) -> tuple[float, float]:
  """``(compile_seconds, seconds)`` of the CAUSAL-GEN draft of a batch."""
  def draft(params: Any, rng: jax.Array) -> jax.Array:
    return model.sample(params, rng, args.batch_size, num_rounds=0).final
  _, compile_seconds, seconds = compiled_seconds(draft, params, jax.random.PRNGKey(1),
                                                 warmup=False)
  return compile_seconds, seconds


def causal_gen(model: models.DiffusionModel, params: Any, args: argparse.Namespace,
               common: dict[str, Any]) -> None:
  compile_seconds, seconds = draft_seconds(model, params, args)
  bench_common.emit(
      "causal_gen", **common, compile_seconds=round(compile_seconds, 2),
      new_tokens=model.seq_len, seconds=round(seconds, 4),
      tokens_per_second=round(args.batch_size * model.seq_len / seconds, 1),
      peak_memory_bytes=bench_common.jax_peak_memory_bytes())


def sampling(model: models.DiffusionModel, params: Any, args: argparse.Namespace,
             common: dict[str, Any]) -> None:
  """Algorithm 2 end to end where it fits the budget, else extrapolated from timed steps."""
  start = time.perf_counter()
  process, batch = model.process, args.batch_size
  infill_steps = min(args.infill_steps, process.num_steps)
  sites = jnp.asarray(process.schedule.sites()[:infill_steps])
  draft = jax.random.randint(jax.random.PRNGKey(3), (batch, model.seq_len), 3, 100, jnp.int32)

  def sweep(params: Any, tokens: jax.Array, rng: jax.Array) -> jax.Array:
    return glauber.reverse_sweep(
        rng, tokens, sites, functools.partial(process.infill_log_probs, model.denoiser, params))

  rng = jax.random.PRNGKey(4)
  compiled_sweep, sweep_compile, sweep_seconds = compiled_seconds(sweep, params, draft, rng)
  step_seconds = sweep_seconds / infill_steps
  if args.causal_gen_seconds is None:
    causal_compile, causal_seconds = draft_seconds(model, params, args)
  else:
    causal_compile, causal_seconds = sweep_compile, args.causal_gen_seconds
  for num_rounds in args.num_rounds or [process.schedule.num_rounds]:
    steps = num_rounds * model.seq_len
    estimate = causal_seconds + steps * step_seconds
    left = args.time_budget - (time.perf_counter() - start)
    fields: dict[str, Any] = {"num_rounds": num_rounds, "model_calls": model.seq_len + steps,
                              "timed_infill_steps": infill_steps,
                              "infill_sweep_compile_seconds": round(sweep_compile, 2),
                              "causal_gen_seconds": round(causal_seconds, 4),
                              "causal_gen_timed_in": ("this stage" if args.causal_gen_seconds
                                                      is None else "the causal_gen stage")}
    fits = 1.2 * estimate + sweep_compile + causal_compile < left
    if fits and num_rounds <= args.max_end_to_end_rounds:
      def whole(params: Any, rng: jax.Array, num_rounds: int = num_rounds) -> jax.Array:
        return model.sample(params, rng, batch, num_rounds=num_rounds).final
      _, compile_seconds, seconds = compiled_seconds(whole, params, jax.random.PRNGKey(1),
                                                     warmup=False)
      fields.update(extrapolated=False, compile_seconds=round(compile_seconds, 2),
                    seconds_per_batch=round(seconds, 4))
    else:
      fields.update(extrapolated=True, seconds_per_batch=round(estimate, 4))
    fields.update(seconds_per_infill_step=bench_common.significant(step_seconds),
                  extrapolated_seconds_per_batch=round(estimate, 4))
    bench_common.emit("glauber_sampling", **common, **fields,
                      peak_memory_bytes=bench_common.jax_peak_memory_bytes())
  bench_common.traced(lambda: compiled_sweep(params, draft, rng), args.profile_dir)


def main(argv: list[str]) -> None:
  gin_files, bindings, rest = gin_utils.split_gin_args(argv)
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("stage", choices=STAGES)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--num_rounds", type=int, action="append")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--infill_steps", type=int, default=32,
                      help="compiled reverse-sweep steps timed by the sampling stage")
  parser.add_argument("--max_end_to_end_rounds", type=int, default=sys.maxsize,
                      help="extrapolate samplers of more rounds even when they would fit")
  parser.add_argument("--causal_gen_seconds", type=float, default=None,
                      help="the causal_gen stage's figure, which the sampling stage then reuses")
  bench_common.add_common_arguments(parser)
  args = parser.parse_args(rest)
  gin_utils.parse_gin(gin_files, ["MODEL_DIR='/tmp/glauber_bench'"] + bindings)
  model = gin.query_parameter("train.model").scoped_configurable_fn()
  if not isinstance(getattr(model, "process", None), glauber_process.GlauberProcess):
    raise SystemExit("this benchmark needs a *_glauber.gin configuration.")
  shapes = model.input_shapes(args.batch_size, {"targets": model.seq_len})
  params = jax.jit(lambda: nn.meta.unbox(
      model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]))()
  config = model.denoiser.network_config
  common = {"system": "ours", "device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "gin_files": gin_files, "bindings": bindings, "params": models.count_params(params),
            "vocab_size": config.vocab_size, "batch_size": args.batch_size,
            "seq_len": model.seq_len}
  {"infill_forward": infill_forward, "causal_gen": causal_gen,
   "sampling": sampling}[args.stage](model, params, args, common)


if __name__ == "__main__":
  main(sys.argv[1:])
