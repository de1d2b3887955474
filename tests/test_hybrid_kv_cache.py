"""KV caching of block hyperschedules (test 7 of ``/work/shared/design/hybrid.md`` sec. 7): the
cached block decoding of a bidirectional single stack gives the logits of the uncached forward
under the schedule's block-causal mask (float32, 1e-5) at every active position of every
block, and a whole generation draws identical samples under a fixed key."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

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


def test_cached_generation_draws_the_same_samples() -> None:
  denoiser, params = denoiser_and_params()
  schedule = hyperschedules.make("block", SEQ_LEN, LEVELS, width=WIDTH)
  batch = 3
  initial = jnp.full((batch, SEQ_LEN), MASK, jnp.int32).at[:, :2].set(jnp.array([5, 7]))
  frozen = jnp.broadcast_to(jnp.arange(SEQ_LEN) < 2, initial.shape)
  allowed = jnp.asarray(denoiser.allowed_tokens)
  masks = np.stack([schedule.attention_mask(c, "block_causal")
                    for c in range(1, schedule.num_calls + 1)])
  uncached = jax.jit(functools.partial(
      hybrid.epsilon_sample,
      logits_fn=lambda noisy, times, mask: denoiser.masked_logits(params, noisy, mask),
      tables=schedule.tables(), mask_id=MASK, allowed=allowed, eta=0.2,
      attention_masks=masks))
  cached = jax.jit(functools.partial(
      hybrid.epsilon_sample_cached,
      block_logits_fn=functools.partial(denoiser.block_logits, params), schedule=schedule,
      mask_id=MASK, allowed=allowed, eta=0.2))
  for seed in range(3):
    key = jax.random.PRNGKey(seed)
    plain, plain_corrections = uncached(key, initial=initial, frozen=frozen)
    fast, fast_corrections = cached(key, initial=initial, frozen=frozen)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(fast))
    np.testing.assert_array_equal(np.asarray(plain_corrections), np.asarray(fast_corrections))
    assert (np.asarray(fast) != MASK).all() and (np.asarray(fast)[:, :2] == [5, 7]).all()


def test_the_process_samples_identically_with_the_cache() -> None:
  denoiser, params = denoiser_and_params()
  model = models.DiffusionModel(denoiser, hybrid_process.EpsilonHybridProcess(SEQ_LEN))
  prefix = jnp.array([[5, 7], [6, 6]], jnp.int32)

  def sample(attention: str) -> np.ndarray:
    return np.asarray(model.sample(params, jax.random.PRNGKey(4), 2, prefix, schedule="block",
                                   width=WIDTH, num_levels=LEVELS, eta=0.1,
                                   attention=attention).final)

  np.testing.assert_array_equal(sample("schedule"), sample("cached"))
