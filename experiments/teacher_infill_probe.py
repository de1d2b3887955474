r"""Probe of the UL2 teacher's MASK-INFILL: which optimizer and read-out let a tiny
encoder-decoder learn a context-dependent single-site infill?

    python experiments/teacher_infill_probe.py --readout=decoder --optimizer=adamw \
        --learning_rate=3e-3 [--steps=800]

Trains the tiny network of ``gin/ul2_tiny.gin`` (2 + 2 layers, d_model 128, T5 relative bias)
on MASK-INFILL examples in exactly the chain's format (``denoisers.mask_infill``: one masked
site, uniform over the sequence) of a 16-letter Markov chain (``synthetic.HiddenMarkovLanguage
.markov_chain``, L = 32, batch 64, constant learning rate, no warm-up), and prints every 100
steps the held-out infill cross entropy next to the unigram entropy and the exact infill
entropy. ``--readout=decoder`` reads the decoder's ``[start, sentinel_0]`` position (T5's span
format); ``encoder`` the infill head on the encoder output at the masked site.

Results and the reading: docs/results.md (the teacher that could not infill).
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from glauber_jax import denoisers, encoder_decoder, network, synthetic, vocabularies

LETTERS, SEQ_LEN, BATCH = 16, 32, 64


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--readout", choices=network.INFILL_READOUTS, default="decoder")
  parser.add_argument("--optimizer", choices=("adamw", "adafactor"), default="adamw")
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  parser.add_argument("--steps", type=int, default=800)
  args = parser.parse_args(argv)

  language = synthetic.HiddenMarkovLanguage.markov_chain(LETTERS, seed=0, concentration=0.2)
  vocab = vocabularies.LetterVocabulary(synthetic.alphabet(LETTERS))
  ids = denoisers.SpecialIds.from_vocabulary(vocab)
  config = network.NetworkConfig(
      vocab_size=vocab.vocab_size, d_model=128, num_heads=4, head_dim=32, d_ff=384,
      num_encoder_layers=2, num_decoder_layers=2, max_encoder_length=SEQ_LEN + 2,
      max_decoder_length=2, dtype="float32", infill_readout=args.readout)
  module = encoder_decoder.Transformer(config)

  def logits_of(params, letters, sites):
    features = denoisers.mask_infill(letters + 3, sites, ids, xp=jnp)
    if args.readout == "encoder":
      logits = module.apply({"params": params}, features["encoder_input_tokens"], sites + 1,
                            method=encoder_decoder.Transformer.infill)
    else:
      logits = module.apply({"params": params}, features["encoder_input_tokens"],
                            features["decoder_input_tokens"])[:, 1]
    return logits[:, 3:3 + LETTERS]

  def loss_fn(params, letters, sites):
    log_probs = jax.nn.log_softmax(logits_of(params, letters, sites))
    values = letters[jnp.arange(letters.shape[0]), sites]
    return -jnp.mean(jnp.take_along_axis(log_probs, values[:, None], axis=-1))

  dummy = jnp.ones((1, SEQ_LEN + 2), jnp.int32)
  params = module.init(jax.random.PRNGKey(0), dummy, dummy[:, :2])["params"]
  optimizer = (optax.adamw(args.learning_rate, weight_decay=0.0) if args.optimizer == "adamw"
               else optax.adafactor(args.learning_rate))
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, letters, sites):
    loss, grads = jax.value_and_grad(loss_fn)(params, letters, sites)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(0)
  held_out = language.sample(np.random.default_rng(1), 2048, SEQ_LEN)
  held_sites = np.random.default_rng(2).integers(0, SEQ_LEN, 2048)
  exact = -language.infill_log_probs(held_out, held_sites)[np.arange(2048),
                                                          held_out[np.arange(2048), held_sites]]
  print(f"unigram {language.unigram_entropy():.3f}  exact infill {exact.mean():.3f} nats")
  evaluate = jax.jit(loss_fn)
  started = time.perf_counter()
  for i in range(args.steps + 1):
    if i % 100 == 0:
      held = float(evaluate(params, jnp.asarray(held_out), jnp.asarray(held_sites, jnp.int32)))
      print(f"step {i:5d}  held-out infill {held:.3f}  ({time.perf_counter() - started:.0f} s)",
            flush=True)
    letters = jnp.asarray(language.sample(rng, BATCH, SEQ_LEN))
    sites = jnp.asarray(rng.integers(0, SEQ_LEN, BATCH), jnp.int32)
    params, opt_state, _ = step(params, opt_state, letters, sites)


if __name__ == "__main__":
  main()
