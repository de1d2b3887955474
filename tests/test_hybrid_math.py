"""The hybrid processes' mathematics (``processes.hybrid``) on enumerable toys: tests 1-3, 9-11,
14 and 17 of ``/work/shared/design/hybrid.md`` sec. 7. ``V = 3``: two real tokens and MASK."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from glauber_jax import sampling
from glauber_jax.processes import hybrid

MASK = 2
REAL = np.array([True, True, False])


def test_rate_matrix_identities() -> None:
  for num_real in (1, 2, 5):
    absorb, uniform = hybrid.rate_matrices(num_real)
    np.testing.assert_allclose(absorb.sum(axis=0), 0, atol=1e-15)
    np.testing.assert_allclose(uniform.sum(axis=0), 0, atol=1e-15)
    np.testing.assert_allclose(absorb @ absorb, -absorb, atol=1e-15)
    np.testing.assert_allclose(uniform @ uniform, -uniform, atol=1e-15)
    np.testing.assert_allclose(uniform @ absorb, -uniform, atol=1e-15)
    np.testing.assert_allclose(absorb @ uniform, -uniform, atol=1e-15)


@pytest.mark.parametrize("gamma,sigma", list(itertools.product((0.0, 0.01, 0.3, 1.0), (0.1, 2.0))))
def test_closed_form_equals_the_matrix_exponential(gamma: float, sigma: float) -> None:
  absorb, uniform = hybrid.rate_matrices(4)
  rates = (1 - gamma) * absorb + gamma * uniform
  closed = hybrid.gamma_transition(4, gamma, sigma)
  np.testing.assert_allclose(closed, scipy.linalg.expm(sigma * rates), atol=1e-12)
  np.testing.assert_allclose(closed.sum(axis=0), 1, atol=1e-12)
  assert (closed >= -1e-15).all()
  np.testing.assert_allclose(hybrid.gamma_transition(4, gamma, 0.7) @ closed,
                             hybrid.gamma_transition(4, gamma, sigma + 0.7), atol=1e-12)
  # The per-token marginal is the column of the clean token.
  real = np.array([True] * 4 + [False])
  for token in range(4):
    marginal = hybrid.gamma_marginal(jnp.array(token), jnp.array(sigma), gamma, real, 4)
    np.testing.assert_allclose(np.asarray(marginal), closed[:, token], atol=1e-6)


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
  keep = probs > 0
  assert counts[~keep].sum() == 0
  expected = probs[keep] / probs[keep].sum() * counts.sum()
  return scipy.stats.chisquare(counts[keep], expected).pvalue


def test_forward_draws_follow_the_marginals() -> None:
  tokens = jnp.zeros((40_000,), jnp.int32)
  for gamma, sigma in ((0.3, 0.8), (0.01, 3.0)):
    noisy = hybrid.gamma_forward(jax.random.PRNGKey(0), tokens, jnp.float32(sigma), gamma,
                                 REAL, MASK)
    expected = np.asarray(hybrid.gamma_marginal(jnp.array(0), jnp.array(sigma), gamma, REAL,
                                                MASK), np.float64)
    assert chi_square_p(np.bincount(np.asarray(noisy), minlength=3), expected) > 1e-3
  noisy, masked, shuffled = hybrid.epsilon_forward(jax.random.PRNGKey(1), tokens[None],
                                                   0.4, 0.2, REAL, MASK)
  expected = np.asarray(hybrid.epsilon_marginal(jnp.array(0), 0.4, 0.2, REAL, MASK), np.float64)
  assert chi_square_p(np.bincount(np.asarray(noisy[0]), minlength=3), expected) > 1e-3
  assert not np.asarray(masked & shuffled).any()
  rate = np.asarray(shuffled).sum() / np.asarray(~masked).sum()
  assert abs(rate - 0.2) < 4 * np.sqrt(0.2 * 0.8 / np.asarray(~masked).sum())
  clean, _, _ = hybrid.epsilon_forward(jax.random.PRNGKey(2), tokens[None], 0.0, 0.0, REAL, MASK)
  np.testing.assert_array_equal(clean, tokens[None])  # Level 0: the identity.
  untouched = hybrid.gamma_forward(jax.random.PRNGKey(3), tokens, jnp.float32(0.0), 0.3, REAL,
                                   MASK)
  np.testing.assert_array_equal(untouched, tokens)


def test_prior_mask_probability() -> None:
  np.testing.assert_allclose(hybrid.gamma_prior_mask_probability(0.01), 0.99924, atol=1e-5)
  draws = hybrid.gamma_prior(jax.random.PRNGKey(0), (50_000,), 0.3, REAL, MASK)
  p_mask = hybrid.gamma_prior_mask_probability(0.3)
  expected = np.array([(1 - p_mask) / 2, (1 - p_mask) / 2, p_mask])
  assert chi_square_p(np.bincount(np.asarray(draws), minlength=3), expected) > 1e-3


def test_hdce_weights_and_the_mdlm_limit() -> None:
  masked = jnp.array([[True, False, False, True]])
  shuffled = jnp.array([[False, True, False, False]])
  p = jnp.array([[0.25, 0.5, 0.5, 0.8]])
  weights = hybrid.hdce_weights(masked, shuffled, p, epsilon=0.1, balance=2.0)
  np.testing.assert_allclose(weights, [[4.0, 2 * 0.9 / 0.5, 2 * 0.1 / 0.5, 1.25]], rtol=1e-6)
  annealed = hybrid.hdce_weights(masked, shuffled, p, 0.1, 2.0, annealed=True)
  np.testing.assert_allclose(annealed, [[4.0, 1.8, 0.2, 1.25]], rtol=1e-6)
  # epsilon = 0: nothing is shuffled and the weights are MDLM's 1/t on masked tokens only.
  rng = np.random.default_rng(0)
  log_probs = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32))
  tokens = jnp.asarray(rng.integers(0, 2, (2, 5)))
  masked = jnp.asarray(rng.random((2, 5)) < 0.5)
  levels = jnp.array([[0.3], [0.7]])
  for balance in (0.5, 3.0):
    weights = hybrid.hdce_weights(masked, jnp.zeros_like(masked), levels, 0.0, balance)
    hdce = jnp.sum(weights * hybrid.token_cross_entropy(log_probs, tokens), axis=-1)
    mdlm = -jnp.sum(jnp.where(masked, jnp.take_along_axis(
        log_probs, tokens[..., None], -1)[..., 0] / levels, 0.0), axis=-1)
    np.testing.assert_allclose(hdce, mdlm, rtol=1e-6)


def true_log_ratios(tokens: int, sigma: float, gamma: float, noisy: int) -> np.ndarray:
  marginal = np.asarray(hybrid.gamma_marginal(jnp.array(tokens), jnp.array(sigma), gamma, REAL,
                                              MASK), np.float64)
  return np.log(np.maximum(marginal / marginal[noisy], 1e-30))


def entropy(function, scores, noisy, token, sigma, gamma) -> float:
  return float(function(jnp.asarray(scores, jnp.float32), jnp.array(noisy), jnp.array(token),
                        jnp.array(sigma), gamma, REAL, MASK))


@pytest.mark.parametrize("gamma", (0.0, 0.2, 1.0))
def test_exact_score_entropy(gamma: float) -> None:
  rng = np.random.default_rng(1)
  for token, noisy, sigma in itertools.product((0, 1), (0, 1, MASK), (0.3, 2.0)):
    if (gamma == 1.0 and noisy == MASK) or (gamma == 0.0 and noisy not in (token, MASK)):
      continue  # Impossible states.
    truth = true_log_ratios(token, sigma, gamma, noisy)
    at_truth = entropy(hybrid.gamma_score_entropy, truth, noisy, token, sigma, gamma)
    assert abs(at_truth) < 1e-5
    moves = noisy == MASK or gamma > 0  # At gamma = 0 a real token has no incoming rate.
    for _ in range(5):
      other = truth + rng.normal(size=3)
      perturbed = entropy(hybrid.gamma_score_entropy, other, noisy, token, sigma, gamma)
      assert perturbed > at_truth if moves else perturbed == 0.0
    scores = rng.normal(size=3)
    exact = entropy(hybrid.gamma_score_entropy, scores, noisy, token, sigma, gamma)
    reference = entropy(hybrid.gamma_score_entropy_reference, scores, noisy, token, sigma, gamma)
    if gamma == 0.0 and noisy == MASK or gamma == 1.0:  # SEDD absorbing / uniform exactly.
      np.testing.assert_allclose(exact, reference, rtol=1e-5, atol=1e-6)


def test_reference_score_entropy_golden_values() -> None:
  # Hand computations of the formulas of hybrid.md sec. 3 (N = 2, sigma = log 2: expm1 = 1).
  scores = np.array([0.5, -1.0, 0.0])
  sigma, gamma = np.log(2.0), 0.25
  # x = MASK, y = 0: (1 - g) [e^0.5 + e^-1 - 0.5 / 1 + K(1)], K(1) = -1.
  expected = 0.75 * (np.exp(0.5) + np.exp(-1.0) - 0.5 - 1.0)
  got = entropy(hybrid.gamma_score_entropy_reference, scores, MASK, 0, sigma, gamma)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  rho = 1 - 2 / (1 + 2)  # 1/3
  # x = y = 0: pos = e^-1 / 2, neg = rho (-1 / 2), const = (1/2) rho (log rho - 1).
  expected = 0.25 * (np.exp(-1.0) / 2 + rho / 2 + 0.5 * rho * (np.log(rho) - 1))
  got = entropy(hybrid.gamma_score_entropy_reference, scores, 0, 0, sigma, gamma)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # x = 1, y = 0: pos = e^0.5 / 2, neg = 0.5 / 2 + 0.5, const = ((-log rho - 1) / rho - 0) / 2.
  expected = 0.25 * (np.exp(0.5) / 2 - 0.75 + ((-np.log(rho) - 1) / rho) / 2)
  got = entropy(hybrid.gamma_score_entropy_reference, scores, 1, 0, sigma, gamma)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", (0.0, 0.1, 0.6))
def test_exact_reverse_step_is_bayes(gamma: float) -> None:
  """d = 1: the exact staggered step with the true scores is the Bayes posterior, whatever
  the scores hold at the current token (a network's untrained output there; the ratio of a
  state to itself is 1)."""
  p_data = np.array([0.7, 0.3, 0.0])
  sigma_t, sigma_s = 1.5, 0.6
  delta = sigma_t - sigma_s
  forward_s = hybrid.gamma_transition(2, gamma, sigma_s)  # Compact order: real 0, 1, MASK.
  step = hybrid.gamma_transition(2, gamma, delta)
  p_s = forward_s @ p_data
  p_t = step @ p_s
  for noisy in (0, 1, MASK):
    bayes = step[noisy] * p_s / p_t[noisy]  # p(x_s | x_t) = P[x_t, x_s] p_s(x_s) / p_t(x_t).
    for own_score in (1.0, 1e-3, 37.0):
      scores = (p_t / p_t[noisy]).copy()
      scores[noisy] = own_score
      probs = hybrid.gamma_reverse_probs(jnp.asarray(scores, jnp.float32), jnp.array(noisy),
                                         jnp.array(delta), gamma, REAL, MASK,
                                         jnp.array(False), exact=True)
      np.testing.assert_allclose(np.asarray(probs), bayes, atol=2e-6)
    final = hybrid.gamma_reverse_probs(jnp.asarray(p_t / p_t[noisy], jnp.float32),
                                       jnp.array(noisy), jnp.array(delta), gamma, REAL, MASK,
                                       jnp.array(True))
    assert float(final[MASK]) == 0.0 and float(final.sum()) > 0


def test_reference_staggered_scores_are_exact_at_the_pure_processes() -> None:
  """SEDD's staggered scores are exact for the pure absorbing (gamma = 0) and pure uniform
  (gamma = 1) processes; the reference's convex combination is an approximation in between."""
  scores = jnp.array([0.4, 1.3, 1.0])
  for gamma in (0.0, 1.0):
    exact = hybrid.staggered_scores(scores, jnp.array(0.5), gamma, REAL, MASK, exact=True)
    reference = hybrid.staggered_scores(scores, jnp.array(0.5), gamma, REAL, MASK, exact=False)
    np.testing.assert_allclose(exact, reference, rtol=1e-6)
  exact = hybrid.staggered_scores(scores, jnp.array(0.5), 0.3, REAL, MASK, exact=True)
  reference = hybrid.staggered_scores(scores, jnp.array(0.5), 0.3, REAL, MASK, exact=False)
  assert np.abs(np.asarray(exact - reference)).max() > 1e-3


