"""The absorbing (masked) diffusion process of MDLM (Sahoo et al. 2024) as array functions.

The absorbing state ``m`` is a mask id and the schedule log-linear, ``alpha_t = 1 - t``: at time
``t`` each token is masked independently with probability ``t``. The denoiser uses the SUBS
parameterisation: its output never puts mass on ``m`` and unmasked tokens are carried over
unchanged. With ``alpha'_t / (1 - alpha_t) = -1/t`` the continuous-time bound is

    -log p(x) <= NELBO(x)
               = E_{t ~ U(0, 1], z_t} [ (1/t) sum_{i: z_t^i = m} -log x_theta^i(z_t)[x^i] ],

and the ancestral sampler steps ``t -> s = t - 1/N`` on the grid ``t_k = k/N``: a masked token
is revealed with probability ``(t - s)/t = 1/k``, to a draw from ``x_theta``.

Every function takes the denoiser as ``logits_fn(noisy [B, L], times [B]) -> [B, L, V]``, so a
table stands in for the network in exact tests (``absorbing_process.AbsorbingProcess`` passes
its denoiser's). Every draw goes through ``sampling.sample_categorical``.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from glauber_jax import sampling

Array = jax.Array
#: ``(noisy [B, L], times [B]) -> logits [B, L, V]``: an MDLM denoiser.
LogitsFn = Callable[[Array, Array], Array]


def stratified_times(rng: Array, batch: int, epsilon: float = 0.0) -> Array:
  """``[batch]`` diffusion times in ``(epsilon, 1]``, each marginally uniform.

  MDLM's low-discrepancy sampler: one uniform offset ``u`` and ``t_i = 1 - frac(u + i/batch)``
  (mapped into ``(epsilon, 1]``), so the batch covers the interval evenly and the estimate of
  the bound has lower variance. ``t`` is never 0.
  """
  offset = jax.random.uniform(rng, ())
  fraction = jnp.mod(offset + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
  return epsilon + (1.0 - epsilon) * (1.0 - fraction)


def forward_mask(rng: Array, tokens: Array, levels: Array, mask_id: int
                 ) -> tuple[Array, Array]:
  """``z_t``: each token of ``tokens [B, L]`` replaced by ``mask_id`` with probability
  ``levels`` (per position ``[B, L]``, or per sequence ``[B, 1]``). Returns ``(noisy,
  masked)``."""
  masked = sampling.coin_flips(rng, levels, tokens.shape)
  return jnp.where(masked, mask_id, tokens), masked


def subs_log_probs(logits: Array, mask_id: int) -> Array:
  """SUBS output: float32 log-probabilities ``[..., V]`` with zero mass on ``mask_id``."""
  logits = logits.astype(jnp.float32).at[..., mask_id].set(-jnp.inf)
  return jax.nn.log_softmax(logits, axis=-1)


def nelbo_terms(log_probs: Array, tokens: Array, masked: Array, levels: Array) -> Array:
  """One draw of the NELBO integrand per sequence, ``[B]`` nats:
  ``sum_{masked i} -log p_theta(x^i | z_t) / t_i`` with ``t_i`` the position's level
  (``[B, L]`` or ``[B, 1]``); unmasked positions cost nothing."""
  token_log_probs = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  return -jnp.sum(jnp.where(masked, token_log_probs / levels, 0.0), axis=-1)


def nelbo(rng: Array, tokens: Array, logits_fn: LogitsFn, mask_id: int,
          epsilon: float = 0.0, free: Optional[Array] = None) -> Array:
  """A one-draw Monte Carlo estimate ``[B]`` of the NELBO of ``tokens [B, L]`` (nats).

  With ``epsilon = 0`` the estimate is unbiased, so its mean bounds ``-log p_theta(x)`` from
  above; ``epsilon > 0`` (training) drops the part of the integral below ``epsilon``.
  ``free [B, L]`` (bool; None: every position) bounds ``-log p_theta(x[free] | x[~free])``
  instead, the conditional the sampler draws with the other positions kept (a prompt): only
  free positions are ever masked.
  """
  time_rng, mask_rng = jax.random.split(rng)
  times = stratified_times(time_rng, tokens.shape[0], epsilon)
  noisy, masked = forward_mask(mask_rng, tokens, times[:, None], mask_id)
  if free is not None:
    noisy, masked = jnp.where(free, noisy, tokens), masked & free
  return nelbo_terms(subs_log_probs(logits_fn(noisy, times), mask_id), tokens, masked,
                     times[:, None])


def ancestral_sample(rng: Array, logits_fn: LogitsFn, initial: Array, num_steps: int,
                     mask_id: int, allowed_tokens: Optional[Array] = None,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Array:
  """MDLM's ancestral sampler in one ``lax.scan``: ``[B, L]`` tokens, none of them masked.

  Args:
    rng: PRNG key; step ``k`` draws with ``fold_in(rng, k)``.
    logits_fn: the denoiser.
    initial: ``[B, L]``: ``mask_id`` at the positions to generate; any other token is kept
      (a prefix, or infilling context).
    num_steps: ``N``; step ``k = N .. 1`` goes from ``t = k/N`` to ``s = (k - 1)/N``, revealing
      each masked token with probability ``(t - s)/t = 1/k`` (all of them at ``k = 1``).
    mask_id: the absorbing token.
    allowed_tokens: ``[V]`` bool; revealed tokens are drawn among the True ids only (the
      models pass the text ids). None: every id but ``mask_id``.
    temperature, top_k, top_p: shape the token draws (``sampling.sample_categorical``).
  """
  batch = initial.shape[0]

  def step(noisy: Array, k: Array) -> tuple[Array, None]:
    token_rng, coin_rng = jax.random.split(jax.random.fold_in(rng, k))
    times = jnp.full((batch,), k.astype(jnp.float32) / num_steps)
    logits = subs_log_probs(logits_fn(noisy, times), mask_id)
    if allowed_tokens is not None:
      logits = jnp.where(allowed_tokens, logits, -jnp.inf)
    proposal = sampling.sample_categorical(token_rng, logits, temperature, top_k, top_p)
    reveal = sampling.coin_flips(coin_rng, 1.0 / k.astype(jnp.float32), noisy.shape)
    return jnp.where((noisy == mask_id) & reveal, proposal, noisy), None

  final, _ = jax.lax.scan(step, initial.astype(jnp.int32),
                          jnp.arange(num_steps, 0, -1, dtype=jnp.int32))
  return final
