"""The hybrid absorb/uniform processes of Fathi et al. 2025 (HDLM) as array functions.

Tokens live in a vocabulary of ``V`` ids of which the ``real [V]`` ones (``N`` of them: the ids
text may hold) diffuse, plus one absorbing ``mask_id``. Rate matrices have columns = "from"
(``/work/shared/design/hybrid.md`` sec. 2):

- absorbing ``Q_A``: every real token jumps to MASK at rate 1;
- uniform ``Q_U``: every real token jumps to each real token at rate ``1/N``.

``Q_A^2 = -Q_A``, ``Q_U^2 = -Q_U`` and ``Q_U Q_A = Q_A Q_U = -Q_U``, so the two commute and

- **gamma-hybrid** (continuous time, SEDD style): ``Q_gamma = (1 - gamma) Q_A + gamma Q_U``,
  ``exp(s Q_gamma) = 1 + (1 - e^{-(1-gamma)s}) Q_A + (e^{-(1-gamma)s} - e^{-s}) Q_U`` (eq. 7g),
  at total noise ``sigma(t) = -log(1 - (1 - 5e-3) t)`` (log-linear). The network outputs
  log concrete scores; its losses are the exact diffusion-weighted score entropy or the
  reference code's approximation; its sampler is analytic tau-leaping.
- **epsilon-hybrid** (MDM style): a clean token is first replaced, with probability ``epsilon``,
  by a uniform real token (once, whatever ``t``), then masked with probability ``p = t``. The
  network predicts the clean token everywhere; its loss is HDCE (eq. 8-9); its sampler is
  MDLM's ancestral one, optionally with the adaptive correction sampler (ACS).

Every random draw goes through ``sampling.sample_categorical`` (float64-resolution Gumbel noise).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import sampling

Array = jax.Array
#: The reference's log-linear noise constant (``LogLinearNoise(eps=5e-3)``).
LOG_LINEAR_EPSILON = 5e-3
#: ``(noisy [B, L], times [B, L]) -> logits [B, L, V]``: a hybrid denoiser's raw output.
LogitsFn = Callable[[Array, Array], Array]


# ---- Rate matrices (compact space: N real tokens, MASK last) -----------------------------------

def rate_matrices(num_real: int) -> tuple[np.ndarray, np.ndarray]:
  """float64 ``(Q_A, Q_U)``, ``[N + 1, N + 1]`` with MASK last and columns = "from"."""
  size = num_real + 1
  absorb = np.zeros((size, size))
  absorb[num_real, :num_real] = 1.0
  absorb[np.arange(num_real), np.arange(num_real)] = -1.0
  uniform = np.zeros((size, size))
  uniform[:num_real, :num_real] = 1.0 / num_real
  uniform[np.arange(num_real), np.arange(num_real)] -= 1.0
  return absorb, uniform


def gamma_transition(num_real: int, gamma: float, sigma: float) -> np.ndarray:
  """``exp(sigma Q_gamma)`` in closed form (eq. 7g), float64 ``[N + 1, N + 1]``."""
  absorb, uniform = rate_matrices(num_real)
  keep = np.exp(-(1 - gamma) * sigma)
  return np.eye(num_real + 1) + (1 - keep) * absorb + (keep - np.exp(-sigma)) * uniform


# ---- Noise and marginals -------------------------------------------------------------------------

def log_linear_sigma(times: Array, epsilon: float = LOG_LINEAR_EPSILON) -> Array:
  """Total noise ``sigma(t) = -log(1 - (1 - eps) t)``."""
  return -jnp.log1p(-(1 - epsilon) * times)


def log_linear_rate(times: Array, epsilon: float = LOG_LINEAR_EPSILON) -> Array:
  """``sigma'(t) = (1 - eps) / (1 - (1 - eps) t)``."""
  return (1 - epsilon) / (1 - (1 - epsilon) * times)


