"""The contract every diffusion process meets (``processes.base.Process``), on enumerable toys.

Each process runs through ``models.DiffusionModel`` with a *table denoiser*: its parameters are
exact tables of a toy language of 3 letters and ``L = 3`` sites (27 sequences, the Markov
chain of ``test_glauber_end_to_end``), so every quantity can be compared with enumeration:

- noise levels: ``[B, L]`` in ``[0, 1]``, every position at level 1 at the final time, and the
  levels of the forward batch are the process's ``noise_levels`` of its times;
- forward marginals: the law of the corrupted batch is the exact forward marginal (Glauber:
  ``p_t`` of the chain at each step; absorbing: each token masked with probability its level);
- the bound: with the exact reverse model it equals ``log p(x)`` (Glauber: on every single path,
  since the exact reverse chain reproduces the forward joint; absorbing: in expectation), and
  with a perturbed model its mean stays below the perturbed model's own log-likelihood (its
  sampler's law, enumerated) and, averaged over the data, below the data's;
- the sampler with the exact reverse model reproduces the data's law (TV within the sampling
  noise of an iid sample of the same size).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import denoisers, models, sampling
from glauber_jax.processes import absorbing_process, glauber_process, hybrid_process
from test_glauber_end_to_end import (L, LETTER_IDS, VOCAB, ExactChain, all_digits,
                                     expected_sampling_tv, language_distribution,
                                     neighbour_states)
from test_glauber_toy import tv

Array = jax.Array
STATES = LETTER_IDS[all_digits(len(LETTER_IDS))].astype(np.int32)  # [27, L] token ids
P_DATA = language_distribution(LETTER_IDS)


def letter_mask() -> np.ndarray:
  allowed = np.zeros(VOCAB.vocab_size, bool)
  allowed[LETTER_IDS] = True
  return allowed


def state_index(tokens: Array) -> Array:
  """Index into ``STATES`` of letter rows ``[B, L]``; jittable."""
  digits = tokens - int(LETTER_IDS[0])
  return jnp.sum(digits * jnp.asarray(len(LETTER_IDS) ** np.arange(L - 1, -1, -1)), axis=-1)


def empirical(tokens: Array) -> np.ndarray:
  counts = np.bincount(np.asarray(state_index(jnp.asarray(tokens))), minlength=len(STATES))
  return counts / counts.sum()


def on_letters(rows: Array) -> Array:
  """``[..., A]`` log-probabilities over the letters as logits ``[..., V]`` (others blocked)."""
  full = jnp.full(rows.shape[:-1] + (VOCAB.vocab_size,), -1e9, jnp.float32)
  return full.at[..., jnp.asarray(LETTER_IDS)].set(rows.astype(jnp.float32))


@dataclasses.dataclass(frozen=True, eq=False)
class GlauberTables:
  """A Glauber denoiser whose parameters are tables: ``{"reverse": [T + 1, L, S, A]``
  log-kernels keyed by the state whose site is read, ``"prior": [S]`` log-probabilities}."""

  allowed_tokens: np.ndarray = dataclasses.field(default_factory=letter_mask)

  def init_variables(self, rng: Array, batch_size: int, seq_len: int) -> dict[str, Any]:
    raise NotImplementedError("tables are built by the test")

  def training_flops(self, input_length: int, output_length: int) -> float:
    return 0.0

  def infill_logits(self, params: Any, tokens: Array, sites: Array, times: Array,
                    dropout_rng: Array | None = None) -> Array:
    return on_letters(params["reverse"][times, sites, state_index(tokens)])

  def causal_log_prob(self, params: Any, tokens: Array, times: Array,
                      dropout_rng: Array | None = None) -> Array:
    return params["prior"][state_index(tokens)]

  def causal_gen(self, params: Any, rng: Array, prefix: Array, seq_len: int, times: Array,
                 options: sampling.SamplerOptions) -> Array:
    index = jax.random.categorical(rng, params["prior"], shape=(prefix.shape[0],))
    return jnp.asarray(STATES)[index]


@dataclasses.dataclass(frozen=True, eq=False)
class AbsorbingTables:
  """An absorbing-process denoiser whose parameters are a law over the states,
  ``{"log_p": [S]}``: its output at each masked position is that law's exact posterior given
  the unmasked tokens."""

  allowed_tokens: np.ndarray = dataclasses.field(default_factory=letter_mask)
  special_ids: denoisers.SpecialIds = denoisers.SpecialIds.from_vocabulary(VOCAB)

  def init_variables(self, rng: Array, batch_size: int, seq_len: int) -> dict[str, Any]:
    raise NotImplementedError("tables are built by the test")

  def training_flops(self, input_length: int, output_length: int) -> float:
    return 0.0

  def logits(self, params: Any, noisy: Array, times: Array,
             dropout_rng: Array | None = None) -> Array:
    states = jnp.asarray(STATES)
    visible = noisy != self.special_ids.mask
    consistent = jnp.all(~visible[:, None, :] | (states[None] == noisy[:, None, :]), axis=-1)
    weights = jnp.where(consistent, jnp.exp(params["log_p"])[None], 0.0)  # [B, S]
    is_letter = states[..., None] == jnp.asarray(LETTER_IDS)  # [S, L, A]
    posterior = jnp.einsum("bs,sla->bla", weights, is_letter.astype(jnp.float32))
    posterior = posterior / jnp.sum(posterior, axis=-1, keepdims=True)
    return on_letters(jnp.log(jnp.maximum(posterior, 1e-30)))


@dataclasses.dataclass
class Toy:
  """One process on the toy: the model, its exact and perturbed parameters, the perturbed
  model's own law over the states, what inference needs, the process times of a level grid,
  and the check of a forward batch against the exact forward marginals."""

  model: models.DiffusionModel
  exact: Any
  perturbed: Any
  perturbed_law: np.ndarray
  inference_state: dict[str, Any]
  time_grid: Array
  num_samples: int
  forward_check: Callable[[dict[str, Array]], None]
  bound_is_exact_per_path: bool


def glauber_toy() -> Toy:
  process = glauber_process.GlauberProcess(L, num_rounds=2, permutation_seed=1,
                                           forward_mixing=0.0, training_mode="literal")
  rng = np.random.default_rng(0)
  arity = len(LETTER_IDS)
  raw = rng.dirichlet(np.ones(arity) * 0.5, size=(L, arity ** L))
  teacher = np.stack([raw[k][neighbour_states(arity)[k, :, 0]] for k in range(L)])  # [L, S, A]
  chain = ExactChain(LETTER_IDS, process.schedule.sites(), P_DATA, teacher)
  num_steps = process.num_steps
  exact = {"reverse": jnp.log(jnp.asarray(chain.reverse, jnp.float32)),
           "prior": jnp.log(jnp.asarray(chain.marginals[-1], jnp.float32))}
  blurred = 0.6 * chain.reverse + 0.4 / arity
  perturbed = {"reverse": jnp.log(jnp.asarray(blurred, jnp.float32)), "prior": exact["prior"]}
  perturbed_law = chain.marginals[-1]  # The sampler's law: p_T through the blurred kernels.
  for t in range(num_steps, 0, -1):
    k = chain.sites[t - 1]
    previous = np.zeros_like(perturbed_law)
    np.add.at(previous, chain.neighbours[k], perturbed_law[:, None] * blurred[t, k])
    perturbed_law = previous
  teacher_tables = {"reverse": jnp.log(jnp.broadcast_to(
      jnp.asarray(teacher, jnp.float32), (num_steps + 1, *teacher.shape))),
                    "prior": exact["prior"]}

  def forward_check(batch: dict[str, Array]) -> None:
    times = np.asarray(batch["times"])
    for t in range(1, num_steps + 1):
      rows = np.asarray(batch["tokens"])[times == t]
      noise = 1.5 * expected_sampling_tv(chain.marginals[t], len(rows)) + 0.01
      assert tv(empirical(rows), chain.marginals[t]) < noise, t

  return Toy(models.DiffusionModel(GlauberTables(), process), exact, perturbed, perturbed_law,
             {"teacher": teacher_tables}, jnp.arange(1, num_steps + 1), 20_000, forward_check,
             bound_is_exact_per_path=True)


def law_tables() -> tuple[dict[str, Array], dict[str, Array], np.ndarray]:
  """The exact law's tables, another law's tables and that other law (the perturbed model)."""
  exact = {"log_p": jnp.log(jnp.asarray(P_DATA, jnp.float32))}
  other = np.random.default_rng(1).dirichlet(np.ones(len(STATES)))
  return exact, {"log_p": jnp.log(jnp.asarray(other, jnp.float32))}, other


def check_masked_at_levels(batch: dict[str, Array]) -> np.ndarray:
  """Checks that each position is masked at its level's rate (4 standard errors); returns the
  batch's mask indicator."""
  masked, levels = np.asarray(batch["masked"], np.float64), np.asarray(batch["levels"])
  se = np.sqrt(np.mean(levels * (1 - levels)) / masked.shape[0])
  np.testing.assert_array_less(np.abs((masked - levels).mean(axis=0)), 4 * se)
  return masked


