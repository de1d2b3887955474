r"""Probe of MDLM's early plateau on Shakespeare: does the denoiser learn to use its context?

    python experiments/mdlm_plateau.py --variant=nelbo [--steps=400] [--learning_rate=3e-3]

Trains the tiny single stack of ``gin/mdlm_tiny.gin`` (4 layers, d_model 128, SentencePiece 4k,
L = 64, batch 32, AdamW, warmup 50 + cosine, clipping at 1) with one of these losses and
prints, every 100 steps, the masked cross entropy on 128 held-out sequences with 15% of the
tokens masked (the unigram entropy of the corpus is about 6.4 nats):

- ``nelbo``: MDLM's loss (``AbsorbingProcess.loss``: ``t ~ U(1e-3, 1]``, weight ``1/t``);
- ``masked_ce``: plain cross entropy on masked tokens at a fixed ``t = 0.15`` (BERT-like);
- ``duplicated``: ``masked_ce`` on text whose every token is repeated (``a a b b ...``), where a
  masked token can be copied from a neighbour whenever that one is visible;
- ``causal_attention``: ``masked_ce`` with a causal attention mask (left context only);
- ``causal_lm``: the causal LM baseline (``CausalLMModel``), for comparison; its number is the
  next-token cross entropy.

Results and the reading: docs/results.md (MDLM's plateau).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import tasks  # noqa: F401  Registers shakespeare_lm.
from glauber_jax import baselines, data, denoiser_networks, models, network, single_stack
from glauber_jax.processes import absorbing, absorbing_process

VARIANTS = ("nelbo", "masked_ce", "duplicated", "causal_attention", "causal_lm")
SEQ_LEN, BATCH, EVAL_MASK_RATE = 64, 32, 0.15


def masked_cross_entropy(model: models.DiffusionModel, params: dict, tokens: jax.Array,
                         rng: jax.Array) -> jax.Array:
  """Mean cross entropy of the masked tokens, ``EVAL_MASK_RATE`` of them masked."""
  times = jnp.full((tokens.shape[0],), EVAL_MASK_RATE)
  mask_id = model.denoiser.special_ids.mask
  noisy, masked = absorbing.forward_mask(rng, tokens, times[:, None], mask_id)
  log_probs = absorbing.subs_log_probs(model.denoiser.logits(params, noisy, times), mask_id)
  token_log_probs = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  return -jnp.sum(jnp.where(masked, token_log_probs, 0.0)) / jnp.sum(masked)


def main(argv: Sequence[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", choices=VARIANTS, required=True)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  args = parser.parse_args(argv)
  vocab = data.task_vocabulary("shakespeare_lm")
  config = network.NetworkConfig(
      vocab_size=vocab.vocab_size, d_model=128, num_heads=4, head_dim=32, d_ff=384,
      num_encoder_layers=4, max_encoder_length=SEQ_LEN, position_scheme="rope", dtype="float32")
  if args.variant == "causal_lm":
    model = baselines.CausalLMModel(config, vocab, SEQ_LEN)
  else:
    model = models.DiffusionModel(denoiser_networks.SingleStackDenoiser(config, vocab),
                                  absorbing_process.AbsorbingProcess(SEQ_LEN))
    if args.variant == "causal_attention":  # The same loss, left context only.
      model.denoiser.module = single_stack.SingleStack(config, causal=True)
  duplicate = args.variant == "duplicated"

  def prepare(tokens) -> jax.Array:
    tokens = jnp.asarray(tokens)
    return jnp.repeat(tokens[:, :SEQ_LEN // 2], 2, axis=1) if duplicate else tokens

  train_batches = data.get_batch_iterator("shakespeare_lm", "train", {"targets": SEQ_LEN}, BATCH)
  held_out = prepare(next(data.get_batch_iterator(
      "shakespeare_lm", "validation", {"targets": SEQ_LEN}, 128, seed=1))["targets"])
  params = nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), model.input_shapes(2, {"targets": SEQ_LEN}))["params"])
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.learning_rate, 50, args.steps)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
  opt_state = optimizer.init(params)

  def loss_fn(params: dict, tokens: jax.Array, rng: jax.Array) -> jax.Array:
    if args.variant in ("nelbo", "causal_lm"):
      batch, _ = model.prepare_batch(params, None, {"targets": tokens}, jnp.zeros((), jnp.int32),
                                     rng)
      loss, sums = model.loss_fn(params, batch, rng)
      return loss / sums["weight_sum"]
    return masked_cross_entropy(model, params, tokens, rng)

  @jax.jit
  def train_step(params, opt_state, tokens, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def evaluate(params):
    if args.variant == "causal_lm":
      return -jnp.mean(model.token_log_probs(params, held_out))
    return masked_cross_entropy(model, params, held_out, jax.random.PRNGKey(5))

  start = time.time()
  for step in range(args.steps + 1):
    if step % 100 == 0:
      print(f"{args.variant} step {step}: held-out cross entropy {float(evaluate(params)):.3f} "
            f"nats ({time.time() - start:.0f} s)", flush=True)
    if step < args.steps:
      params, opt_state, _ = train_step(params, opt_state, prepare(next(train_batches)["targets"]),
                                        jax.random.PRNGKey(step))


if __name__ == "__main__":
  main(sys.argv[1:])