def gamma_marginal(tokens: Array, sigma: Array, gamma: float, real: Array, mask_id: int
                   ) -> Array:
  """``q_sigma(. | y)`` ``[..., V]`` of clean ``tokens [...]`` at total noise ``sigma [...]``:
  MASK ``1 - A``, real ``v``: ``A (1 - B) / N + A B 1[v = y]`` with ``A = e^{-(1-gamma) sigma}``,
  ``B = e^{-gamma sigma}``; a MASK stays MASK."""
  real = jnp.asarray(real)
  sigma = jnp.asarray(sigma, jnp.float32)[..., None]
  keep, stay = jnp.exp(-(1 - gamma) * sigma), jnp.exp(-gamma * sigma)
  is_token = jax.nn.one_hot(tokens, real.shape[0], dtype=jnp.float32)
  probs = jnp.where(real, keep * (1 - stay) / jnp.sum(real) + keep * stay * is_token, 0.0)
  probs = probs.at[..., mask_id].set(1 - keep[..., 0])
  is_mask = (tokens == mask_id)[..., None]
  return jnp.where(is_mask, jax.nn.one_hot(mask_id, real.shape[0]), probs)


def draw(rng: Array, probs: Array) -> Array:
  """One id per row of ``probs [..., V]`` (non-negative, unnormalised)."""
  return sampling.sample_categorical(rng, jnp.log(jnp.maximum(probs, 0.0)))


def gamma_forward(rng: Array, tokens: Array, sigma: Array, gamma: float, real: Array,
                  mask_id: int) -> Array:
  """A draw of ``x ~ q_sigma(. | tokens)`` per position (``sigma`` broadcast to the tokens)."""
  sigma = jnp.broadcast_to(sigma, tokens.shape)
  return draw(rng, gamma_marginal(tokens, sigma, gamma, real, mask_id))


def gamma_prior_mask_probability(gamma: float, sigma: float = 4.0) -> float:
  """The reference's prior (``QGamma.sample_limit``, ``sigma = 4``): MASK with probability
  ``(1 - A) / ((1 - A) + (1 - B) A)``, otherwise a uniform real token."""
  keep, stay = np.exp(-(1 - gamma) * sigma), np.exp(-gamma * sigma)
  return float((1 - keep) / ((1 - keep) + (1 - stay) * keep))


def gamma_prior(rng: Array, shape: tuple[int, ...], gamma: float, real: Array, mask_id: int,
                sigma: float = 4.0) -> Array:
  """Prior draws of ``shape``: see ``gamma_prior_mask_probability``."""
  real = jnp.asarray(real)
  mask_probability = gamma_prior_mask_probability(gamma, sigma)
  probs = jnp.where(real, (1 - mask_probability) / jnp.sum(real), 0.0)
  probs = probs.at[mask_id].set(mask_probability)
  return draw(rng, jnp.broadcast_to(probs, (*shape, real.shape[0])))


def epsilon_marginal(tokens: Array, mask_probability: Array, epsilon: float, real: Array,
                     mask_id: int) -> Array:
  """``q(. | y)`` ``[..., V]`` of the epsilon-hybrid: MASK ``p``, real ``v``:
  ``(1 - p) ((1 - eps) 1[v = y] + eps / N)``."""
  real = jnp.asarray(real)
  p = jnp.asarray(mask_probability, jnp.float32)[..., None]
  is_token = jax.nn.one_hot(tokens, real.shape[0], dtype=jnp.float32)
  probs = jnp.where(real, (1 - p) * ((1 - epsilon) * is_token + epsilon / jnp.sum(real)), 0.0)
  return probs.at[..., mask_id].set(p[..., 0])


def epsilon_forward(rng: Array, tokens: Array, mask_probability: Array, epsilon: float,
                    real: Array, mask_id: int) -> tuple[Array, Array, Array]:
  """``(noisy, masked, shuffled)`` of ``tokens [B, L]``: each token is masked with probability
  ``p`` (``mask_probability``, broadcast to the tokens); an unmasked one is, with probability
  ``epsilon``, replaced by a uniform real token (``shuffled`` even if the draw equals it)."""
  mask_rng, shuffle_rng, token_rng = jax.random.split(rng, 3)
  p = jnp.broadcast_to(mask_probability, tokens.shape)
  masked = sampling.coin_flips(mask_rng, p, tokens.shape)
  shuffled = sampling.coin_flips(shuffle_rng, epsilon, tokens.shape) & ~masked
  real = jnp.asarray(real, jnp.float32)
  uniform = draw(token_rng, jnp.broadcast_to(real, (*tokens.shape, real.shape[0])))
  noisy = jnp.where(masked, mask_id, jnp.where(shuffled, uniform, tokens))
  return noisy, masked, shuffled


