"""The hybrid processes through ``models.DiffusionModel`` on the contract tests' enumerable toy
(3 letters, ``L = 3``): the gamma-hybrid with a table of its exact concrete scores (its SEDD
bound stays below ``log p`` and its sampler reproduces the data), the epsilon-hybrid's annealed
training batch and its ``epsilon = 0`` limit (MDLM's loss)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import denoisers, models, network
from glauber_jax.processes import absorbing_process, hybrid, hybrid_process, hyperschedules
from test_glauber_end_to_end import L, LETTER_IDS, VOCAB, expected_sampling_tv
from test_glauber_toy import tv
from test_process_contract import (P_DATA, STATES, AbsorbingTables, data_rows, empirical,
                                   letter_mask)

Array = jax.Array
MASK = VOCAB.sentinel_id(0)
GAMMA = 0.2


@dataclasses.dataclass(frozen=True, eq=False)
class GammaScoreTables:
  """Raw outputs whose ``scale_by_sigma`` is the exact log concrete score of the law
  ``{"log_p": [S]}`` at each position's time (``times [B]`` or ``[B, L]``)."""

  allowed_tokens: np.ndarray = dataclasses.field(default_factory=letter_mask)
  special_ids: denoisers.SpecialIds = denoisers.SpecialIds.from_vocabulary(VOCAB)
  network_config: Any = None  # PER_TOKEN: the process passes every position's time.

  def init_variables(self, rng: Array, batch_size: int, seq_len: int) -> dict[str, Any]:
    raise NotImplementedError("tables are built by the test")

  def training_flops(self, input_length: int, output_length: int) -> float:
    return 0.0

  def logits(self, params: Any, noisy: Array, times: Array,
             dropout_rng: Array | None = None) -> Array:
    times = jnp.broadcast_to(times.reshape(times.shape[0], -1), noisy.shape)  # [B, L]
    sigma = hybrid.log_linear_sigma(times)[:, None, :]  # [B, 1, L]
    keep, stay = jnp.exp(-(1 - GAMMA) * sigma), jnp.exp(-GAMMA * sigma)
    channels = jnp.asarray(np.append(LETTER_IDS, MASK))  # 3 letters, then MASK.
    clean = jnp.asarray(STATES)  # [S, L]
    # q[b, s, j, c]: probability that clean token STATES[s, j] is channel c at noise sigma.
    is_clean = (channels[None, None, :3] == clean[..., None]).astype(jnp.float32)
    letters = keep[..., None] * (1 - stay[..., None]) / 3 + (keep * stay)[..., None] * is_clean
    q = jnp.concatenate([letters, jnp.broadcast_to(1 - keep[..., None], letters.shape[:-1]
                                                   + (1,))], axis=-1)
    observed = jnp.argmax(noisy[:, None, :, None] == channels, axis=-1)  # [B, 1, L]
    likelihood = jnp.take_along_axis(q, jnp.broadcast_to(
        observed[..., None], q.shape[:-1] + (1,)), axis=-1)[..., 0]  # [B, S, L]
    weights = jnp.exp(params["log_p"])[None]
    p_noisy = jnp.sum(weights * jnp.prod(likelihood, axis=-1), axis=-1)  # [B]
    others = jnp.stack([jnp.prod(jnp.delete(likelihood, i, axis=-1, assume_unique_indices=True),
                                 axis=-1) for i in range(L)], axis=-1)  # [B, S, L]
    replaced = jnp.einsum("bs,bsl,bslc->blc", weights[0][None].repeat(noisy.shape[0], 0), others,
                          q)  # [B, L, 4]
    log_ratio = jnp.log(jnp.maximum(replaced / p_noisy[:, None, None], 1e-30))
    raw = log_ratio + jnp.log(jnp.expm1(hybrid.log_linear_sigma(times)))[..., None] + np.log(3)
    full = jnp.zeros(noisy.shape + (VOCAB.vocab_size,), jnp.float32)
    return full.at[..., channels].set(raw)


