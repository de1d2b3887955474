"""The UL2 teacher must infill: its MASK-INFILL output has to depend on the context.

The Glauber rounds redraw every site from MASK-INFILL conditionals, so a teacher whose infill
ignores the context turns any draft into unigram draws (docs/results.md). This trains a tiny UL2
through the library's own model, denoiser and optimizer on single-site examples of a Markov
language, and checks the learnt infill against the exact conditional: far below the unigram
entropy, and changed when the neighbours change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from glauber_jax import (denoisers, encoder_decoder, models, network, optimizers, synthetic,
                         vocabularies)

LETTERS, LENGTH, BATCH, STEPS = 8, 12, 64, 250


def _setup():
  language = synthetic.HiddenMarkovLanguage.markov_chain(LETTERS, seed=0, concentration=0.3)
  vocab = vocabularies.LetterVocabulary(synthetic.alphabet(LETTERS))
  config = network.NetworkConfig(
      vocab_size=vocab.vocab_size, d_model=128, num_heads=4, head_dim=32, d_ff=256,
      num_encoder_layers=2, num_decoder_layers=1, max_encoder_length=LENGTH + 2,
      max_decoder_length=4, dtype="float32", infill_readout="encoder")
  model = models.EncoderDecoderModel(config, vocabulary=vocab)
  return language, vocab, model


def _batch(language, vocab, rng, size):
  letters = language.sample(rng, size, LENGTH)
  single = denoisers.DenoiserConfig("I", "[NLU]", single_site=True)
  examples = [denoisers.ul2_example(row + 3, rng, [single], vocab, LENGTH + 2, 3)
              for row in letters]
  return letters, {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}


def _infill_log_probs(model, params, vocab, letters, sites):
  ids = denoisers.SpecialIds.from_vocabulary(vocab)
  features = denoisers.mask_infill(jnp.asarray(letters + 3), jnp.asarray(sites), ids, xp=jnp)
  logits = model.module.apply({"params": params}, features["encoder_input_tokens"],
                              jnp.asarray(sites) + 1, method=encoder_decoder.Transformer.infill)
  return np.asarray(jax.nn.log_softmax(logits[:, 3:3 + LETTERS]), np.float64)


def test_single_site_examples_are_the_mask_infill_format_and_reach_site_0():
  _, vocab, _ = _setup()
  ids = denoisers.SpecialIds.from_vocabulary(vocab)
  rng = np.random.default_rng(0)
  single = denoisers.DenoiserConfig("I", "[NLU]", single_site=True)
  tokens = np.arange(3, 3 + LENGTH)
  seen = set()
  for _ in range(200):
    example = denoisers.ul2_example(tokens, rng, [single], vocab, LENGTH + 2, 3)
    site = int(np.flatnonzero(example["encoder_input_tokens"] == ids.mask)[0]) - 1
    seen.add(site)
    expected = denoisers.mask_infill(tokens, site, ids)
    np.testing.assert_array_equal(example["encoder_input_tokens"],
                                  expected["encoder_input_tokens"])
    np.testing.assert_array_equal(example["decoder_target_tokens"][:2],
                                  expected["decoder_target_tokens"])
  assert seen == set(range(LENGTH))


def test_tiny_ul2_learns_a_context_dependent_infill():
  language, vocab, model = _setup()
  rng = np.random.default_rng(1)
  _, first = _batch(language, vocab, rng, BATCH)
  shapes = {k: v.shape for k, v in first.items()}
  params = model.get_initial_variables(jax.random.PRNGKey(0), {
      "encoder_input_tokens": shapes["encoder_input_tokens"],
      "decoder_input_tokens": shapes["decoder_input_tokens"]})["params"]
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  optimizer = optimizers.create_optimizer(
      "adafactor", optimizers.learning_rate_schedule(1e-2, 10, "constant", STEPS), 0.0)

  @jax.jit
  def step(params, opt_state, batch):
    grads, sums = jax.grad(model.loss_fn, has_aux=True)(params, batch, None)
    grads = jax.tree.map(lambda g: g / sums["weight_sum"], grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for _ in range(STEPS):
    _, batch = _batch(language, vocab, rng, BATCH)
    params, opt_state = step(params, opt_state, batch)

  letters = language.sample(np.random.default_rng(2), 512, LENGTH)
  sites = np.random.default_rng(3).integers(0, LENGTH, 512)
  learnt = _infill_log_probs(model, params, vocab, letters, sites)
  exact = language.infill_log_probs(letters, sites)
  values = letters[np.arange(512), sites]
  learnt_ce = -learnt[np.arange(512), values].mean()
  exact_ce = -exact[np.arange(512), values].mean()
  unigram = language.unigram_entropy()
  assert exact_ce < unigram - 0.5  # The language rewards context.
  # Most of the way (70%) from the unigram level to the exact conditional.
  assert learnt_ce < unigram - 0.7 * (unigram - exact_ce), (learnt_ce, exact_ce, unigram)
  # The output depends on the context: other neighbours, other distribution.
  shuffled = letters.copy()
  shuffled[:, :] = letters[np.random.default_rng(4).permutation(512)]
  shuffled[np.arange(512), sites] = values
  swapped = _infill_log_probs(model, params, vocab, shuffled, sites)
  kl = (np.exp(learnt) * (learnt - swapped)).sum(-1).mean()
  assert kl > 0.1, kl