# ---- Losses --------------------------------------------------------------------------------------

def hdce_weights(masked: Array, shuffled: Array, mask_probability: Array, epsilon: float,
                 balance: float, annealed: bool = False) -> Array:
  """HDCE per-position weights (eq. 9): masked ``1/p``, unmasked and shuffled
  ``lambda (1 - eps) / (1 - p)``, unmasked and not shuffled ``lambda eps / (1 - p)``.
  ``annealed``: the reference code's annealed variant, without the ``1/(1 - p)`` factor."""
  p = jnp.broadcast_to(mask_probability, masked.shape)
  unmasked = jnp.where(shuffled, balance * (1 - epsilon), balance * epsilon)
  if not annealed:
    unmasked = unmasked / (1 - p)
  return jnp.where(masked, 1.0 / p, unmasked)


def token_cross_entropy(log_probs: Array, tokens: Array) -> Array:
  """``-log p(tokens)`` ``[...]`` from ``log_probs [..., V]``."""
  return -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


def settled_cross_entropy(log_probs: Array, tokens: Array, settled: Array,
                          block_weights: Array) -> Array:
  """Eq. 10's settled-token term per row ``[B]``: the mean over the row's settled positions of
  eq. 11's ``block_weights [L]`` times ``-log p(tokens)`` (0 for a row with none settled).

  ``log_probs [B, L, V]``, ``tokens`` and ``settled`` (bool) ``[B, L]``. The mean divides by
  the number of settled positions, as the reference code does."""
  terms = jnp.where(settled, block_weights * token_cross_entropy(log_probs, tokens), 0.0)
  count = jnp.sum(settled, axis=-1).astype(jnp.float32)
  return jnp.sum(terms, axis=-1) / jnp.maximum(count, 1.0)


def scale_by_sigma(raw: Array, sigma: Array, num_real: int) -> Array:
  """The gamma network's log-scores: ``raw - log(expm1(sigma)) - log N`` (``sigma [...]``
  broadcast over the last axis)."""
  sigma = jnp.asarray(sigma, jnp.float32)[..., None]
  return raw - jnp.log(jnp.expm1(sigma)) - np.log(num_real)


def mask_embedding_weight(sigma: Array, gamma: float) -> Array:
  """Eq. 12's weighted embedding: ``e(x) = (1 - w) f(x) + w f(MASK)``, ``w = 1 - e^{-gamma
  sigma}`` (0 at ``sigma = 0``, 1 as ``sigma`` grows)."""
  return -jnp.expm1(-gamma * jnp.asarray(sigma, jnp.float32))


def _entropy_constant(ratio: Array) -> Array:
  """``K(a) = a (log a - 1)`` with ``K(0) = 0``."""
  return jax.scipy.special.xlogy(ratio, ratio) - ratio


def gamma_score_entropy(log_scores: Array, noisy: Array, tokens: Array, sigma: Array,
                        gamma: float, real: Array, mask_id: int) -> Array:
  """The exact hybrid denoising score entropy ``[...]`` at each position:
  ``sum_{z != x} Q_gamma[x, z] (e^{s_z} - r_z s_z + K(r_z))`` with ``r_z = q(z|y) / q(x|y)``.

  ``log_scores [..., V]``, ``noisy`` (``x``), ``tokens`` (``y``) and ``sigma`` ``[...]``. The
  rate into a MASK is ``1 - gamma`` from each real ``z``; into a real ``x``, ``gamma / N`` from
  each other real ``z`` (and none from MASK). Non-negative; zero when ``e^{s}`` is the ratio.
  """
  real = jnp.asarray(real)
  num_real = jnp.sum(real)
  marginal = gamma_marginal(tokens, sigma, gamma, real, mask_id)
  at_noisy = jnp.take_along_axis(marginal, noisy[..., None], axis=-1)
  ratio = marginal / at_noisy
  is_noisy = jax.nn.one_hot(noisy, real.shape[0], dtype=bool)
  rate = jnp.where((noisy == mask_id)[..., None], 1 - gamma, gamma / num_real)
  rate = jnp.where(real & ~is_noisy, rate, 0.0)
  scores = jnp.where(rate > 0, log_scores, 0.0)
  # e^s - r s + K(r) = r (e^u - u - 1) with u = s - log r: no cancellation when r is large.
  gap = scores - jnp.log(jnp.where(ratio > 0, ratio, 1.0))
  terms = jnp.where(ratio > 0, ratio * (jnp.expm1(gap) - gap), jnp.exp(scores))
  return jnp.sum(jnp.where(rate > 0, rate * terms, 0.0), axis=-1)


