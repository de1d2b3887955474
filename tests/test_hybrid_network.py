"""The single stack's options for the gamma-hybrid: per-token time conditioning
(``NetworkConfig.time_per_token``) and HDLM eq. 12's weighted token embedding
(``NetworkConfig.weighted_mask_embedding``)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import network, single_stack
from glauber_jax.processes import hybrid

Array = jax.Array
SHAPE = dict(vocab_size=16, d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=2,
             max_encoder_length=8, position_scheme="rope", dtype="float32",
             time_conditioning=True, time_embed_dim=16)
MASK_ID = 3
TOKENS = jax.random.randint(jax.random.PRNGKey(0), (3, 8), 0, 16)
TIMES = jnp.array([0.1, 0.5, 0.9])


def stack(**options: Any) -> single_stack.SingleStack:
  return single_stack.SingleStack(network.NetworkConfig(**{**SHAPE, **options}), causal=False,
                                  mask_id=MASK_ID)


def perturbed_params(module: single_stack.SingleStack, **inputs: Any) -> Any:
  """Initial parameters plus noise, so that the zero-initialised modulation reads the time."""
  params = module.init(jax.random.PRNGKey(1), TOKENS, TIMES, **inputs)["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  return jax.tree.unflatten(tree, [leaf + 0.05 * jax.random.normal(key, leaf.shape)
                                   for leaf, key in zip(leaves, keys)])


def test_per_token_time_equals_per_sequence_time_when_positions_agree() -> None:
  per_sequence, per_token = stack(), stack(time_per_token=True)
  params = perturbed_params(per_sequence)
  # The per-token network has the per-sequence network's parameters.
  assert (jax.tree.structure(perturbed_params(per_token)) == jax.tree.structure(params))
  expected = per_sequence.apply({"params": params}, TOKENS, TIMES)
  same = per_token.apply({"params": params}, TOKENS, jnp.broadcast_to(TIMES[:, None], (3, 8)))
  broadcast = per_token.apply({"params": params}, TOKENS, TIMES)
  assert expected.shape == same.shape == (3, 8, 16)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(expected))
  np.testing.assert_array_equal(np.asarray(broadcast), np.asarray(expected))
  # One position's time changes its own logits and, through attention, the others'.
  times = jnp.broadcast_to(TIMES[:, None], (3, 8)).at[:, 2].set(0.3)
  moved = np.asarray(per_token.apply({"params": params}, TOKENS, times))
  assert np.abs(moved[:, 2] - np.asarray(expected)[:, 2]).max() > 1e-3
  assert np.abs(moved[:, 5] - np.asarray(expected)[:, 5]).max() > 0


def test_per_token_gradients_are_finite() -> None:
  module = stack(time_per_token=True)
  params = perturbed_params(module)
  times = jax.random.uniform(jax.random.PRNGKey(3), (3, 8))

  def loss(params: Any) -> Array:
    return jnp.mean(jax.nn.logsumexp(module.apply({"params": params}, TOKENS, times), -1))

  grads = jax.grad(loss)(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  time_kernel = nn.meta.unbox(grads)["time_embedding"]["dense_0"]["kernel"]
  assert np.abs(np.asarray(time_kernel)).max() > 0


def test_per_token_time_needs_time_conditioning_and_the_single_stack() -> None:
  with pytest.raises(ValueError, match="time_per_token"):
    network.NetworkConfig(time_per_token=True)
  config = network.NetworkConfig(**SHAPE, time_per_token=True)
  with pytest.raises(ValueError, match="single stack"):
    network.checked_time(config, TIMES, 3)


def test_weighted_mask_embedding_interpolates_to_the_mask() -> None:
  plain, weighted = stack(), stack(weighted_mask_embedding=True)
  params = perturbed_params(plain)
  sigma_zero = hybrid.mask_embedding_weight(jnp.zeros((3, 8)), gamma=0.05)
  at_zero = weighted.apply({"params": params}, TOKENS, TIMES, mask_weight=sigma_zero)
  np.testing.assert_array_equal(np.asarray(at_zero),
                                np.asarray(plain.apply({"params": params}, TOKENS, TIMES)))
  all_masks = np.asarray(plain.apply({"params": params}, jnp.full_like(TOKENS, MASK_ID), TIMES))
  gaps = []
  for sigma in (1.0, 20.0, 100.0, 1000.0):
    weight = hybrid.mask_embedding_weight(jnp.full((3, 8), sigma), gamma=0.05)
    logits = weighted.apply({"params": params}, TOKENS, TIMES, mask_weight=weight)
    gaps.append(np.abs(np.asarray(logits) - all_masks).max())
  assert gaps == sorted(gaps, reverse=True) and gaps[0] > 0.1
  assert gaps[-1] < 1e-5  # w = 1 - exp(-50): f(MASK) everywhere.


def test_weighted_mask_embedding_needs_its_weights() -> None:
  weighted = stack(weighted_mask_embedding=True)
  params = perturbed_params(weighted, mask_weight=jnp.zeros((3, 8)))
  with pytest.raises(ValueError, match="mask_weight"):
    weighted.apply({"params": params}, TOKENS, TIMES)
  with pytest.raises(ValueError, match="mask_weight"):
    stack().apply({"params": params}, TOKENS, TIMES, mask_weight=jnp.zeros((3, 8)))
  with pytest.raises(ValueError, match="mask_id"):
    single_stack.SingleStack(network.NetworkConfig(**SHAPE, weighted_mask_embedding=True),
                             causal=False).init(jax.random.PRNGKey(0), TOKENS, TIMES,
                                                mask_weight=jnp.zeros((3, 8)))