#: A network that reads one time per position (what block and slide schedules need).
PER_TOKEN = network.NetworkConfig(vocab_size=VOCAB.vocab_size, time_conditioning=True,
                                  time_per_token=True)


def gamma_model(per_token: bool = False, **settings: Any) -> models.DiffusionModel:
  process = hybrid_process.GammaHybridProcess(L, gamma=GAMMA, **settings)
  return models.DiffusionModel(GammaScoreTables(network_config=PER_TOKEN if per_token else None),
                               process)


EXACT = {"log_p": jnp.log(jnp.asarray(P_DATA, jnp.float32))}


def test_gamma_sedd_bound_stays_below_log_p_and_prefers_the_truth() -> None:
  model = gamma_model()
  # On states of tiny probability (down to 1e-11 here) the integrand is heavy-tailed (rare
  # draws of -1e4 nats), so a sample's standard error means little there.
  support = P_DATA > 1e-3
  tokens = jnp.asarray(np.tile(STATES[support], (128, 1)))
  bound = jax.jit(model.likelihood_bound)
  draws = np.stack([np.asarray(bound(EXACT, tokens, jax.random.PRNGKey(seed), {}))
                    for seed in range(4)]).reshape(-1, support.sum())
  truth = np.log(P_DATA[support])
  se = draws.std(axis=0) / np.sqrt(draws.shape[0])
  assert (draws.mean(axis=0) < truth + 5 * se + 1e-3).all()
  assert (draws.mean(axis=0) > truth - 0.3).all()  # The prior's KL is the gap.
  other = {"log_p": jnp.log(jnp.asarray(np.random.default_rng(1).dirichlet(
      np.ones(len(STATES))), jnp.float32))}
  worse = np.stack([np.asarray(bound(other, tokens, jax.random.PRNGKey(seed), {}))
                    for seed in range(4)]).reshape(-1, support.sum())
  weights = P_DATA[support]
  assert np.sum(weights * worse.mean(axis=0)) < np.sum(weights * draws.mean(axis=0)) - 0.05


def test_gamma_sampler_with_the_exact_scores_reproduces_the_data() -> None:
  model, count = gamma_model(num_levels=64), 4000
  final = np.asarray(model.sample(EXACT, jax.random.PRNGKey(0), count).final)
  assert np.isin(final, LETTER_IDS).all()
  noise = expected_sampling_tv(P_DATA, count)
  assert tv(empirical(final), P_DATA) < 1.5 * noise + 0.01


def test_gamma_loss_is_smallest_at_the_exact_scores() -> None:
  model = gamma_model()
  data = data_rows(512, seed=2)
  batch, _ = model.prepare_batch(EXACT, None, {"targets": data}, jnp.zeros((), jnp.int32),
                                 jax.random.PRNGKey(5))
  exact, metrics = model.loss_fn(EXACT, batch, None)
  other = {"log_p": jnp.log(jnp.asarray(np.random.default_rng(3).dirichlet(
      np.ones(len(STATES))), jnp.float32))}
  assert float(exact) < float(model.loss_fn(other, batch, None)[0])
  assert float(metrics["weight_sum"]) == data.size
  reference = gamma_model(score_entropy="reference")
  assert np.isfinite(float(reference.loss_fn(EXACT, batch, None)[0]))


@pytest.mark.parametrize("options", [{"schedule": "block", "width": 1, "num_levels": 32},
                                     {"schedule": "slide", "width": 2, "num_levels": 32}])
def test_gamma_block_and_slide_samplers_with_the_exact_scores_reproduce_the_data(
    options: dict[str, Any]) -> None:
  model, count = gamma_model(per_token=True), 4000
  final = np.asarray(model.sample(EXACT, jax.random.PRNGKey(1), count, **options).final)
  assert np.isin(final, LETTER_IDS).all()
  noise = expected_sampling_tv(P_DATA, count)
  assert tv(empirical(final), P_DATA) < 1.5 * noise + 0.02


