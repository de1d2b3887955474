"""The absorbing (masked) process of MDLM behind the ``Process`` interface.

The array functions (forward masking, the SUBS read-out, the NELBO and the ancestral sampler)
are in ``processes/absorbing.py``; the absorbing state is the vocabulary's ``sentinel_id(0)``
(``denoisers.SpecialIds.mask``). Noise levels: every position of a sequence at time ``t`` is
masked with probability ``t`` (the log-linear schedule ``alpha_t = 1 - t``).

The denoiser (``AbsorbingDenoiser``) is ``denoiser_networks.SingleStackDenoiser``, a
bidirectional single stack, or a table in the exact tests.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Mapping, Optional, Protocol

import gin
import jax
import jax.numpy as jnp

from glauber_jax import denoisers, sampling
from glauber_jax.processes import absorbing, base

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]


class AbsorbingDenoiser(base.Denoiser, Protocol):
  """The read-out the absorbing process calls, and the vocabulary's special ids."""

  special_ids: denoisers.SpecialIds

  def logits(self, params: Params, noisy: Array, times: Array,
             dropout_rng: Optional[Array] = None) -> Array:
    """Logits ``[B, L, V]`` of the clean tokens given ``noisy [B, L]`` at ``times [B]``."""


@dataclasses.dataclass(frozen=True)
class AbsorbingSamplerOptions(sampling.SamplerOptions):
  """The ancestral sampler's settings.

  Attributes:
    num_steps: ancestral steps (None: ``AbsorbingProcess.num_steps``).
  """

  num_steps: Optional[int] = None