def gamma_score_entropy_reference(log_scores: Array, noisy: Array, tokens: Array, sigma: Array,
                                  gamma: float, real: Array, mask_id: int) -> Array:
  """The reference code's approximation (``QGamma.score_entropy``) ``[...]``: at a MASK,
  ``1 - gamma`` times SEDD's absorbing entropy; at a real token, ``gamma`` times SEDD's uniform
  entropy on the real channels at noise ``sigma`` (not ``gamma sigma``)."""
  real = jnp.asarray(real)
  num_real = jnp.sum(real).astype(jnp.float32)
  sigma = jnp.asarray(sigma, jnp.float32)
  expm1 = jnp.expm1(sigma)
  scores = jnp.where(real, log_scores, 0.0)
  exp_scores = jnp.where(real, jnp.exp(scores), 0.0)
  at = lambda ids, values: jnp.take_along_axis(values, ids[..., None], axis=-1)[..., 0]
  clean_score = at(tokens, scores)
  absorbing = (jnp.sum(exp_scores, axis=-1) - clean_score / expm1
               + _entropy_constant(1 / expm1))
  rho = 1 - num_real / (expm1 + num_real)
  positive = jnp.sum(exp_scores, axis=-1) / num_real - at(noisy, exp_scores) / num_real
  negative = jnp.sum(scores, axis=-1) / num_real - at(noisy, scores) / num_real
  unchanged = noisy == tokens
  negative = jnp.where(unchanged, rho * negative, negative + clean_score / expm1)
  constant = jnp.where(unchanged, (num_real - 1) / num_real * rho * (jnp.log(rho) - 1),
                       ((-jnp.log(rho) - 1) / rho - (num_real - 2)) / num_real)
  uniform = positive - negative + constant
  return jnp.where(noisy == mask_id, (1 - gamma) * absorbing, gamma * uniform)


# ---- The gamma reverse step (analytic tau-leaping) -----------------------------------------------

def transposed_transition(noisy: Array, delta: Array, gamma: float, real: Array, mask_id: int
                          ) -> Array:
  """Row ``x`` of ``exp(delta Q_gamma)``, ``[..., V]``: ``P[x, z]``, the probability that ``z``
  moves to ``x`` over noise ``delta``."""
  real = jnp.asarray(real)
  delta = jnp.asarray(delta, jnp.float32)[..., None]
  keep, stay = jnp.exp(-(1 - gamma) * delta), jnp.exp(-gamma * delta)
  is_noisy = jax.nn.one_hot(noisy, real.shape[0], dtype=jnp.float32)
  from_real = jnp.where(real, keep * (1 - stay) / jnp.sum(real) + keep * stay * is_noisy, 0.0)
  from_mask = jnp.where(real, 1 - keep, 0.0).at[..., mask_id].set(1.0)
  return jnp.where((noisy == mask_id)[..., None], from_mask, from_real)