def test_gamma_block_and_slide_need_per_token_time() -> None:
  with pytest.raises(ValueError, match="NetworkConfig.time_per_token"):
    gamma_model().sample(EXACT, jax.random.PRNGKey(0), 2, schedule="block", width=1,
                         num_levels=4)
  with pytest.raises(ValueError, match="NetworkConfig.time_per_token"):
    gamma_model(annealed=True, train_schedule="slide", train_width=2, train_levels=4)
  with pytest.raises(ValueError, match="attends fully"):
    gamma_model(per_token=True).sampler_options({"attention": "cached"})


@pytest.mark.parametrize("schedule, width", [("block", 1), ("slide", 2)])
def test_gamma_annealed_training_batch(schedule: str, width: int) -> None:
  model = gamma_model(per_token=True, annealed=True, train_schedule=schedule,
                      train_width=width, train_levels=4)
  data = data_rows(2000, seed=6)
  batch, _ = model.prepare_batch(EXACT, None, {"targets": data}, jnp.zeros((), jnp.int32),
                                 jax.random.PRNGKey(8))
  tables = model.process.train_schedule.tables()
  call = np.asarray(batch["times"]).astype(int)
  assert set(call) == set(range(tables["times"].shape[0]))
  np.testing.assert_array_equal(np.asarray(batch["levels"]), tables["times"][call])
  np.testing.assert_array_equal(np.asarray(batch["active"]), tables["active"][call])
  np.testing.assert_array_equal(np.asarray(batch["settled"]), tables["settled"][call])
  noisy, settled = np.asarray(batch["noisy"]), tables["settled"][call]
  idle = ~settled & ~tables["active"][call]
  assert (noisy[settled] == np.asarray(data)[settled]).mean() > 0.99  # sigma(1e-4): clean.
  masked = 1 - np.exp(-(1 - GAMMA) * float(hybrid.log_linear_sigma(1 - 1e-4)))  # 0.986
  assert abs((noisy[idle] == MASK).mean() - masked) < 0.01
  loss, metrics = model.loss_fn(EXACT, batch, None)
  assert np.isfinite(float(loss))
  # Eq. 11's weights on L = 3 are [0, .5, 1] (w = 1) or [0, 0, 1] (w = 2), and a slide never
  # settles the last position: only the block schedule's cross-entropy counts here.
  assert (float(metrics["settled_ce_sum"]) > 0) == (schedule == "block")
  assert float(metrics["weight_sum"]) == data.size


def test_settled_cross_entropy_on_a_hand_built_batch() -> None:
  # Rows of L = 4 over V = 3; the clean token's probabilities are 1/2, 1/4, 1/8, 1 (row 0).
  probs = np.full((2, 4, 3), 1e-3)
  targets = np.array([[0, 1, 2, 0], [2, 2, 2, 2]])
  for i, p in enumerate([0.5, 0.25, 0.125, 1.0]):
    probs[:, i, :] = (1 - p) / 2
    probs[np.arange(2), i, targets[:, i]] = p
  settled = np.array([[True, True, True, False], [False, False, False, False]])
  weights = hyperschedules.block_weighting(4, 2)  # eq. 11: [0, 0, 1, 1].
  ce = hybrid.settled_cross_entropy(jnp.log(jnp.asarray(probs)), jnp.asarray(targets),
                                    jnp.asarray(settled), jnp.asarray(weights))
  np.testing.assert_allclose(np.asarray(ce), [np.log(8) / 3, 0.0], rtol=1e-6)