def absorbing_toy() -> Toy:
  # 128 steps: two tokens are revealed in one step (drawn independently) in about 2% of the
  # sequences, a bias well below the sampling noise of the 4,000 samples.
  process = absorbing_process.AbsorbingProcess(L, num_steps=128, time_epsilon=0.0)
  exact, perturbed, other = law_tables()

  def forward_check(batch: dict[str, Array]) -> None:
    masked = check_masked_at_levels(batch)
    mask_id = VOCAB.sentinel_id(0)
    noisy, targets = np.asarray(batch["noisy"]), np.asarray(batch["targets"])
    np.testing.assert_array_equal(noisy, np.where(masked > 0, mask_id, targets))

  # The exact posteriors of another law: in continuous time the model's law is that law.
  return Toy(models.DiffusionModel(AbsorbingTables(), process), exact, perturbed, other, {},
             jnp.linspace(0.1, 1.0, 6), 4000, forward_check, bound_is_exact_per_path=False)


def epsilon_hybrid_toy() -> Toy:
  # The absorbing toy's tables: the sampler never shuffles, so the exact posteriors given the
  # unmasked tokens are the exact reverse model of the epsilon-hybrid's ancestral sampler.
  epsilon = 0.2
  process = hybrid_process.EpsilonHybridProcess(L, epsilon=epsilon, time_epsilon=0.0,
                                                num_levels=128)
  exact, perturbed, other = law_tables()

  def forward_check(batch: dict[str, Array]) -> None:
    masked = check_masked_at_levels(batch)
    shuffled = np.asarray(batch["shuffled"])
    noisy, targets = np.asarray(batch["noisy"]), np.asarray(batch["targets"])
    np.testing.assert_array_equal(noisy[masked > 0], VOCAB.sentinel_id(0))
    kept = (masked == 0) & ~shuffled
    np.testing.assert_array_equal(noisy[kept], targets[kept])
    assert np.isin(noisy[shuffled], LETTER_IDS).all()
    rate, count = shuffled.sum() / (masked == 0).sum(), (masked == 0).sum()
    assert abs(rate - epsilon) < 4 * np.sqrt(epsilon * (1 - epsilon) / count)

  return Toy(models.DiffusionModel(AbsorbingTables(), process), exact, perturbed, other, {},
             jnp.linspace(0.1, 1.0, 6), 4000, forward_check, bound_is_exact_per_path=False)


