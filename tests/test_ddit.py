"""The reference DDiT shape (``glauber_jax/ddit.py``): test 18 of ``/work/shared/design/
hybrid.md`` section 7 (the parameter counts of the reference configs, from ``jax.eval_shape``),
the network as a hybrid denoiser at toy size (shapes, zero-initialised output, per-token
conditioning, the processes' loss / bound / sampler), and the medium gin files."""

from __future__ import annotations

import dataclasses
import importlib

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import ddit, partitioning, sampling
from glauber_jax.processes import hybrid_process, hyperschedules
from test_glauber_end_to_end import VOCAB

SEQ_LEN = 8
TINY = ddit.DDiTConfig(vocab_size=VOCAB.vocab_size, hidden_size=32, num_blocks=2, num_heads=2,
                       cond_dim=16, frequency_dim=32, dropout_rate=0.0, max_length=SEQ_LEN,
                       dtype="float32")


@pytest.mark.parametrize("time_conditioning, expected", [(False, 162_246_482),
                                                         (True, 169_429_074)])
def test_reference_parameter_counts(time_conditioning: bool, expected: int) -> None:
  """Test 18 at V = 50258: embedding 38,598,144; per block 7,083,264 (two LN weights 1,536,
  QKV 1,769,472, out 589,824, MLP with biases 4,722,432); final LN 768 and Linear with bias
  38,648,402. Gamma adds the TimestepEmbedder (49,408) and 12 adaLN with bias (594,432 each)."""
  config = ddit.DDiTConfig(time_conditioning=time_conditioning)
  assert ddit.parameter_count(config) == expected


def test_every_parameter_maps_to_the_mesh() -> None:
  """The logical axis names of every parameter resolve under the partitioner's rules (no name
  twice in one array), as ``train`` needs."""
  config = ddit.DDiTConfig(time_conditioning=True, num_blocks=1)
  shapes = jax.eval_shape(lambda: ddit.DDiT(config).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1,), jnp.float32)))
  specs = nn.logical_to_mesh(nn.get_partition_spec(shapes["params"]),
                             partitioning.LOGICAL_AXIS_RULES)
  assert tuple(specs["token_embedder"]) == ("tensor", "fsdp")  # ("vocab", "embed")


def _noisy(seed: int = 0) -> jax.Array:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, VOCAB.vocab_size, (2, SEQ_LEN))
  return jnp.asarray(np.where(rng.random(tokens.shape) < 0.5, VOCAB.sentinel_id(0), tokens),
                     jnp.int32)


def test_gamma_network_conditions_per_token() -> None:
  """Zero-initialised output and adaLN; with perturbed parameters a per-token time equal to the
  row's time gives the per-sequence logits, and changing one position's time changes them."""
  denoiser = ddit.DDiTDenoiser(dataclasses.replace(TINY, time_conditioning=True), VOCAB)
  params = denoiser.init_variables(jax.random.PRNGKey(0), 2, SEQ_LEN)["params"]
  logits = jax.jit(denoiser.logits)
  noisy = _noisy()
  times = jnp.array([0.3, 0.7])
  assert logits(params, noisy, times).shape == (2, SEQ_LEN, VOCAB.vocab_size)
  assert float(jnp.max(jnp.abs(logits(params, noisy, times)))) == 0.0
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree_util.tree_unflatten(tree, [
      leaf + 0.1 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)])
  per_row = logits(params, noisy, times)
  per_token = jnp.broadcast_to(times[:, None], noisy.shape)
  np.testing.assert_allclose(logits(params, noisy, per_token), per_row, atol=1e-5)
  moved = logits(params, noisy, per_token.at[:, 0].set(0.95))
  assert float(jnp.max(jnp.abs(moved - per_row))) > 1e-3


def test_weighted_embedding_mixes_in_the_mask_embedding() -> None:
  """Eq. 12 (test 17 in the network): weight 0 is the plain embedding, weight 1 reads every
  position as MASK; the denoiser's weight grows with each position's sigma."""
  config = dataclasses.replace(TINY, time_conditioning=True)
  module = ddit.DDiT(config)
  noisy, mask_id = _noisy(3), VOCAB.sentinel_id(0)
  time = jnp.array([0.5, 2.0])
  params = module.init(jax.random.PRNGKey(0), noisy, time)["params"]
  params = jax.tree_util.tree_map(lambda leaf: leaf + 0.05, params)
  apply = jax.jit(lambda tokens, weight: module.apply({"params": params}, tokens, time,
                                                      mask_weight=weight, mask_id=mask_id))
  np.testing.assert_allclose(apply(noisy, jnp.zeros(2)),
                             module.apply({"params": params}, noisy, time), atol=1e-5)
  np.testing.assert_allclose(apply(noisy, jnp.ones((2, SEQ_LEN))),
                             apply(jnp.full_like(noisy, mask_id), jnp.zeros(2)), atol=1e-5)
  denoiser = ddit.DDiTDenoiser(config, VOCAB, weighted_embedding_gamma=0.5)
  weight = denoiser._time_inputs(jnp.array([[0.0, 0.5, 0.99]]))["mask_weight"]
  assert float(weight[0, 0]) == 0.0 and 0 < float(weight[0, 1]) < float(weight[0, 2]) < 1


