r"""Training throughput (tokens/s, MFU) of a gin-configured encoder-decoder on random tokens.

  python bench/train_throughput.py --gin_file=gin/ul2_medium.gin --batch_size=16 \
      --inputs_length=1024 --targets_length=128 --steps=20

Prints one JSON line with the device, shapes, step time, tokens/s, model TFLOP/s and MFU against
the measured matmul peak (``--measured_peak_flops``, from ``bench/matmul_peak.py``) and the
data-sheet dense bf16 peak of ``glauber_jax.throughput``, and the peak device memory.
Compilation and the first ``--warmup`` steps are excluded from timing; every timed step is
synchronised; ``--time_budget`` lowers ``--steps`` when the steps would not fit it.
Extra ``--gin.NAME=VALUE`` flags override the configuration (e.g. remat, attention kernel).
``bench/hf_peer.py train`` times the same step in Hugging Face T5.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

import bench_common
from glauber_jax import gin_utils, models, partitioning, throughput
from glauber_jax import trainer as trainer_lib
import glauber_jax.train  # noqa: F401  Registers the configurables the gin files name.
import tasks  # noqa: F401  Registers the tasks whose vocabularies the gin files name.


def random_batch(batch_size: int, inputs_length: int, targets_length: int, vocab_size: int,
                 seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  targets = rng.integers(3, vocab_size, (batch_size, targets_length), dtype=np.int32)
  return {
      "encoder_input_tokens": rng.integers(3, vocab_size, (batch_size, inputs_length),
                                           dtype=np.int32),
      "decoder_input_tokens": np.concatenate(
          [np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": np.ones((batch_size, targets_length), np.float32),
  }


def main(argv: list[str]) -> None:
  gin_files, bindings, rest = gin_utils.split_gin_args(argv)
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--inputs_length", type=int, default=1024)
  parser.add_argument("--targets_length", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  bench_common.add_common_arguments(parser)
  args = parser.parse_args(rest)
  gin_utils.parse_gin(gin_files, ["MODEL_DIR='/tmp/glauber_bench'"] + bindings)
  import gin

  model: models.BaseModel = gin.query_parameter("train.model").scoped_configurable_fn()
  partitioner = partitioning.Partitioner()
  trainer = trainer_lib.Trainer(model=model, partitioner=partitioner)
  vocab_size = model.network_config.vocab_size  # type: ignore[attr-defined]
  batch = random_batch(args.batch_size, args.inputs_length, args.targets_length, vocab_size, 0)
  shapes = {name: value.shape for name, value in batch.items()}
  state = trainer.initialize(shapes)
  global_batch = partitioner.host_batch_to_global(batch)
  compile_start = time.perf_counter()
  state, metrics = trainer.train_step(state, global_batch)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - compile_start
  for _ in range(args.warmup):
    state, metrics = trainer.train_step(state, global_batch)
  jax.block_until_ready(metrics)
  warm_seconds = (time.perf_counter() - compile_start - compile_seconds) / max(args.warmup, 1)
  steps = bench_common.repeats_within(
      warm_seconds, args.time_budget - (time.perf_counter() - compile_start), args.steps)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.train_step(state, global_batch)
  jax.block_until_ready(metrics)
  step_seconds = (time.perf_counter() - start) / steps
  tokens = args.batch_size * (args.inputs_length + args.targets_length)
  flops = model.num_flops_per_example({"inputs": args.inputs_length,
                                       "targets": args.targets_length}) * args.batch_size
  bench_common.emit(
      "train_step", "ours", jax.devices()[0].device_kind, num_devices=jax.device_count(),
      jax=jax.__version__, gin_files=gin_files, bindings=bindings,
      vocab_size=vocab_size, batch_size=args.batch_size, inputs_length=args.inputs_length,
      targets_length=args.targets_length, params=models.count_params(state.params),
      compile_seconds=round(compile_seconds, 2), timed_steps=steps,
      step_seconds=round(step_seconds, 5), tokens_per_second=round(tokens / step_seconds, 1),
      **bench_common.utilisation(flops / step_seconds / jax.device_count(),
                                 args.measured_peak_flops, throughput.peak_flops_per_device()),
      peak_memory_bytes=bench_common.jax_peak_memory_bytes(),
      final_loss=float(metrics["loss"]))


if __name__ == "__main__":
  main(sys.argv[1:])