TOYS = {"glauber": glauber_toy, "absorbing": absorbing_toy,
        "epsilon_hybrid": epsilon_hybrid_toy}


@pytest.fixture(params=sorted(TOYS), scope="module")
def toy(request: pytest.FixtureRequest) -> Toy:
  return TOYS[request.param]()


def data_rows(count: int, seed: int) -> Array:
  index = np.random.default_rng(seed).choice(len(STATES), size=count, p=P_DATA)
  return jnp.asarray(STATES[index])


def test_noise_levels_are_per_position_and_full_at_the_end(toy: Toy) -> None:
  levels = np.asarray(toy.model.process.noise_levels(toy.time_grid))
  assert levels.shape == (len(toy.time_grid), L)
  assert (levels >= 0).all() and (levels <= 1).all()
  assert (np.diff(levels, axis=0) >= 0).all()  # Noise only grows with time.
  np.testing.assert_allclose(levels[-1], 1.0)  # Every position fully noised at the end.


def test_forward_batch_follows_the_exact_marginals(toy: Toy) -> None:
  model, data = toy.model, data_rows(toy.num_samples, seed=1)
  rng = jax.random.PRNGKey(3)
  state = model.process.init_state(model.denoiser, toy.inference_state.get("teacher"), data,
                                   rng)
  batch, _ = jax.jit(model.prepare_batch)(toy.exact, state, {"targets": data},
                                          jnp.zeros((), jnp.int32), rng)
  np.testing.assert_allclose(np.asarray(batch["levels"]),
                             np.asarray(model.process.noise_levels(batch["times"])))
  toy.forward_check(batch)