def test_gamma_loss_adds_the_weighted_settled_cross_entropy() -> None:
  kwargs = dict(per_token=True, annealed=True, train_schedule="block", train_width=1,
                train_levels=2)
  data = jnp.asarray(np.tile(STATES[np.argsort(P_DATA)[-2:]], (2, 1)))  # [4, 3]
  schedule = hyperschedules.make("block", L, 2, 1)
  calls = np.array([0, 2, 3, 5])  # settled: none, 1, 1, 2 positions.
  tables = schedule.tables()
  batch = {"targets": data, "noisy": data, "times": jnp.asarray(calls, jnp.float32),
           "levels": jnp.asarray(tables["times"][calls]),
           "active": jnp.asarray(tables["active"][calls]),
           "settled": jnp.asarray(tables["settled"][calls])}
  plain = gamma_model(settled_weight=0.0, **kwargs)
  weighted = gamma_model(settled_weight=2.5, **kwargs)
  base, base_metrics = plain.loss_fn(EXACT, batch, None)
  total, metrics = weighted.loss_fn(EXACT, batch, None)
  # By hand: the clean-token cross-entropy of the scores' softmax, eq. 11's weights [0, .5, 1],
  # each row's mean over its settled positions.
  scores = weighted.process.log_score_fn(weighted.denoiser, EXACT)(data, batch["levels"])
  letters = np.asarray(scores)[..., LETTER_IDS]
  log_probs = letters - jax.scipy.special.logsumexp(letters, axis=-1, keepdims=True)
  index = np.searchsorted(LETTER_IDS, np.asarray(data))
  ce = -np.take_along_axis(np.asarray(log_probs), index[..., None], axis=-1)[..., 0]
  expected = 0.0 + (0 * ce[1, 0]) + (0 * ce[2, 0]) + (0 * ce[3, 0] + 0.5 * ce[3, 1]) / 2
  np.testing.assert_allclose(float(metrics["settled_ce_sum"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(base_metrics["settled_ce_sum"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(total) - float(base), 2.5 * expected, rtol=1e-4, atol=1e-6)


def test_epsilon_zero_loss_is_the_mdlm_loss() -> None:
  hybrid_model = models.DiffusionModel(
      AbsorbingTables(), hybrid_process.EpsilonHybridProcess(L, epsilon=0.0, time_epsilon=1e-3))
  mdlm = models.DiffusionModel(AbsorbingTables(),
                               absorbing_process.AbsorbingProcess(L, time_epsilon=1e-3))
  params = {"log_p": jnp.log(jnp.asarray(np.random.default_rng(4).dirichlet(
      np.ones(len(STATES))), jnp.float32))}
  data, rng = data_rows(256, seed=3), jax.random.PRNGKey(6)
  batch, _ = hybrid_model.prepare_batch(params, None, {"targets": data},
                                        jnp.zeros((), jnp.int32), rng)
  assert not np.asarray(batch["shuffled"]).any()
  hybrid_loss, _ = hybrid_model.loss_fn(params, batch, None)
  mdlm_loss, _ = mdlm.loss_fn(params, batch, None)
  np.testing.assert_allclose(float(hybrid_loss), float(mdlm_loss), rtol=1e-5)


def test_annealed_training_batch() -> None:
  process = hybrid_process.EpsilonHybridProcess(L, epsilon=0.3, annealed=True,
                                                train_schedule="block", train_width=1,
                                                train_levels=4)
  model = models.DiffusionModel(AbsorbingTables(), process)
  data = data_rows(2000, seed=4)
  batch, _ = model.prepare_batch(EXACT, None, {"targets": data}, jnp.zeros((), jnp.int32),
                                 jax.random.PRNGKey(7))
  active, noisy = np.asarray(batch["active"]), np.asarray(batch["noisy"])
  tables = process.train_schedule.tables()
  call = np.asarray(batch["times"]).astype(int)
  np.testing.assert_array_equal(active, tables["active"][call])
  settled = tables["settled"][call]
  np.testing.assert_array_equal(noisy[settled], np.asarray(data)[settled])
  assert (noisy[~settled & ~active] == MASK).all()  # Idle positions hold MASK.
  assert np.asarray(batch["masked"])[~active].sum() == 0
  loss, metrics = model.loss_fn(EXACT, batch, None)
  assert float(metrics["weight_sum"]) == active.sum() and np.isfinite(float(loss))
