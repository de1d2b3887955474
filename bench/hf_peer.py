r"""The PyTorch peer: Hugging Face ``T5ForConditionalGeneration`` of our network's shape.

  python bench/hf_peer.py train --gin_file=gin/ul2_medium.gin --batch_size=16 \
      --inputs_length=1024 --targets_length=128 --gin.network.NetworkConfig.vocab_size=32128
  python bench/hf_peer.py infill_forward --gin_file=gin/ul2_medium_glauber.gin --batch_size=64
  python bench/hf_peer.py causal_gen --gin_file=gin/ul2_medium_glauber.gin --batch_size=64

The T5 v1.1 configuration is built from the gin file's ``network.NetworkConfig`` (the same one
``bench/train_throughput.py`` and ``bench/glauber_sampling.py`` read), with random weights, so
the two systems have the same shape by construction (ours adds the DiT's time conditioning in
the Glauber configurations). Numerics follow ours: float32 parameters under bf16 autocast for
training, bf16 weights for inference (float32 where the config's ``dtype`` is float32). Eager
by default; ``--compile`` wraps the model in ``torch.compile`` (train and infill_forward).

- ``train``: one Adafactor step on random tokens (the UL2 recipe's optimizer);
- ``infill_forward``: one MASK-INFILL forward, ``L + 2`` encoder and 2 decoder tokens;
- ``causal_gen``: ``generate`` of exactly ``L`` new tokens (``min_new_tokens``) with the KV
  cache, drawn at temperature 1 over the whole vocabulary, as ours.

One JSON line each (``bench_common.emit``), with ``torch.cuda.max_memory_allocated`` as the peak
memory (None on CPUs). Model FLOPs are ours (``glauber_jax.throughput``), so MFUs compare.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any, Callable, Optional

# The peer only reads gin here: JAX must stay off the accelerator (and not preallocate it).
os.environ["JAX_PLATFORMS"] = "cpu"

import gin  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import bench_common  # noqa: E402
from glauber_jax import gin_utils, network, throughput  # noqa: E402
import glauber_jax.train  # noqa: E402,F401  Registers the configurables the gin files name.
import tasks  # noqa: E402,F401  Registers the tasks whose vocabularies the gin files name.

STAGES = ("train", "infill_forward", "causal_gen")


def t5_config(config: network.NetworkConfig) -> transformers.T5Config:
  """The Hugging Face T5 v1.1 configuration of ``config``'s shape (no dropout)."""
  if config.position_scheme != "relative":
    raise SystemExit("the T5 peer needs NetworkConfig.position_scheme = 'relative'.")
  return transformers.T5Config(
      vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.head_dim,
      d_ff=config.d_ff, num_layers=config.num_encoder_layers,
      num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      dropout_rate=0.0, layer_norm_epsilon=config.layer_norm_epsilon,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
      pad_token_id=0, eos_token_id=1)


def synchronize(device: torch.device) -> Callable[[Any], None]:
  """Waits for the device's queued work (``bench_common.timed``'s ``sync``)."""
  def sync(_: Any) -> None:
    if device.type == "cuda":
      torch.cuda.synchronize(device)
  return sync


def peak_memory_bytes(device: torch.device) -> Optional[int]:
  return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def random_tokens(shape: tuple[int, ...], vocab_size: int, device: torch.device) -> torch.Tensor:
  generator = torch.Generator().manual_seed(0)
  return torch.randint(3, vocab_size, shape, generator=generator).to(device)