def staggered_scores(scores: Array, delta: Array, gamma: float, real: Array, mask_id: int,
                     exact: bool) -> Array:
  """``exp(-delta Q_gamma) S`` for the scores ``S [..., V]`` (``exact``) or the reference's
  convex combination ``(1 - gamma) stag_A + gamma stag_U`` of SEDD's staggered scores."""
  real = jnp.asarray(real)
  delta = jnp.asarray(delta, jnp.float32)[..., None]
  scores = jnp.where(real | (jnp.arange(real.shape[0]) == mask_id), scores, 0.0)
  real_sum = jnp.sum(jnp.where(real, scores, 0.0), axis=-1, keepdims=True)
  grow = jnp.exp(delta)
  if exact:
    unmask = jnp.exp((1 - gamma) * delta)
    on_real = scores * grow + (unmask - grow) / jnp.sum(real) * real_sum
    on_mask = scores[..., mask_id] + (1 - unmask[..., 0]) * real_sum[..., 0]
  else:
    absorb_mask = scores[..., mask_id] * grow[..., 0] + (1 - grow[..., 0]) * jnp.sum(
        scores, axis=-1)
    uniform_real = scores * grow + (1 - grow) / jnp.sum(real) * real_sum
    on_real = (1 - gamma) * scores * grow + gamma * uniform_real
    on_mask = (1 - gamma) * absorb_mask + gamma * scores[..., mask_id]
  return jnp.where(real, on_real, 0.0).at[..., mask_id].set(on_mask)


def gamma_reverse_probs(scores: Array, noisy: Array, delta: Array, gamma: float, real: Array,
                        mask_id: int, final: Array, exact: bool = True) -> Array:
  """Unnormalised ``p(x_s | x_t)`` ``[..., V]`` of one tau-leaping step over noise ``delta``:
  ``staggered_scores ⊙ transposed_transition``, MASK impossible where ``final``.

  The score at the current token ``x_t`` itself is the ratio ``p_t(x_t) / p_t(x_t) = 1``
  whatever ``scores`` holds there: a network's output at that index is never trained (the
  score entropy sums over ``z != x_t``), and the staggered scores read it (SEDD sets it the
  same way)."""
  scores = jnp.where(jax.nn.one_hot(noisy, scores.shape[-1], dtype=bool), 1.0, scores)
  probs = (staggered_scores(scores, delta, gamma, real, mask_id, exact)
           * transposed_transition(noisy, delta, gamma, real, mask_id))
  probs = jnp.maximum(probs, 0.0)
  return jnp.where(final[..., None] & (jnp.arange(probs.shape[-1]) == mask_id), 0.0, probs)


# ---- Samplers over a hyperschedule's tables ------------------------------------------------------

def _next_times(times: Array) -> Array:
  """``[T, L]``: each call's times shifted one call back (the last call's own times repeat;
  the samplers treat the last call as final)."""
  return jnp.concatenate([times[1:], times[-1:]], axis=0)


def _epsilon_update(rng: Array, tokens: Array, logits: Array, keep: Array, active: Array,
                    frozen: Array, mask_id: int, allowed: Array, eta: float, temperature: float,
                    top_k: int, top_p: float) -> tuple[Array, Array]:
  """One call of the epsilon sampler given the model's ``logits [B, L, V]``: the new tokens and
  each row's number of ACS corrections."""
  token_rng, reveal_rng, correct_rng = jax.random.split(rng, 3)
  logits = jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)
  proposal = sampling.sample_categorical(token_rng, logits, temperature, top_k, top_p)
  movable = active & ~frozen
  masked = tokens == mask_id
  reveal = masked & movable & sampling.coin_flips(reveal_rng, 1.0 - keep, tokens.shape)
  correct = ~masked & movable & sampling.coin_flips(correct_rng, eta * keep, tokens.shape)
  return jnp.where(reveal | correct, proposal, tokens), jnp.sum(correct, axis=-1)


def _epsilon_steps(tables: dict[str, np.ndarray]) -> tuple[Array, Array, Array, Array]:
  """Per call: ``(times, keep ratio t_{c+1}/t_c (0 at final calls), active, call index)``."""
  times = jnp.asarray(tables["times"])
  keep_ratio = jnp.where(jnp.asarray(tables["final"]), 0.0, _next_times(times) / times)
  return times, keep_ratio, jnp.asarray(tables["active"]), jnp.arange(times.shape[0])


def _draw_ids(allowed: Array, mask_id: int) -> Array:
  allowed = jnp.asarray(allowed)
  return allowed & (jnp.arange(allowed.shape[0]) != mask_id)


