"""The hybrid samplers (``processes.hybrid.epsilon_sample`` with ACS, ``gamma_sample``) with
oracle denoisers on enumerable toys: tests 12 and 13 of ``/work/shared/design/hybrid.md`` sec. 7,
and the gamma tau-leaping with the true scores. ``V = 3``: two real tokens and MASK."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from glauber_jax.processes import hybrid, hyperschedules

MASK = 2
REAL = np.array([True, True, False])
#: Factorised data on ``d = 3`` positions: P(token 0) per position.
P_ZERO = np.array([0.8, 0.3, 0.55])


def oracle_logits(noisy: jax.Array, times: jax.Array) -> jax.Array:
  """The exact clean-token posterior of the factorised data: each position's own law."""
  del times
  log_p = jnp.log(jnp.stack([P_ZERO, 1 - P_ZERO, np.zeros(3)], axis=-1))
  return jnp.broadcast_to(log_p, (*noisy.shape, 3))


def joint_counts(samples: np.ndarray) -> np.ndarray:
  index = samples @ (2 ** np.arange(samples.shape[1]))
  return np.bincount(index, minlength=2 ** samples.shape[1])


def joint_law(p_zero: np.ndarray) -> np.ndarray:
  law = np.ones(1)
  for p in p_zero:
    law = np.concatenate([law * p, law * (1 - p)])
  return law


SCHEDULES = [hyperschedules.make("flat", 3, 8), hyperschedules.make("block", 3, 4, width=2),
             hyperschedules.make("slide", 3, 4, width=2), hyperschedules.make("quench", 3, 1)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.kind)
def test_epsilon_sampler_with_the_oracle_reproduces_the_data(schedule) -> None:
  count = 10_000
  initial = jnp.full((count, 3), MASK, jnp.int32)
  sample = jax.jit(functools.partial(hybrid.epsilon_sample, logits_fn=oracle_logits,
                                     tables=schedule.tables(), mask_id=MASK, allowed=REAL,
                                     eta=0.3))
  final, _ = sample(jax.random.PRNGKey(0), initial=initial, frozen=jnp.zeros_like(initial, bool))
  final = np.asarray(final)
  assert (final != MASK).all()
  expected = joint_law(P_ZERO) * count
  assert scipy.stats.chisquare(joint_counts(final), expected).pvalue > 1e-3


def test_acs_at_eta_zero_is_the_original_sampler_and_prompts_stay() -> None:
  schedule = hyperschedules.make("flat", 3, 8)
  rng = np.random.default_rng(0)
  initial = jnp.asarray(np.where(rng.random((500, 3)) < 0.3, rng.integers(0, 2, (500, 3)), MASK))
  frozen = initial != MASK
  run = jax.jit(lambda eta: hybrid.epsilon_sample(
      jax.random.PRNGKey(1), oracle_logits, initial, frozen, schedule.tables(), MASK, REAL,
      eta=eta))
  original, none = hybrid.epsilon_sample(jax.random.PRNGKey(1), oracle_logits, initial, frozen,
                                         schedule.tables(), MASK, REAL)
  again, zero = run(0.0)
  np.testing.assert_array_equal(original, again)
  assert int(none.sum()) == 0 and int(zero.sum()) == 0
  corrected, corrections = run(0.5)
  assert int(corrections.sum()) > 0
  np.testing.assert_array_equal(np.asarray(corrected)[np.asarray(frozen)],
                                np.asarray(initial)[np.asarray(frozen)])


def test_acs_corrections_are_binomial() -> None:
  """Every position starts unmasked, so call ``c`` corrects each of the ``d`` positions with
  probability ``eta t_{c+1}/t_c`` independently."""
  schedule = hyperschedules.make("flat", 3, 4)
  eta, count = 0.4, 4000
  initial = jnp.zeros((count, 3), jnp.int32)
  _, corrections = hybrid.epsilon_sample(jax.random.PRNGKey(2), oracle_logits, initial,
                                         jnp.zeros_like(initial, bool), schedule.tables(), MASK,
                                         REAL, eta=eta)
  times = schedule.tables()["times"][:, 0].astype(np.float64)
  probs = eta * times[1:] / times[:-1]  # The final call corrects nothing.
  mean, variance = 3 * probs.sum(), 3 * np.sum(probs * (1 - probs))
  corrections = np.asarray(corrections, np.float64)
  assert abs(corrections.mean() - mean) < 4 * np.sqrt(variance / count)
  assert abs(corrections.var() / variance - 1) < 0.1


@pytest.mark.parametrize("gamma,exact", [(0.1, True), (0.5, True), (0.0, False)])
def test_gamma_tau_leaping_with_true_scores_reproduces_the_data(gamma: float, exact: bool) -> None:
  """Factorised data and independent noise: each position's true log-scores are its own
  marginal's ratios, and the exact step is Bayes per position (the reference's stagger is exact
  at gamma = 0)."""
  schedule = hyperschedules.make("flat", 3, 12)
  p_data = jnp.stack([P_ZERO, 1 - P_ZERO, np.zeros(3)], axis=-1)  # [d, V]

  def marginal(times: jax.Array) -> jax.Array:  # [..., d] times -> [..., d, V]
    sigma = hybrid.log_linear_sigma(times)
    by_token = jnp.stack([hybrid.gamma_marginal(jnp.full(times.shape, y), sigma, gamma, REAL,
                                                MASK) for y in range(3)], axis=-1)
    return jnp.einsum("...vy,...y->...v", by_token, jnp.broadcast_to(p_data, by_token.shape[:-2]
                                                                       + (3,)))

  def log_scores(noisy: jax.Array, times: jax.Array) -> jax.Array:
    law = marginal(times)
    at_noisy = jnp.take_along_axis(law, noisy[..., None], axis=-1)
    return jnp.log(jnp.maximum(law / at_noisy, 1e-30))

  count = 10_000
  start = jnp.broadcast_to(marginal(jnp.asarray(schedule.tables()["times"][0])), (count, 3, 3))
  initial = hybrid.draw(jax.random.PRNGKey(3), start)
  final = jax.jit(functools.partial(
      hybrid.gamma_sample, log_score_fn=log_scores, tables=schedule.tables(), gamma=gamma,
      real=REAL, mask_id=MASK, exact=exact))(jax.random.PRNGKey(4), initial=initial,
                                              frozen=jnp.zeros_like(initial, bool))
  final = np.asarray(final)
  assert (final != MASK).all()
  expected = joint_law(P_ZERO) * count
  assert scipy.stats.chisquare(joint_counts(final), expected).pvalue > 1e-3