@pytest.mark.parametrize("temperature", (1.0, 0.5))
def test_gumbel_race_matches_the_tempered_softmax(temperature: float) -> None:
  logits = jnp.array([0.3, -1.2, 2.0, -6.0])
  draws = sampling.sample_categorical(jax.random.PRNGKey(4), jnp.broadcast_to(
      logits, (200_000, 4)), temperature)
  expected = np.asarray(jax.nn.softmax(logits / temperature), np.float64)
  assert chi_square_p(np.bincount(np.asarray(draws), minlength=4), expected) > 1e-3


def test_scale_by_sigma_and_the_weighted_embedding() -> None:
  raw = jnp.array([[0.5, -0.2, 1.0]])
  scaled = hybrid.scale_by_sigma(raw, jnp.array([0.7]), 2)
  np.testing.assert_allclose(scaled, raw - np.log(np.expm1(0.7)) - np.log(2), rtol=1e-6)
  assert float(hybrid.mask_embedding_weight(jnp.array(0.0), 0.05)) == 0.0
  np.testing.assert_allclose(hybrid.mask_embedding_weight(jnp.array(1e4), 0.05), 1.0)
  assert 0 < float(hybrid.mask_embedding_weight(jnp.array(2.0), 0.05)) < 1


def test_log_linear_noise() -> None:
  times = jnp.array([0.0, 0.5, 1.0])
  np.testing.assert_allclose(hybrid.log_linear_sigma(times),
                             -np.log(1 - 0.995 * np.array([0, 0.5, 1])), rtol=1e-6)
  derivative = jax.vmap(jax.grad(hybrid.log_linear_sigma))(times)
  np.testing.assert_allclose(hybrid.log_linear_rate(times), derivative, rtol=1e-5)