def epsilon_sample(rng: Array, logits_fn: Callable[..., Array], initial: Array, frozen: Array,
                   tables: dict[str, np.ndarray], mask_id: int, allowed: Array, eta: float = 0.0,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   attention_masks: Optional[np.ndarray] = None) -> tuple[Array, Array]:
  """Ancestral sampling of the epsilon-hybrid over a hyperschedule, with ACS, in one scan.

  At call ``c`` each active masked position is revealed with probability ``1 - t_{c+1}/t_c``
  (1 at its final call) to a draw from the model; with ``eta > 0`` (ACS) each active position
  already unmasked at the start of the call is, with probability ``eta t_{c+1}/t_c``, redrawn
  from the same logits. Settled, idle and ``frozen`` (prompt) positions never change.

  Args:
    rng: PRNG key; call ``c`` draws with ``fold_in(rng, c)``.
    logits_fn: the denoiser, ``(noisy [B, L], times [B, L]) -> [B, L, V]``, or with
      ``attention_masks`` ``(noisy, times, mask [L, L]) -> [B, L, V]``.
    initial: ``[B, L]``, ``mask_id`` where nothing is known yet.
    frozen: ``[B, L]`` bool, positions never resampled (the prompt).
    tables: ``hyperschedules.Hyperschedule.tables()``.
    mask_id, allowed: the absorbing id and the ``[V]`` ids a draw may return.
    eta: ACS's correction rate (0: the original sampler).
    temperature, top_k, top_p: shape the token draws.
    attention_masks: ``[T, L, L]`` bool, each call's attention mask (None: the network's own).

  Returns:
    ``(final [B, L], corrections [B])``: the samples and each row's number of corrections.
  """
  allowed = _draw_ids(allowed, mask_id)
  masks = None if attention_masks is None else jnp.asarray(attention_masks)

  def step(carry: tuple[Array, Array], inputs: tuple[Array, ...]) -> tuple[tuple, None]:
    tokens, corrections = carry
    call_times, keep, active, call = inputs
    call_times = jnp.broadcast_to(call_times, tokens.shape)
    logits = (logits_fn(tokens, call_times) if masks is None
              else logits_fn(tokens, call_times, masks[call]))
    tokens, corrected = _epsilon_update(jax.random.fold_in(rng, call), tokens, logits, keep,
                                        active, frozen, mask_id, allowed, eta, temperature,
                                        top_k, top_p)
    return (tokens, corrections + corrected), None

  (final, corrections), _ = jax.lax.scan(
      step, (initial.astype(jnp.int32), jnp.zeros(initial.shape[0], jnp.int32)),
      _epsilon_steps(tables))
  return final, corrections


#: ``(cache or None, block [B, w]) -> (logits [B, w, V], cache with the block appended)``.
BlockLogitsFn = Callable[[Any, Array], tuple[Array, Any]]


def epsilon_sample_cached(rng: Array, block_logits_fn: BlockLogitsFn, initial: Array,
                          frozen: Array, schedule: Any, mask_id: int, allowed: Array,
                          eta: float = 0.0, temperature: float = 1.0, top_k: int = 0,
                          top_p: float = 1.0) -> tuple[Array, Array]:
  """``epsilon_sample`` over a block hyperschedule with the settled blocks' keys and values
  cached: each call runs the network on the active block only, attending to the cache and to
  itself; after a block's last call its final tokens are appended to the cache once. With the
  schedule's ``block_causal`` attention masks, the same draws as ``epsilon_sample`` (same keys,
  same calls) from the same logits up to float rounding."""
  if schedule.kind not in ("block", "flat", "quench"):
    raise ValueError(f"KV caching needs a block schedule, got {schedule.kind!r}.")
  allowed = _draw_ids(allowed, mask_id)
  _, keep_ratio, active, calls = _epsilon_steps(schedule.tables())
  tokens, corrections = initial.astype(jnp.int32), jnp.zeros(initial.shape[0], jnp.int32)
  cache = None
  for block_start in range(0, schedule.seq_len, schedule.width):
    block_end = min(block_start + schedule.width, schedule.seq_len)
    first_call = block_start // schedule.width * schedule.num_levels
    rows = slice(first_call, first_call + schedule.num_levels)

    def step(carry: tuple[Array, Array], inputs: tuple[Array, ...], cache: Any = cache,
             block_start: int = block_start, block_end: int = block_end) -> tuple[tuple, None]:
      tokens, corrections = carry
      keep, call_active, call = inputs
      block_logits, _ = block_logits_fn(cache, tokens[:, block_start:block_end])
      logits = jnp.zeros(tokens.shape + block_logits.shape[-1:], jnp.float32)
      logits = logits.at[:, block_start:block_end].set(block_logits)
      tokens, corrected = _epsilon_update(jax.random.fold_in(rng, call), tokens, logits, keep,
                                          call_active, frozen, mask_id, allowed, eta,
                                          temperature, top_k, top_p)
      return (tokens, corrections + corrected), None

    (tokens, corrections), _ = jax.lax.scan(
        step, (tokens, corrections), (keep_ratio[rows], active[rows], calls[rows]))
    _, cache = block_logits_fn(cache, tokens[:, block_start:block_end])
  return tokens, corrections


