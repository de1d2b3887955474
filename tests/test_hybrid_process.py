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

from glauber_jax import denoisers, models
from glauber_jax.processes import absorbing_process, hybrid, hybrid_process
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
  ``{"log_p": [S]}`` at the row's time."""

  allowed_tokens: np.ndarray = dataclasses.field(default_factory=letter_mask)
  special_ids: denoisers.SpecialIds = denoisers.SpecialIds.from_vocabulary(VOCAB)

  def init_variables(self, rng: Array, batch_size: int, seq_len: int) -> dict[str, Any]:
    raise NotImplementedError("tables are built by the test")

  def training_flops(self, input_length: int, output_length: int) -> float:
    return 0.0

  def logits(self, params: Any, noisy: Array, times: Array,
             dropout_rng: Array | None = None) -> Array:
    sigma = hybrid.log_linear_sigma(times)[:, None, None]  # [B, 1, 1]
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
    raw = log_ratio + jnp.log(jnp.expm1(sigma)) + np.log(3)
    full = jnp.zeros(noisy.shape + (VOCAB.vocab_size,), jnp.float32)
    return full.at[..., channels].set(raw)


def gamma_model(**settings: Any) -> models.DiffusionModel:
  process = hybrid_process.GammaHybridProcess(L, gamma=GAMMA, **settings)
  return models.DiffusionModel(GammaScoreTables(), process)


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
