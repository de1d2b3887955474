"""KV caching of block and slide hyperschedules (test 7 of ``/work/shared/design/hybrid.md`` sec.
7): the cached block decoding of a bidirectional single stack gives the logits of the uncached
forward under the schedule's mask (block-causal context for block schedules, causal for slide
ones; float32, 1e-5) at every active position of every call, and a whole generation draws
identical samples under a fixed key."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import denoiser_networks, models, network
from glauber_jax.processes import hybrid, hybrid_process, hyperschedules
from test_glauber_end_to_end import VOCAB

SEQ_LEN, WIDTH, LEVELS = 12, 4, 3
CONFIG = network.NetworkConfig(
    vocab_size=VOCAB.vocab_size, d_model=32, num_heads=2, head_dim=16, d_ff=64,
    num_encoder_layers=2, max_encoder_length=SEQ_LEN, dtype="float32", position_scheme="rope",
    time_conditioning=False)
MASK = VOCAB.sentinel_id(0)


def denoiser_and_params() -> tuple[denoiser_networks.SingleStackDenoiser, dict]:
  denoiser = denoiser_networks.SingleStackDenoiser(CONFIG, VOCAB)
  params = denoiser.init_variables(jax.random.PRNGKey(0), 2, SEQ_LEN)["params"]
  return denoiser, params


def test_cached_block_logits_equal_the_masked_forward() -> None:
  denoiser, params = denoiser_and_params()
  schedule = hyperschedules.make("block", SEQ_LEN, LEVELS, width=WIDTH)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, VOCAB.vocab_size, (2, SEQ_LEN))
  tokens = jnp.asarray(np.where(rng.random(tokens.shape) < 0.4, MASK, tokens), jnp.int32)
  cache = None
  for block in range(SEQ_LEN // WIDTH):
    lo, hi = block * WIDTH, (block + 1) * WIDTH
    cached, _ = denoiser.block_logits(params, cache, tokens[:, lo:hi])
    for level_step in range(LEVELS):
      call = block * LEVELS + level_step + 1
      mask = schedule.attention_mask(call, "block_causal")
      full = denoiser.masked_logits(params, tokens, jnp.asarray(mask))
      np.testing.assert_allclose(np.asarray(cached), np.asarray(full[:, lo:hi]), atol=1e-5,
                                 rtol=0)
    _, cache = denoiser.block_logits(params, cache, tokens[:, lo:hi])  # Commit the block.


def sampler_pair(denoiser: denoiser_networks.SingleStackDenoiser, params: dict, kind: str,
                 width: int, levels: int, eta: float):
  """The process's jitted uncached (``schedule``) and cached samplers of one hyperschedule."""
  process = hybrid_process.EpsilonHybridProcess(SEQ_LEN)
  return [jax.jit(process.epsilon_sampler(denoiser, params, process.sampler_options(
      hybrid_process.HybridSamplerOptions(schedule=kind, width=width, num_levels=levels,
                                          eta=eta, attention=attention))))
          for attention in ("schedule", "cached")]


@pytest.mark.parametrize("kind, width, levels", [("block", WIDTH, LEVELS), ("slide", 3, 4),
                                                 ("slide", 1, 1)])
def test_cached_generation_draws_the_same_samples(kind: str, width: int, levels: int) -> None:
  denoiser, params = denoiser_and_params()
  batch = 3
  initial = jnp.full((batch, SEQ_LEN), MASK, jnp.int32).at[:, :2].set(jnp.array([5, 7]))
  frozen = jnp.broadcast_to(jnp.arange(SEQ_LEN) < 2, initial.shape)
  uncached, cached = sampler_pair(denoiser, params, kind, width, levels, eta=0.2)
  for seed in range(3):
    key = jax.random.PRNGKey(seed)
    plain, plain_corrections = uncached(key, initial, frozen)
    fast, fast_corrections = cached(key, initial, frozen)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(fast))
    np.testing.assert_array_equal(np.asarray(plain_corrections), np.asarray(fast_corrections))
    assert (np.asarray(fast) != MASK).all() and (np.asarray(fast)[:, :2] == [5, 7]).all()


@pytest.mark.parametrize("width, levels", [(3, 4), (4, 4), (1, 1)])
def test_cached_slide_logits_equal_the_masked_forward(width: int, levels: int) -> None:
  """Every call of a slide generation: the cached block's logits at the active positions equal
  the uncached forward's under the call's causal-context mask (the cache appended one settled
  position per call, as ``hybrid.epsilon_sample_cached_slide`` does)."""
  denoiser, params = denoiser_and_params()
  schedule = hyperschedules.make("slide", SEQ_LEN, levels, width=width)
  plan = hybrid.slide_cache_plan(schedule)
  rng = np.random.default_rng(1)
  tokens = rng.integers(3, VOCAB.vocab_size, (2, SEQ_LEN))
  tokens = jnp.asarray(np.where(rng.random(tokens.shape) < 0.4, MASK, tokens), jnp.int32)
  cache = None
  for call in range(1, schedule.num_calls + 1):
    start = int(plan["start"][call - 1])
    if plan["commit"][call - 1]:
      _, cache = denoiser.block_logits(params, cache, tokens[:, start - 1:start])
    cached, _ = denoiser.block_logits(params, cache, tokens[:, start:start + width],
                                      jnp.asarray(plan["block_mask"][call - 1]))
    full = denoiser.masked_logits(params, tokens,
                                  jnp.asarray(schedule.attention_mask(call, "causal")))
    _, active, _ = schedule.partition(call)
    window_active = active[start:start + width]
    np.testing.assert_allclose(np.asarray(cached)[:, window_active],
                               np.asarray(full)[:, active], atol=1e-5, rtol=0)
    assert active.sum() == window_active.sum()


def test_the_process_samples_identically_with_the_cache() -> None:
  denoiser, params = denoiser_and_params()
  model = models.DiffusionModel(denoiser, hybrid_process.EpsilonHybridProcess(SEQ_LEN))
  prefix = jnp.array([[5, 7], [6, 6]], jnp.int32)

  def sample(attention: str) -> np.ndarray:
    return np.asarray(model.sample(params, jax.random.PRNGKey(4), 2, prefix, schedule="block",
                                   width=WIDTH, num_levels=LEVELS, eta=0.1,
                                   attention=attention).final)

  np.testing.assert_array_equal(sample("schedule"), sample("cached"))