#: ``(cache, block [B, w], block_mask [w, w] or None) -> (logits [B, w, V], cache with the block
#: appended)``: block decoding where each new token attends to the cache and to the tokens of
#: the block its row of ``block_mask`` allows (None: all).
MaskedBlockLogitsFn = Callable[[Any, Array, Optional[Array]], tuple[Array, Any]]


def slide_cache_plan(schedule: Any) -> dict[str, np.ndarray]:
  """The cached decoding of a slide hyperschedule (causal context), per call ``[T]``:
  ``start``, the first position of the ``w``-token block the network runs on (the cache holds
  ``[0, start)``; ``clip(c - w, 0, d - w)``); ``commit``, whether position ``start - 1`` (settled
  at the previous call) is appended to the cache first; ``block_mask`` ``[T, w, w]``: the
  block's settled rows (already settled positions at the end of the sequence, where the window
  stops moving) attend causally, its active rows attend every settled and active token, and no
  row attends an idle token. With it the block's logits equal the uncached forward's under
  ``attention_mask(c, "causal")``: the cached keys and values of a settled position depend only
  on the positions before it."""
  if schedule.kind != "slide":
    raise ValueError(f"a slide cache plan needs a slide schedule, got {schedule.kind!r}.")
  seq_len, width = schedule.seq_len, schedule.width
  calls = np.arange(1, schedule.num_calls + 1)
  start = np.clip(calls - width, 0, seq_len - width)
  num_settled = np.maximum(calls - width, 0) - start
  num_visible = np.minimum(calls, seq_len) - start
  rows = np.arange(width)[None, :, None]
  columns = np.arange(width)[None, None, :]
  settled_row = rows < num_settled[:, None, None]
  block_mask = np.where(settled_row, columns <= rows, columns < num_visible[:, None, None])
  commit = np.concatenate([[False], start[1:] > start[:-1]])
  return {"start": start.astype(np.int32), "commit": commit, "block_mask": block_mask}