def train(model: Any, config: network.NetworkConfig, args: argparse.Namespace,
          device: torch.device, common: dict[str, Any]) -> None:
  """Adafactor steps on random tokens, fp32 parameters under bf16 autocast."""
  batch = args.batch_size
  inputs = random_tokens((batch, args.inputs_length), config.vocab_size, device)
  labels = random_tokens((batch, args.targets_length), config.vocab_size, device)
  optimizer = torch.optim.Adafactor(model.parameters(), lr=1e-3)
  step_model = torch.compile(model) if args.compile else model
  autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
              if config.dtype == "bfloat16" else contextlib.nullcontext())

  losses: list[torch.Tensor] = []

  def step() -> None:
    with autocast:
      loss = step_model(input_ids=inputs, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    losses[:] = [loss.detach()]

  start = time.perf_counter()
  first, warm = bench_common.timed(step, synchronize(device), args.warmup)
  steps = bench_common.repeats_within(
      warm, args.time_budget - (time.perf_counter() - start), args.steps)
  _, seconds = bench_common.timed(step, synchronize(device), steps)
  flops = batch * throughput.encoder_decoder_training_flops(config, args.inputs_length,
                                                            args.targets_length)
  bench_common.emit(
      "train_step", **common, precision="fp32 params, bf16 autocast"
      if config.dtype == "bfloat16" else "fp32", inputs_length=args.inputs_length,
      targets_length=args.targets_length, first_step_seconds=round(first, 2), timed_steps=steps,
      step_seconds=round(seconds, 5),
      tokens_per_second=round(batch * (args.inputs_length + args.targets_length) / seconds, 1),
      **bench_common.utilisation(flops / seconds, args.measured_peak_flops,
                                 bench_common.datasheet_peak(common["device"])),
      peak_memory_bytes=peak_memory_bytes(device), final_loss=float(losses[0].float()))


def inference_model(model: Any, config: network.NetworkConfig) -> Any:
  model.eval()
  return model.to(torch.bfloat16) if config.dtype == "bfloat16" else model


def infill_forward(model: Any, config: network.NetworkConfig, args: argparse.Namespace,
                   device: torch.device, common: dict[str, Any]) -> None:
  """One MASK-INFILL forward: ``[B, L + 2]`` encoder tokens, ``[B, 2]`` decoder tokens."""
  model = inference_model(model, config)
  forward_model = torch.compile(model) if args.compile else model
  encoder = random_tokens((args.batch_size, args.seq_len + 2), config.vocab_size, device)
  decoder = random_tokens((args.batch_size, 2), config.vocab_size, device)

  @torch.inference_mode()
  def forward() -> torch.Tensor:
    return forward_model(input_ids=encoder, decoder_input_ids=decoder).logits[:, 1]

  first, _ = bench_common.timed(forward, synchronize(device), 0)
  once, _ = bench_common.timed(forward, synchronize(device), 0)
  repeats = bench_common.repeats_within(once, args.time_budget / 2, args.repeats)
  _, seconds = bench_common.timed(forward, synchronize(device), repeats)
  flops = args.batch_size * throughput.encoder_decoder_training_flops(
      config, args.seq_len + 2, 2) / 3
  bench_common.emit(
      "infill_forward", **common, first_call_seconds=round(first, 2), timed_calls=repeats,
      seconds=round(seconds, 6), model_flops=flops,
      **bench_common.utilisation(flops / seconds, args.measured_peak_flops,
                                 bench_common.datasheet_peak(common["device"])),
      peak_memory_bytes=peak_memory_bytes(device))


def causal_gen(model: Any, config: network.NetworkConfig, args: argparse.Namespace,
               device: torch.device, common: dict[str, Any]) -> None:
  """``generate`` of exactly ``L`` tokens after a 2-token encoder input, KV cache on."""
  model = inference_model(model, config)
  encoder = random_tokens((args.batch_size, 2), config.vocab_size, device)

  def generate(new_tokens: int) -> torch.Tensor:
    with torch.inference_mode():
      return model.generate(input_ids=encoder, max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, do_sample=True, temperature=1.0,
                            top_k=0, top_p=1.0, use_cache=True)

  bench_common.timed(lambda: generate(4), synchronize(device), 0)
  start = time.perf_counter()
  tokens = generate(args.seq_len)
  synchronize(device)(tokens)
  seconds = time.perf_counter() - start
  new_tokens = tokens.shape[1] - 1  # After the decoder's start token.
  bench_common.emit(
      "causal_gen", **common, new_tokens=new_tokens, seconds=round(seconds, 4),
      tokens_per_second=round(args.batch_size * new_tokens / seconds, 1),
      peak_memory_bytes=peak_memory_bytes(device))


def main(argv: list[str]) -> None:
  gin_files, bindings, rest = gin_utils.split_gin_args(argv)
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("stage", choices=STAGES)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--inputs_length", type=int, default=1024)
  parser.add_argument("--targets_length", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--compile", action="store_true", help="torch.compile the model")
  bench_common.add_common_arguments(parser)
  args = parser.parse_args(rest)
  gin_utils.parse_gin(gin_files, ["MODEL_DIR='/tmp/glauber_bench'"] + bindings)
  ours = gin.query_parameter("train.model").scoped_configurable_fn()
  denoiser = getattr(ours, "denoiser", None)
  config = ours.network_config if denoiser is None else denoiser.network_config
  args.seq_len = getattr(ours, "seq_len", args.targets_length)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  with device:  # Initialised in place: 0.5B random parameters are slow on the host.
    model = transformers.T5ForConditionalGeneration(t5_config(config))
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
  common = {"system": "peer", "device": (torch.cuda.get_device_name(device)
                                         if device.type == "cuda" else "cpu"),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_compile": args.compile, "gin_files": gin_files, "bindings": bindings,
            "params": sum(p.numel() for p in model.parameters()),
            # transformers 5 ties T5's output head to the input embedding whatever the config
            # says: one vocab x d_model matrix fewer than ours, the same matmul FLOPs.
            "lm_head_tied": model.lm_head.weight is model.shared.weight,
            "vocab_size": config.vocab_size, "batch_size": args.batch_size,
            "seq_len": args.seq_len}
  {"train": train, "infill_forward": infill_forward,
   "causal_gen": causal_gen}[args.stage](model, config, args, device, common)


if __name__ == "__main__":
  main(sys.argv[1:])
