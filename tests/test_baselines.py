"""The baselines: the single stack (masks, KV cache), the causal LM, and MDLM (the absorbing
process on a single stack) on an exactly enumerable toy (the bound and the sampler against the
true distribution)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import (baselines, models, network, optimizers, partitioning, single_stack,
                         trainer, vocabularies)
from glauber_jax.processes import absorbing

import helpers

SEQ_LEN = 8
VOCAB = vocabularies.ByteVocabulary()
CONFIG = network.NetworkConfig(
    vocab_size=VOCAB.vocab_size, d_model=32, num_heads=2, head_dim=16, d_ff=48,
    num_encoder_layers=2, max_encoder_length=SEQ_LEN, position_scheme="rope", dtype="float32")


def text_tokens(batch: int, seed: int = 0, length: int = SEQ_LEN) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return (3 + rng.integers(ord("a"), ord("z") + 1, (batch, length))).astype(np.int32)


def init(module: single_stack.SingleStack, tokens: jax.Array, time: jax.Array | None = None
         ) -> dict:
  return nn.meta.unbox(module.init(jax.random.PRNGKey(0), tokens, time)["params"])


def model_params(model: models.BaseModel) -> dict:
  shapes = model.input_shapes(2, {"targets": SEQ_LEN})
  return nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"])


# ---- The single stack --------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["rope", "relative"])
def test_shapes_and_attention_masks(scheme: str) -> None:
  tokens = jnp.asarray(text_tokens(2))
  edited = tokens.at[:, 5:].set(7)
  for causal in (True, False):
    module = single_stack.SingleStack(dataclasses.replace(CONFIG, position_scheme=scheme),
                                      causal=causal)
    params = init(module, tokens)
    logits = module.apply({"params": params}, tokens)
    assert logits.shape == (2, SEQ_LEN, VOCAB.vocab_size) and logits.dtype == jnp.float32
    other = module.apply({"params": params}, edited)
    past_same = np.allclose(logits[:, :5], other[:, :5], atol=1e-6)
    assert past_same == causal  # Future tokens reach the past only without the causal mask.
    assert not np.allclose(logits[:, 5:], other[:, 5:], atol=1e-6)


def test_time_conditioning_is_optional_and_checked() -> None:
  module = single_stack.SingleStack(dataclasses.replace(CONFIG, time_conditioning=True,
                                                        time_embed_dim=16), causal=False)
  tokens = jnp.asarray(text_tokens(2))
  params = init(module, tokens, jnp.ones((2,)))
  assert "time_embedding" in params and "modulation" in params["layers_0"]
  assert module.apply({"params": params}, tokens, jnp.array([0.2, 0.9])).shape == (
      2, SEQ_LEN, VOCAB.vocab_size)
  with pytest.raises(ValueError, match="needs `time`"):
    module.apply({"params": params}, tokens)
  plain = single_stack.SingleStack(CONFIG, causal=False)
  with pytest.raises(ValueError, match="no time conditioning"):
    plain.apply({"params": init(plain, tokens)}, tokens, jnp.ones((2,)))
  with pytest.raises(ValueError, match="causal"):
    plain.apply({"params": init(plain, tokens)}, tokens, decode=True, mutable=["cache"])


@pytest.mark.parametrize("scheme", ["rope", "relative"])
def test_cached_decoding_equals_recomputation(scheme: str) -> None:
  module = single_stack.SingleStack(dataclasses.replace(CONFIG, position_scheme=scheme),
                                    causal=True)
  tokens = jnp.asarray(text_tokens(3, seed=1))
  params = init(module, tokens)
  full = module.apply({"params": params}, tokens)
  # A 3-token prefill creates the cache, then one token per call.
  logits, variables = module.apply({"params": params}, tokens[:, :3], decode=True,
                                   mutable=["cache"])
  pieces = [logits]
  for i in range(3, SEQ_LEN):
    logits, variables = module.apply({"params": params, "cache": variables["cache"]},
                                     tokens[:, i:i + 1], decode=True, mutable=["cache"])
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=0, atol=2e-5)


# ---- The causal LM -----------------------------------------------------------------------------


def test_causal_lm_sampling_and_scoring() -> None:
  model = baselines.CausalLMModel(CONFIG, VOCAB, SEQ_LEN)
  params = model_params(model)
  prefix = jnp.broadcast_to(jnp.asarray(VOCAB.encode("To")), (3, 2))
  greedy = np.asarray(model.generate(params, jax.random.PRNGKey(0), 3, prefix, temperature=0.0))
  np.testing.assert_array_equal(greedy[:, :2], np.asarray(prefix))
  # Cached greedy decoding equals greedy decoding by full recomputation.
  full = np.asarray(model.logits(params, jnp.asarray(greedy)))
  full = np.where(model.allowed_tokens, full, -np.inf)
  np.testing.assert_array_equal(greedy[:, 2:], np.argmax(full, axis=-1)[:, 2:])
  no_draft, draws = model.sample(params, jax.random.PRNGKey(5), 3, prefix)
  assert no_draft is None
  np.testing.assert_array_equal(draws, model.generate(params, jax.random.PRNGKey(5), 3, prefix))
  assert not VOCAB.special_token_mask()[np.asarray(draws)].any()
  assert (np.asarray(model.generate(params, jax.random.PRNGKey(6), 3, prefix)) != draws).any()
  # The score is the sum of next-token log-probabilities, start id shifted in.
  tokens = jnp.asarray(text_tokens(2))
  log_probs = jax.nn.log_softmax(model.module.apply(
      {"params": params}, jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))), axis=-1)
  expected = np.take_along_axis(np.asarray(log_probs), np.asarray(tokens)[..., None],
                                -1).sum((1, 2))
  np.testing.assert_allclose(model.score_batch(params, {"targets": tokens}), expected, rtol=1e-5)
  loss, sums = model.loss_fn(params, {"targets": tokens}, None)
  assert float(sums["weight_sum"]) == tokens.size
  np.testing.assert_allclose(float(loss - sums["z_loss_sum"]), -expected.sum(), rtol=1e-5)


# ---- Training on a learnable pattern -----------------------------------------------------------


def pattern_batch(batch: int, seed: int) -> dict[str, jax.Array]:
  """Runs of consecutive letters: every token is determined by any other."""
  start = np.random.default_rng(seed).integers(0, 26, (batch, 1))
  return {"targets": jnp.asarray(3 + ord("a") + (start + np.arange(SEQ_LEN)) % 26, jnp.int32)}


@pytest.mark.parametrize("kind", ["causal_lm", "mdlm"])
def test_loss_falls_on_a_learnable_pattern(kind: str) -> None:
  model = (baselines.CausalLMModel(CONFIG, VOCAB, SEQ_LEN) if kind == "causal_lm"
           else helpers.mdlm(CONFIG, VOCAB, SEQ_LEN, num_steps=8))
  tiny = trainer.Trainer(model=model, partitioner=partitioning.Partitioner(mesh_shape=(1, 1, 1)),
                         learning_rate_fn=optimizers.learning_rate_schedule(
                             peak_learning_rate=1e-2, warmup_steps=1, total_steps=100),
                         optimizer_fn=optimizers.create_optimizer)
  state = tiny.initialize(model.input_shapes(32, {"targets": SEQ_LEN}))
  losses = []
  for step in range(40):
    state, metrics = tiny.train_step(state, pattern_batch(32, step))
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


# ---- MDLM on an exactly enumerable toy ---------------------------------------------------------

# Two positions over three text ids 0, 1, 2; id 3 is the mask.
TOY_MASK = 3
TOY_TABLE = np.array([[0.30, 0.05, 0.10],
                      [0.02, 0.20, 0.08],
                      [0.15, 0.04, 0.06]])
TOY_SEQUENCES = np.array([[a, b] for a in range(3) for b in range(3)], np.int32)
TOY_NLL = -np.log(TOY_TABLE.reshape(-1))


def exact_toy_logits(noisy: jax.Array, times: jax.Array, uniform_mix: float = 0.0) -> jax.Array:
  """The true posterior of each position given the visible one (what a perfect MDLM denoiser
  outputs), optionally mixed with uniform; the mask logit is arbitrary (SUBS removes it)."""
  del times
  table = jnp.asarray(TOY_TABLE, jnp.float32)
  first, second = noisy[:, 0], noisy[:, 1]
  p_first = jnp.where((second == TOY_MASK)[:, None], table.sum(1)[None],
                      table[:, jnp.minimum(second, 2)].T)
  p_second = jnp.where((first == TOY_MASK)[:, None], table.sum(0)[None],
                       table[jnp.minimum(first, 2), :])
  probs = jnp.stack([p_first, p_second], axis=1)
  probs = (1 - uniform_mix) * probs / probs.sum(-1, keepdims=True) + uniform_mix / 3
  return jnp.concatenate([jnp.log(probs), jnp.zeros(probs.shape[:-1] + (1,))], axis=-1)


def quadrature_nelbo(logits_fn) -> np.ndarray:
  """The NELBO of each toy sequence: every mask pattern, t by exact Gauss-Legendre quadrature
  (the integrand is a polynomial in t)."""
  nodes, weights = np.polynomial.legendre.leggauss(4)
  times, weights = (nodes + 1) / 2, weights / 2
  patterns = np.array([[a, b] for a in (0, 1) for b in (0, 1)], bool)
  total = np.zeros(len(TOY_SEQUENCES))
  for t, w in zip(times, weights):
    for pattern in patterns:
      tokens = jnp.asarray(TOY_SEQUENCES)
      masked = jnp.broadcast_to(jnp.asarray(pattern), tokens.shape)
      noisy = jnp.where(masked, TOY_MASK, tokens)
      t_batch = jnp.full((len(tokens),), t, jnp.float32)
      terms = absorbing.nelbo_terms(absorbing.subs_log_probs(logits_fn(noisy, t_batch), TOY_MASK),
                                    tokens, masked, t_batch[:, None])
      probability = t ** pattern.sum() * (1 - t) ** (2 - pattern.sum())
      total += w * probability * np.asarray(terms)
  return total


def test_mdlm_nelbo_on_the_toy_is_exact_for_the_true_posterior_and_a_bound_otherwise() -> None:
  exact = quadrature_nelbo(exact_toy_logits)
  np.testing.assert_allclose(exact, TOY_NLL, rtol=1e-5)  # NELBO = -log p(x) exactly.
  data = TOY_TABLE.reshape(-1)
  entropy = np.sum(data * TOY_NLL)
  for mix in (0.1, 0.5):  # A worse denoiser: the expected bound exceeds the entropy.
    worse = quadrature_nelbo(lambda z, t, mix=mix: exact_toy_logits(z, t, mix))
    assert np.sum(data * worse) > entropy + 1e-3
  # The Monte Carlo estimator (t in (0, 1], stratified over the batch) agrees with the exact
  # value. Rows cycle through the sequences, so each one's copies spread over the times.
  tokens = jnp.asarray(np.tile(TOY_SEQUENCES, (4096, 1)))
  draws = np.concatenate([np.asarray(absorbing.nelbo(
      jax.random.PRNGKey(seed), tokens, exact_toy_logits, TOY_MASK)).reshape(-1, 9).T
                          for seed in range(4)], axis=1)
  error = np.abs(draws.mean(1) - TOY_NLL)
  assert (error < 5 * draws.std(1) / np.sqrt(draws.shape[1]) + 1e-3).all(), error


def test_mdlm_sampler_on_the_toy_reproduces_the_data_distribution() -> None:
  allowed = jnp.array([True, True, True, False])
  initial = jnp.full((40000, 2), TOY_MASK, jnp.int32)
  samples = np.asarray(absorbing.ancestral_sample(jax.random.PRNGKey(0), exact_toy_logits,
                                                  initial, 256, TOY_MASK, allowed))
  assert ((samples >= 0) & (samples < 3)).all()  # Never the mask.
  counts = np.bincount(samples[:, 0] * 3 + samples[:, 1], minlength=9) / len(samples)
  total_variation = 0.5 * np.abs(counts - TOY_TABLE.reshape(-1)).sum()
  assert total_variation < 0.03, total_variation
  again = absorbing.ancestral_sample(jax.random.PRNGKey(0), exact_toy_logits, initial[:64], 16,
                                     TOY_MASK, allowed)
  np.testing.assert_array_equal(again, absorbing.ancestral_sample(
      jax.random.PRNGKey(0), exact_toy_logits, initial[:64], 16, TOY_MASK, allowed))
  assert (np.asarray(again) != np.asarray(absorbing.ancestral_sample(
      jax.random.PRNGKey(1), exact_toy_logits, initial[:64], 16, TOY_MASK, allowed))).any()


def test_mdlm_model_sampling_scoring_and_loss() -> None:
  model = helpers.mdlm(CONFIG, VOCAB, SEQ_LEN, num_steps=6)
  assert model.denoiser.special_ids.mask == VOCAB.sentinel_id(0)
  params = model_params(model)
  prefix = jnp.broadcast_to(jnp.asarray(VOCAB.encode("To")), (3, 2))
  draws = model.sample(params, jax.random.PRNGKey(0), 3, prefix).final
  np.testing.assert_array_equal(draws, model.sample(params, jax.random.PRNGKey(0), 3, prefix,
                                                    num_steps=6).final)  # The default N.
  np.testing.assert_array_equal(np.asarray(draws[:, :2]), np.asarray(prefix))
  assert draws.shape == (3, SEQ_LEN)
  assert not VOCAB.special_token_mask()[np.asarray(draws)].any()
  other = model.sample(params, jax.random.PRNGKey(1), 3, prefix, num_steps=3, top_k=5).final
  assert (np.asarray(other) != np.asarray(draws)).any()
  tokens = {"targets": jnp.asarray(text_tokens(4))}
  bound = np.asarray(model.score_batch(params, tokens))  # One draw: 0 when nothing is masked.
  assert bound.shape == (4,) and np.isfinite(bound).all() and (bound <= 0).all()
  np.testing.assert_array_equal(
      bound, model.likelihood_bound(params, tokens["targets"], jax.random.PRNGKey(0)))
  averaged = np.asarray(model.process.elbo(model.denoiser, params, tokens["targets"],
                                           jax.random.PRNGKey(0), 8))
  assert np.isfinite(averaged).all() and (averaged < 0).all()
  batch, _ = model.prepare_batch(params, None, tokens, jnp.zeros((), jnp.int32),
                                 jax.random.PRNGKey(2))
  loss, sums = model.loss_fn(params, batch, None)
  assert float(sums["weight_sum"]) == 4 * SEQ_LEN
  assert 0 < float(sums["masked_sum"]) <= 4 * SEQ_LEN and np.isfinite(float(loss))
  assert model.checkpoint_metadata() == {"process": "absorbing", "num_steps": 6}


def test_bad_configs_are_named() -> None:
  with pytest.raises(ValueError, match="time_conditioning = False"):
    baselines.CausalLMModel(dataclasses.replace(CONFIG, time_conditioning=True), VOCAB, SEQ_LEN)
  with pytest.raises(ValueError, match="vocab_size"):
    helpers.mdlm(dataclasses.replace(CONFIG, vocab_size=512), VOCAB, SEQ_LEN)
  with pytest.raises(ValueError, match="max_length"):
    helpers.mdlm(CONFIG, VOCAB, SEQ_LEN + 1)
  with pytest.raises(ValueError, match="max_encoder_length"):
    baselines.CausalLMModel(CONFIG, VOCAB, SEQ_LEN + 1)
  with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
    baselines.CausalLMModel(CONFIG, VOCAB, SEQ_LEN).input_shapes(2, {"targets": 4})
  with pytest.raises(ValueError, match=r"no option \['num_rounds'\].*temperature"):
    model = baselines.CausalLMModel(CONFIG, VOCAB, SEQ_LEN)
    model.sample(model_params(model), jax.random.PRNGKey(0), 2, num_rounds=1)
  with pytest.raises(ValueError, match="num_steps must be >= 1"):
    helpers.mdlm(CONFIG, VOCAB, SEQ_LEN).sampler_options({"num_steps": 0})
  with pytest.raises(ValueError, match="num_encoder_layers"):
    single_stack.SingleStack(dataclasses.replace(CONFIG, num_encoder_layers=0), causal=True)