def epsilon_sample_cached_slide(rng: Array, block_logits_fn: MaskedBlockLogitsFn,
                                initial: Array, frozen: Array, schedule: Any, mask_id: int,
                                allowed: Array, eta: float = 0.0, temperature: float = 1.0,
                                top_k: int = 0, top_p: float = 1.0) -> tuple[Array, Array]:
  """``epsilon_sample`` over a slide hyperschedule with the settled positions' keys and values
  cached (``slide_cache_plan``), in one scan: each call appends the position settled at the
  previous call (one token, attending to the cache: causal context) and runs the network on a
  ``w``-token block. With the schedule's ``causal`` attention masks, the same draws as
  ``epsilon_sample`` (same keys, same calls) from the same logits up to float rounding."""
  plan = slide_cache_plan(schedule)
  allowed = _draw_ids(allowed, mask_id)
  width = schedule.width
  _, keep_ratio, active, calls = _epsilon_steps(schedule.tables())
  tokens = initial.astype(jnp.int32)
  _, cache = block_logits_fn(None, tokens[:, :width], None)
  cache = jax.tree_util.tree_map(jnp.zeros_like, cache)  # An empty cache of the right shapes.

  def step(carry: tuple[Array, Array, Any], inputs: tuple[Array, ...]) -> tuple[tuple, None]:
    tokens, corrections, cache = carry
    keep, call_active, call, start, commit, block_mask = inputs
    cache = jax.lax.cond(
        commit,
        lambda cache: block_logits_fn(
            cache, jax.lax.dynamic_slice_in_dim(tokens, start - 1, 1, axis=1), None)[1],
        lambda cache: cache, cache)
    block_logits, _ = block_logits_fn(
        cache, jax.lax.dynamic_slice_in_dim(tokens, start, width, axis=1), block_mask)
    logits = jax.lax.dynamic_update_slice_in_dim(
        jnp.zeros(tokens.shape + block_logits.shape[-1:], jnp.float32), block_logits, start,
        axis=1)
    tokens, corrected = _epsilon_update(jax.random.fold_in(rng, call), tokens, logits, keep,
                                        call_active, frozen, mask_id, allowed, eta, temperature,
                                        top_k, top_p)
    return (tokens, corrections + corrected, cache), None

  inputs = (keep_ratio, active, calls, jnp.asarray(plan["start"]), jnp.asarray(plan["commit"]),
            jnp.asarray(plan["block_mask"]))
  (tokens, corrections, _), _ = jax.lax.scan(
      step, (tokens, jnp.zeros(initial.shape[0], jnp.int32), cache), inputs)
  return tokens, corrections


def gamma_sample(rng: Array, log_score_fn: LogitsFn, initial: Array, frozen: Array,
                 tables: dict[str, np.ndarray], gamma: float, real: Array, mask_id: int,
                 exact: bool = True) -> Array:
  """Analytic tau-leaping of the gamma-hybrid over a hyperschedule, in one scan.

  At call ``c`` the active positions step from ``sigma(t_c)`` to ``sigma(t_{c+1})`` (at their
  final call to ``sigma(t_c / 100)``, the reference's ``0.99 a`` step from ``t = a``), drawing
  from ``gamma_reverse_probs`` (MASK impossible at the final call); settled, idle and
  ``frozen`` positions never change.

  Args:
    rng: PRNG key; call ``c`` draws with ``fold_in(rng, c)``.
    log_score_fn: ``(noisy [B, L], times [B, L]) -> [B, L, V]`` log concrete scores.
    initial: ``[B, L]`` prior draws (and the prompt).
    frozen: ``[B, L]`` bool, positions never resampled.
    tables: ``hyperschedules.Hyperschedule.tables()``.
    gamma, real, mask_id: the process.
    exact: the exact staggered scores (True) or the reference code's approximation.
  """
  times = jnp.asarray(tables["times"])
  final = jnp.asarray(tables["final"])
  next_times = jnp.where(final, times / 100, _next_times(times))
  steps = (times, next_times, jnp.asarray(tables["active"]), final, jnp.arange(times.shape[0]))
  support = jnp.asarray(real) | (jnp.arange(jnp.asarray(real).shape[0]) == mask_id)

  def step(tokens: Array, inputs: tuple[Array, ...]) -> tuple[Array, None]:
    call_times, call_next, active, call_final, call = inputs
    delta = jnp.broadcast_to(log_linear_sigma(call_times) - log_linear_sigma(call_next),
                             tokens.shape)
    log_scores = log_score_fn(tokens, jnp.broadcast_to(call_times, tokens.shape))
    log_scores = jnp.minimum(log_scores.astype(jnp.float32), 80.0)
    scores = jnp.where(support, jnp.exp(log_scores), 0.0)
    probs = gamma_reverse_probs(scores, tokens, delta, gamma, real, mask_id,
                                jnp.broadcast_to(call_final, tokens.shape), exact)
    proposal = draw(jax.random.fold_in(rng, call), probs)
    return jnp.where(active & ~frozen, proposal, tokens), None

  final_tokens, _ = jax.lax.scan(step, initial.astype(jnp.int32), steps)
  return final_tokens