def test_epsilon_masked_logits_with_a_full_mask_are_the_logits() -> None:
  denoiser = ddit.DDiTDenoiser(TINY, VOCAB)
  params = denoiser.init_variables(jax.random.PRNGKey(0), 2, SEQ_LEN)["params"]
  params = jax.tree_util.tree_map(lambda leaf: leaf + 0.05, params)
  noisy = _noisy(1)
  full = jnp.ones((SEQ_LEN, SEQ_LEN), bool)
  np.testing.assert_allclose(denoiser.masked_logits(params, noisy, full),
                             denoiser.logits(params, noisy, jnp.zeros((2,))), atol=1e-5)


def test_cached_block_logits_equal_the_masked_forward() -> None:
  """Test 7 for the DDiT: block decoding with the KV cache gives the logits of the uncached
  forward under a block schedule's block-causal mask (float32, 1e-5)."""
  denoiser = ddit.DDiTDenoiser(TINY, VOCAB)
  params = denoiser.init_variables(jax.random.PRNGKey(0), 2, SEQ_LEN)["params"]
  params = jax.tree_util.tree_map(lambda leaf: leaf + 0.05, params)  # Nonzero output layer.
  width = 4
  schedule = hyperschedules.make("block", SEQ_LEN, 1, width=width)
  tokens = _noisy(2)
  block_logits = jax.jit(denoiser.block_logits)
  cache = None
  for block in range(SEQ_LEN // width):
    lo, hi = block * width, (block + 1) * width
    cached, cache = block_logits(params, cache, tokens[:, lo:hi])
    mask = jnp.asarray(schedule.attention_mask(block + 1, "block_causal"))
    full = denoiser.masked_logits(params, tokens, mask)
    np.testing.assert_allclose(cached, full[:, lo:hi], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["epsilon", "gamma"])
def test_ddit_drives_the_hybrid_processes(kind: str) -> None:
  """Training batch, loss with its gradient, one bound draw and a flat sample of the toy DDiT."""
  gamma = kind == "gamma"
  denoiser = ddit.DDiTDenoiser(dataclasses.replace(TINY, time_conditioning=gamma), VOCAB)
  process = (hybrid_process.GammaHybridProcess(SEQ_LEN, num_levels=4) if gamma
             else hybrid_process.EpsilonHybridProcess(SEQ_LEN, num_levels=4))
  process.check_denoiser(denoiser)
  params = denoiser.init_variables(jax.random.PRNGKey(0), 2, SEQ_LEN)["params"]
  data = jnp.asarray(np.random.default_rng(2).integers(3, 6, (2, SEQ_LEN)), jnp.int32)
  batch, _ = process.forward(denoiser, params, None, data, jnp.array(0), jax.random.PRNGKey(3))
  grads = jax.jit(jax.grad(lambda p: process.loss(denoiser, p, batch, None)[0]))(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
  bound = process.likelihood_bound(denoiser, params, data, jax.random.PRNGKey(4), {})
  assert bound.shape == (2,) and bool(jnp.all(bound < 0))
  options = process.sampler_options(hybrid_process.HybridSamplerOptions())
  samples = process.sample(denoiser, params, jax.random.PRNGKey(5), 2, data[:, :2], options, {})
  assert isinstance(samples, sampling.Samples)
  assert samples.final.shape == (2, SEQ_LEN)
  np.testing.assert_array_equal(samples.final[:, :2], data[:, :2])
  assert bool(jnp.all(jnp.asarray(denoiser.allowed_tokens)[samples.final]))
  if not gamma:  # Block sampling with and without the KV cache draws the same samples.
    drawn = [process.sample(denoiser, params, jax.random.PRNGKey(6), 2, data[:, :2],
                            process.sampler_options(hybrid_process.HybridSamplerOptions(
                                schedule="block", width=4, num_levels=2, eta=0.2,
                                attention=attention)), {}).final
             for attention in ("schedule", "cached")]
    np.testing.assert_array_equal(*drawn)
  else:  # The conditioned DDiT reads per-token times: the gamma-hybrid's block schedules run.
    block = process.sample(denoiser, params, jax.random.PRNGKey(6), 2, data[:, :2],
                           process.sampler_options(hybrid_process.HybridSamplerOptions(
                               schedule="block", width=4, num_levels=2)), {}).final
    np.testing.assert_array_equal(block[:, :2], data[:, :2])
    assert bool(jnp.all(jnp.asarray(denoiser.allowed_tokens)[block]))


@pytest.mark.parametrize("kind, expected", [("epsilon", 162_513_920), ("gamma", 169_696_512)])
def test_medium_gin_files_build_the_reference_shape(kind: str, expected: int) -> None:
  """``gin/hybrid_{kind}_medium.gin`` parses and gives the reference DDiT at the library's
  GPT-2 vocabulary (50432 ids: 174 more rows and columns than the reference's 50258)."""
  importlib.import_module("tasks")  # Registers openwebtext_lm (its vocabulary, no data read).
  gin.clear_config()
  try:
    gin.add_config_file_search_path("gin")
    gin.parse_config_file(f"gin/hybrid_{kind}_medium.gin")
    denoiser = gin.query_parameter("models.DiffusionModel.denoiser").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(denoiser, ddit.DDiTDenoiser)
  assert denoiser.network_config.time_conditioning == (kind == "gamma")
  assert denoiser.network_config.max_length == 1024
  assert denoiser.weighted_embedding_gamma == (0.01 if kind == "gamma" else None)
  assert ddit.parameter_count(denoiser.network_config) == expected
  assert expected - ddit.parameter_count(dataclasses.replace(
      denoiser.network_config, vocab_size=50258)) == 174 * (2 * 768 + 1)