@gin.configurable
class AbsorbingProcess(base.Process):
  """Masked diffusion (MDLM, Sahoo et al. 2024) with the SUBS parameterisation.

  Attributes:
    seq_len: ``L``.
    num_steps: ``N``, ancestral sampling steps.
    time_epsilon: training draws ``t`` from ``(time_epsilon, 1]`` (MDLM's ``sampling_eps``,
      keeps ``1/t`` bounded); the bound (``likelihood_bound``, ``elbo``) uses ``(0, 1]``.
    num_score_samples: Monte Carlo draws of ``t`` averaged per sequence by ``score``.
  """

  name: ClassVar[str] = "absorbing"
  sampler_options_type: ClassVar[type[sampling.SamplerOptions]] = AbsorbingSamplerOptions

  def __init__(self, seq_len: int = gin.REQUIRED, num_steps: int = 128,
               time_epsilon: float = 1e-3, num_score_samples: int = 1) -> None:
    if num_steps < 1 or num_score_samples < 1:
      raise ValueError(f"num_steps ({num_steps}) and num_score_samples ({num_score_samples}) "
                       "must be positive.")
    if not 0.0 <= time_epsilon < 1.0:
      raise ValueError(f"time_epsilon must be in [0, 1), got {time_epsilon}.")
    self.seq_len = seq_len
    self.num_steps = num_steps
    self.time_epsilon = time_epsilon
    self.num_score_samples = num_score_samples

  def check_denoiser(self, denoiser: Any) -> None:
    max_length = getattr(denoiser, "max_length", None)
    if max_length is not None and not 0 < self.seq_len <= max_length:
      raise ValueError(f"seq_len={self.seq_len} must be in [1, the denoiser's max_length="
                       f"{max_length}].")

  def noise_levels(self, times: Array) -> Array:
    """Every position's masking probability: ``t``, ``[B, L]``."""
    return jnp.broadcast_to(times.astype(jnp.float32)[:, None], (times.shape[0], self.seq_len))

  def forward(self, denoiser: AbsorbingDenoiser, params: Params, state: Any, data: Array,
              step: Array, rng: Array) -> tuple[Batch, Any]:
    """``z_t`` at stratified times in ``(time_epsilon, 1]``: the data, the masked tokens, the
    mask and the levels."""
    del params, step
    time_rng, mask_rng = jax.random.split(rng)
    times = absorbing.stratified_times(time_rng, data.shape[0], self.time_epsilon)
    levels = self.noise_levels(times)
    noisy, masked = absorbing.forward_mask(mask_rng, data, levels,
                                           denoiser.special_ids.mask)
    return {"targets": data, "noisy": noisy, "masked": masked, "times": times,
            "levels": levels}, state

  def loss(self, denoiser: AbsorbingDenoiser, params: Params, batch: Batch,
           rng: Optional[Array]) -> tuple[Array, dict[str, Array]]:
    """Summed NELBO draws; ``weight_sum`` counts tokens, so the logged ``loss`` is the bound in
    nats per token. ``rng`` None: no dropout.

    Also logged: ``masked`` (fraction of tokens masked) and ``masked_correct`` (fraction of
    tokens masked and predicted right; their ratio is the accuracy on masked tokens).
    """
    tokens, masked = batch["targets"], batch["masked"]
    log_probs = absorbing.subs_log_probs(
        denoiser.logits(params, batch["noisy"], batch["times"], rng),
        denoiser.special_ids.mask)
    loss = jnp.sum(absorbing.nelbo_terms(log_probs, tokens, masked, batch["levels"]))
    correct = (jnp.argmax(log_probs, axis=-1) == tokens) & masked
    return loss, {
        "loss_sum": loss,
        "masked_sum": jnp.sum(masked.astype(jnp.float32)),
        "masked_correct_sum": jnp.sum(correct.astype(jnp.float32)),
        "weight_sum": jnp.asarray(tokens.size, jnp.float32),
    }

  def training_flops(self, denoiser: AbsorbingDenoiser) -> float:
    return denoiser.training_flops(self.seq_len, self.seq_len)

  def elbo(self, denoiser: AbsorbingDenoiser, params: Params, tokens: Array, rng: Array,
           num_samples: int = 1, free: Optional[Array] = None) -> Array:
    """The ELBO ``[B]`` (nats, ``<= log p_theta(x)``) of ``tokens [B, L]``, averaged over
    ``num_samples`` draws of ``(t, z_t)``; ``exp(-mean / L)`` bounds the perplexity. With
    ``free [B, L]``, the ELBO of ``log p_theta(x[free] | x[~free])`` (``absorbing.nelbo``)."""
    logits_fn = functools.partial(denoiser.logits, params)
    draws = jax.lax.map(
        lambda key: absorbing.nelbo(key, tokens, logits_fn, denoiser.special_ids.mask,
                                    free=free),
        jax.random.split(rng, num_samples))
    return -jnp.mean(draws, axis=0)

  def likelihood_bound(self, denoiser: AbsorbingDenoiser, params: Params, tokens: Array,
                       rng: Array, inference_state: Mapping[str, Params]) -> Array:
    """The one-draw ``elbo`` (the absorbing process needs no inference state)."""
    del inference_state
    return self.elbo(denoiser, params, tokens, rng)

  def conditional_likelihood_bound(self, denoiser: AbsorbingDenoiser, params: Params,
                                   tokens: Array, free: Array, rng: Array,
                                   inference_state: Mapping[str, Params]) -> Array:
    """One-draw ELBO ``[B]`` of ``log p(tokens[free] | tokens[~free])``: only the free
    positions are masked, as the sampler keeps a prompt."""
    del inference_state
    return self.elbo(denoiser, params, tokens, rng, free=free)

  def score(self, denoiser: AbsorbingDenoiser, params: Params, tokens: Array) -> Array:
    """The ELBO with ``num_score_samples`` draws (a lower bound on the log-likelihood)."""
    return self.elbo(denoiser, params, tokens, jax.random.PRNGKey(0), self.num_score_samples)

  def sampler_options(self, options: sampling.SamplerOptions) -> AbsorbingSamplerOptions:
    """The options with ``num_steps`` resolved (default: the configured ``N``) and checked."""
    num_steps = self.num_steps if options.num_steps is None else options.num_steps
    if num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    return dataclasses.replace(options, num_steps=num_steps)

  def sample(self, denoiser: AbsorbingDenoiser, params: Params, rng: Array, batch_size: int,
             prefix: Optional[Array], options: sampling.SamplerOptions,
             inference_state: Mapping[str, Params]) -> sampling.Samples:
    """Ancestral samples ``[B, L]`` of allowed ids in one ``lax.scan`` of ``num_steps`` steps;
    the first ``P`` tokens equal ``prefix [B, P]`` and are never resampled. No draft."""
    del inference_state
    prefix = sampling.checked_prefix(prefix, batch_size, self.seq_len)
    mask_id = denoiser.special_ids.mask
    initial = jnp.pad(prefix, ((0, 0), (0, self.seq_len - prefix.shape[1])),
                      constant_values=mask_id)
    final = absorbing.ancestral_sample(
        rng, functools.partial(denoiser.logits, params), initial, options.num_steps, mask_id,
        jnp.asarray(denoiser.allowed_tokens), options.temperature, options.top_k, options.top_p)
    return sampling.Samples(None, final)

  def metadata(self) -> dict[str, Any]:
    return {**super().metadata(), "num_steps": self.num_steps}