def test_the_bound_is_exact_for_the_exact_model_and_below_otherwise(toy: Toy) -> None:
  model = toy.model
  support = P_DATA > 0
  tokens = jnp.asarray(np.tile(STATES[support], (256, 1)))
  log_p = np.log(np.tile(P_DATA[support], 256))

  def bound(params: Any, seed: int) -> np.ndarray:
    return np.asarray(model.likelihood_bound(params, tokens, jax.random.PRNGKey(seed),
                                             toy.inference_state), np.float64)

  exact = np.stack([bound(toy.exact, seed) for seed in range(4)])  # [draws, rows]
  if toy.bound_is_exact_per_path:
    np.testing.assert_allclose(exact, np.broadcast_to(log_p, exact.shape), atol=2e-4)
  per_state = exact.reshape(4, 256, -1).transpose(2, 0, 1).reshape(support.sum(), -1)
  truth = np.log(P_DATA[support])
  se = per_state.std(axis=1) / np.sqrt(per_state.shape[1])
  assert (np.abs(per_state.mean(axis=1) - truth) < 5 * se + 1e-3).all()
  worse = np.stack([bound(toy.perturbed, seed) for seed in range(4)])
  worse = worse.reshape(4, 256, -1).transpose(2, 0, 1).reshape(support.sum(), -1)
  se = worse.std(axis=1) / np.sqrt(worse.shape[1])
  # Never above the model's own log-likelihood; on data, below the data's.
  assert (worse.mean(axis=1) < np.log(toy.perturbed_law[support]) + 5 * se + 1e-3).all()
  weights = P_DATA[support]
  assert np.sum(weights * worse.mean(axis=1)) < np.sum(weights * truth) - 0.01


def test_the_sampler_with_the_exact_model_reproduces_the_data(toy: Toy) -> None:
  samples = toy.model.sample(toy.exact, jax.random.PRNGKey(0), toy.num_samples)
  final = np.asarray(samples.final)
  assert np.isin(final, LETTER_IDS).all()
  noise = expected_sampling_tv(P_DATA, toy.num_samples)
  assert tv(empirical(final), P_DATA) < 1.5 * noise + 0.005
  if samples.draft is not None:  # The draft is the prior's, far from the data.
    assert tv(empirical(np.asarray(samples.draft)), P_DATA) > 3 * noise + 0.05
