"""Shapes, masks and invariances of the encoder-decoder network."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import encoder_decoder, network

TINY = network.NetworkConfig(
    vocab_size=61, d_model=32, num_heads=4, head_dim=8, d_ff=48, num_encoder_layers=2,
    num_decoder_layers=2, dtype="float32", max_encoder_length=16, max_decoder_length=8)


def _tokens(seed: int, shape: tuple[int, int], low: int = 3) -> jnp.ndarray:
  return jnp.asarray(np.random.RandomState(seed).randint(low, TINY.vocab_size, shape), jnp.int32)


def _init(config: network.NetworkConfig, enc: jnp.ndarray, dec: jnp.ndarray, time=None):
  module = encoder_decoder.Transformer(config)
  variables = module.init(jax.random.PRNGKey(0), enc, dec, time)
  return module, nn.meta.unbox(variables)


@pytest.mark.parametrize("scheme", ["relative", "rope"])
def test_logits_shape_and_dtype(scheme):
  config = dataclasses.replace(TINY, position_scheme=scheme)
  enc, dec = _tokens(0, (3, 10)), _tokens(1, (3, 5))
  module, variables = _init(config, enc, dec)
  logits = module.apply(variables, enc, dec)
  assert logits.shape == (3, 5, TINY.vocab_size)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_parameter_logical_axes():
  enc, dec = _tokens(0, (2, 6)), _tokens(1, (2, 4))
  boxed = encoder_decoder.Transformer(TINY).init(jax.random.PRNGKey(0), enc, dec)["params"]
  specs = nn.get_partition_spec(boxed)
  assert specs["token_embedder"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
  layer = specs["encoder"]["layers_0"]
  assert layer["attention"]["query"]["kernel"] == jax.sharding.PartitionSpec(
      "embed", "heads", "kv")
  assert layer["mlp"]["wo"]["kernel"] == jax.sharding.PartitionSpec("mlp", "embed")
  assert all(isinstance(leaf, nn.LogicallyPartitioned)
             for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(
                 x, nn.LogicallyPartitioned)))


@pytest.mark.parametrize("scheme", ["relative", "rope"])
def test_encoder_padding_does_not_leak(scheme):
  """Appending padding to the encoder input leaves the decoder's logits unchanged."""
  config = dataclasses.replace(TINY, position_scheme=scheme)
  enc, dec = _tokens(0, (2, 7)), _tokens(1, (2, 5))
  module, variables = _init(config, enc, dec)
  padded = jnp.concatenate([enc, jnp.zeros((2, 5), jnp.int32)], axis=1)
  np.testing.assert_allclose(module.apply(variables, enc, dec),
                             module.apply(variables, padded, dec), atol=1e-5)


@pytest.mark.parametrize("scheme", ["relative", "rope"])
def test_decoder_is_causal(scheme):
  """Changing decoder token j changes logits at positions >= j only."""
  config = dataclasses.replace(TINY, position_scheme=scheme)
  enc, dec = _tokens(0, (2, 7)), _tokens(1, (2, 6))
  module, variables = _init(config, enc, dec)
  base = module.apply(variables, enc, dec)
  changed = module.apply(variables, enc, dec.at[:, 3].set((dec[:, 3] + 1) % TINY.vocab_size))
  np.testing.assert_allclose(base[:, :3], changed[:, :3], atol=1e-6)
  assert float(jnp.max(jnp.abs(base[:, 3:] - changed[:, 3:]))) > 1e-4


def test_encoder_is_bidirectional():
  enc, dec = _tokens(0, (2, 7)), _tokens(1, (2, 4))
  module, variables = _init(TINY, enc, dec)
  encoded = module.apply(variables, enc, method=module.encode)
  changed = module.apply(variables, enc.at[:, 6].set(5), method=module.encode)
  assert float(jnp.max(jnp.abs(encoded[:, 0] - changed[:, 0]))) > 1e-4


@pytest.mark.parametrize("scheme", ["relative", "rope"])
def test_cloze_readout_never_sees_its_own_position(scheme):
  """The cloze logits at position p do not depend on token p and do depend on its neighbours;
  ``infill`` at a site is ``cloze`` at that position."""
  config = dataclasses.replace(TINY, position_scheme=scheme, infill_readout="cloze")
  enc, dec = _tokens(0, (2, 7)), _tokens(1, (2, 4))
  module, variables = _init(config, enc, dec)
  base = module.apply(variables, enc, method=module.cloze)
  assert base.shape == (2, 7, TINY.vocab_size) and base.dtype == jnp.float32
  for p in range(7):
    changed = module.apply(variables, enc.at[:, p].set(5), method=module.cloze)
    np.testing.assert_allclose(base[:, p], changed[:, p], atol=1e-5)
    others = [q for q in range(7) if q != p]
    assert float(jnp.max(jnp.abs(base[:, others] - changed[:, others]))) > 1e-4
  sites = jnp.asarray([2, 5], jnp.int32)
  np.testing.assert_allclose(module.apply(variables, enc, sites, method=module.infill),
                             base[jnp.arange(2), sites], atol=1e-5)


def test_relative_position_bucket_matches_t5_definition():
  """Exact buckets for small distances, log-spaced after, capped, sign split when bidirectional."""
  rel = jnp.array([-200, -64, -9, -8, -1, 0, 1, 7, 8, 9, 200])
  bi = network.relative_position_bucket(rel, True, 32, 128)
  # bidirectional: 16 buckets per sign, 8 exact; positive offsets shifted by 16.
  assert bi.tolist()[4:8] == [1, 0, 17, 23]
  assert int(bi[0]) == 15 and int(bi[-1]) == 31
  uni = network.relative_position_bucket(rel, False, 32, 128)
  assert uni.tolist()[5:] == [0, 0, 0, 0, 0, 0]  # the future all falls in bucket 0
  assert uni.tolist()[3:5] == [8, 1] and int(uni[0]) == 31
  assert bool(jnp.all(jnp.diff(network.relative_position_bucket(
      -jnp.arange(300), False, 32, 128)) >= 0))


@pytest.mark.parametrize("scheme", ["relative", "rope"])
def test_time_conditioned_network_equals_source_at_init(scheme):
  """The DiT's zero-initialised modulation reproduces the plain UL2 at every time."""
  base_config = dataclasses.replace(TINY, position_scheme=scheme)
  dit_config = dataclasses.replace(base_config, time_conditioning=True, time_embed_dim=16)
  enc, dec = _tokens(0, (3, 9)), _tokens(1, (3, 5))
  base, base_vars = _init(base_config, enc, dec)
  dit, dit_vars = _init(dit_config, enc, dec, jnp.zeros((3,)))
  params = _merge(dit_vars["params"], base_vars["params"])  # Source weights into the DiT.
  expected = base.apply(base_vars, enc, dec)
  for t in (0.0, 17.0, 3000.0):
    got = dit.apply({"params": params}, enc, dec, jnp.full((3,), t))
    np.testing.assert_allclose(got, expected, atol=1e-6)
  # And the modulation is live: perturbing it changes the output.
  perturbed = jax.tree.map(lambda x: x + 0.1, params["encoder"]["layers_0"]["modulation"])
  params["encoder"]["layers_0"]["modulation"] = perturbed
  assert float(jnp.max(jnp.abs(dit.apply({"params": params}, enc, dec, jnp.ones((3,)))
                               - expected))) > 1e-3


def _merge(dit_tree, source_tree):
  """``dit_tree`` with every leaf that ``source_tree`` also has taken from ``source_tree``."""
  merged = dict(dit_tree)
  for key, value in source_tree.items():
    merged[key] = _merge(merged[key], value) if isinstance(value, dict) else value
  return merged


def test_time_argument_is_checked():
  enc, dec = _tokens(0, (2, 4)), _tokens(1, (2, 3))
  module, variables = _init(TINY, enc, dec)
  with pytest.raises(ValueError, match="no time conditioning"):
    module.apply(variables, enc, dec, jnp.ones((2,)))
  dit_config = dataclasses.replace(TINY, time_conditioning=True, time_embed_dim=8)
  dit, dit_vars = _init(dit_config, enc, dec, jnp.ones((2,)))
  with pytest.raises(ValueError, match="needs `time`"):
    dit.apply(dit_vars, enc, dec)


def test_too_long_input_is_a_clear_error():
  enc, dec = _tokens(0, (1, 4)), _tokens(1, (1, 3))
  module, variables = _init(TINY, enc, dec)
  with pytest.raises(ValueError, match="longer than the model's maximum 16"):
    module.apply(variables, _tokens(0, (1, 17)), dec)


def test_bad_config_values_are_rejected():
  with pytest.raises(ValueError, match="position_scheme"):
    network.NetworkConfig(position_scheme="alibi")
  with pytest.raises(ValueError, match="remat_policy"):
    network.NetworkConfig(remat_policy="some")
  with pytest.raises(ValueError, match="d_model must be positive"):
    network.NetworkConfig(d_model=0)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_does_not_change_values_or_gradients(policy):
  enc, dec = _tokens(0, (2, 6)), _tokens(1, (2, 4))
  module, variables = _init(TINY, enc, dec)
  remat = encoder_decoder.Transformer(dataclasses.replace(TINY, remat_policy=policy))

  def loss(m, params):
    return jnp.mean(m.apply({"params": params}, enc, dec) ** 2)

  g1 = jax.grad(lambda p: loss(module, p))(variables["params"])
  g2 = jax.grad(lambda p: loss(remat, p))(variables["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)
