"""The epsilon- and gamma-hybrid processes of HDLM (Fathi et al. 2025) behind ``Process``.

The array functions are in ``processes/hybrid.py`` and the per-call noise levels of the
samplers in ``processes/hyperschedules.py``; the MASK is the vocabulary's ``sentinel_id(0)``
and the real tokens are the denoiser's ``allowed_tokens``. The denoiser is
``denoiser_networks.SingleStackDenoiser`` (a bidirectional single stack), or a table in tests.

- ``EpsilonHybridProcess``: a token is replaced by a uniform real token with probability
  ``epsilon`` and then masked with probability ``t``; the network (no time input) predicts the
  clean token at every position; HDCE loss (eq. 9, or the reference code's annealed variant
  over a training hyperschedule); ancestral sampling over any hyperschedule with ACS (``eta``).
- ``GammaHybridProcess``: the CTMC ``(1 - gamma) Q_A + gamma Q_U`` at log-linear noise; the
  time-conditioned network's outputs are log concrete scores (``scale_by_sigma``); diffusion-
  weighted score entropy (exact, or the reference's approximation); analytic tau-leaping.
  Flat schedules only: the single stack takes one time per sequence, not per position.

Bounds: the epsilon process's is MDLM's Monte-Carlo estimator (what the reference evaluates
both families with), valid for its ancestral sampler without ACS in continuous time; the gamma
process's is SEDD's (``bound = "sedd"``: the integrated exact score entropy plus the prior's KL,
a bound for the continuous-time reverse CTMC) or the reference's MDLM estimator on the
softmax of the scores (``bound = "mdlm"``). Both have the conditional form of zero-shot multiple
choice (``conditional_likelihood_bound``): only the free positions are noised and counted, the
others stay clean, as a frozen prompt in the samplers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import sampling
from glauber_jax.processes import absorbing, base, hybrid, hyperschedules

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]
#: The epsilon-hybrid sampler's attention settings.
ATTENTIONS = ("full", "schedule", "cached")


@dataclasses.dataclass(frozen=True)
class HybridSamplerOptions(sampling.SamplerOptions):
  """The hybrid samplers' settings (None: the process's configured value).

  Attributes:
    schedule: the hyperschedule kind (``hyperschedules.KINDS``).
    width: block or window width (block, slide).
    num_levels: noise levels per position (flat: the number of model calls).
    eta: ACS's correction rate (epsilon-hybrid; 0: the original sampler).
    exact_stagger: exact staggered scores (True) or the reference's approximation (gamma).
    attention: epsilon-hybrid: ``"full"`` (bidirectional; idle positions hold MASK),
      ``"schedule"`` (the hyperschedule's mask, block-causal context; causal for slide) or
      ``"cached"`` (the same logits with the settled blocks' keys and values cached; block
      schedules).
  """

  schedule: Optional[str] = None
  width: Optional[int] = None
  num_levels: Optional[int] = None
  eta: Optional[float] = None
  exact_stagger: Optional[bool] = None
  attention: Optional[str] = None


class _HybridProcess(base.Process):
  """What both hybrid processes share: configuration, schedules, prefixes, checks."""

  sampler_options_type: ClassVar[type[sampling.SamplerOptions]] = HybridSamplerOptions
  needs_time: ClassVar[bool]

  def __init__(self, seq_len: int, time_epsilon: float, schedule: str, width: Optional[int],
               num_levels: int, num_score_samples: int) -> None:
    if num_levels < 1 or num_score_samples < 1:
      raise ValueError(f"num_levels ({num_levels}) and num_score_samples "
                       f"({num_score_samples}) must be positive.")
    if not 0.0 <= time_epsilon < 1.0:
      raise ValueError(f"time_epsilon must be in [0, 1), got {time_epsilon}.")
    self.seq_len = seq_len
    self.time_epsilon = time_epsilon
    self.schedule = schedule
    self.width = width
    self.num_levels = num_levels
    self.num_score_samples = num_score_samples
    hyperschedules.make(schedule, seq_len, num_levels, width)  # Checks the settings.

  def check_denoiser(self, denoiser: Any) -> None:
    max_length = getattr(denoiser, "max_length", None)
    if max_length is not None and not 0 < self.seq_len <= max_length:
      raise ValueError(f"seq_len={self.seq_len} must be in [1, the denoiser's max_length="
                       f"{max_length}].")
    config = getattr(denoiser, "network_config", None)
    if config is not None and config.time_conditioning != self.needs_time:
      raise ValueError(f"the {self.name} process needs NetworkConfig.time_conditioning = "
                       f"{self.needs_time}.")

  def noise_levels(self, times: Array) -> Array:
    """Every position at the sequence's time ``t`` (flat training), ``[B, L]``."""
    return jnp.broadcast_to(times.astype(jnp.float32)[:, None], (times.shape[0], self.seq_len))

  def training_flops(self, denoiser: Any) -> float:
    return denoiser.training_flops(self.seq_len, self.seq_len)

  def score(self, denoiser: Any, params: Params, tokens: Array) -> Array:
    """The bound averaged over ``num_score_samples`` draws."""
    draws = jax.lax.map(lambda key: self.likelihood_bound(denoiser, params, tokens, key, {}),
                        jax.random.split(jax.random.PRNGKey(0), self.num_score_samples))
    return jnp.mean(draws, axis=0)

  def sampler_options(self, options: sampling.SamplerOptions) -> HybridSamplerOptions:
    """The options with the configured defaults filled in and the hyperschedule checked."""
    options = dataclasses.replace(
        options, schedule=options.schedule or self.schedule,
        width=self.width if options.width is None else options.width,
        num_levels=self.num_levels if options.num_levels is None else options.num_levels)
    self.hyperschedule(options)
    return options

  def hyperschedule(self, options: HybridSamplerOptions) -> hyperschedules.Hyperschedule:
    return hyperschedules.make(options.schedule, self.seq_len, options.num_levels, options.width)

  def metadata(self) -> dict[str, Any]:
    return {**super().metadata(), "schedule": self.schedule, "num_levels": self.num_levels}


def _allowed_log_probs(logits: Array, allowed: Array, mask_id: int) -> Array:
  """float32 log-probabilities over the allowed ids but MASK."""
  allowed = jnp.asarray(allowed) & (jnp.arange(logits.shape[-1]) != mask_id)
  return jax.nn.log_softmax(jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf), axis=-1)


def _mdlm_bound(denoiser: Any, logits_fn: Any, tokens: Array, rng: Array,
                free: Optional[Array]) -> Array:
  """MDLM's one-draw bound ``[B]`` on the log-likelihood of ``tokens`` (of its ``free``
  positions given the others when given), with ``logits_fn(noisy, times [B, L])``'s clean-token
  predictions restricted to the allowed ids."""
  mask_id = denoiser.special_ids.mask
  log_probs_fn = lambda noisy, times: _allowed_log_probs(
      logits_fn(noisy, jnp.broadcast_to(times[:, None], noisy.shape)), denoiser.allowed_tokens,
      mask_id)
  return -absorbing.nelbo(rng, tokens, log_probs_fn, mask_id, free=free)


@gin.configurable
class EpsilonHybridProcess(_HybridProcess):
  """The epsilon-hybrid process (MDM style) with the HDCE loss and ACS.

  Attributes:
    seq_len: ``L``.
    epsilon: probability that an unmasked token was replaced by a uniform real token.
    balance: ``lambda``, the weight of the unmasked tokens' cross-entropy.
    time_epsilon: flat training draws ``p`` from ``(time_epsilon, 1]``.
    annealed: the reference's annealed HDCE: a random call of ``train_schedule`` per row, only
      its active positions count (no ``1/(1 - p)``), normalised by their number. Idle positions
      are MASK tokens (the reference hides them from attention instead).
    train_schedule, train_width, train_levels: the hyperschedule of annealed training.
    schedule, width, num_levels: the sampler's default hyperschedule.
    eta: the sampler's default ACS rate.
    num_score_samples: bound draws averaged by ``score``.
  """

  name: ClassVar[str] = "epsilon_hybrid"
  needs_time: ClassVar[bool] = False

  def __init__(self, seq_len: int = gin.REQUIRED, epsilon: float = 0.01, balance: float = 1.0,
               time_epsilon: float = 1e-4, annealed: bool = False, train_schedule: str = "block",
               train_width: Optional[int] = None, train_levels: int = 16,
               schedule: str = "flat", width: Optional[int] = None, num_levels: int = 128,
               eta: float = 0.0, num_score_samples: int = 1) -> None:
    super().__init__(seq_len, time_epsilon, schedule, width, num_levels, num_score_samples)
    if not 0.0 <= epsilon < 1.0 or balance < 0 or eta < 0:
      raise ValueError(f"need epsilon in [0, 1), balance >= 0 and eta >= 0, got {epsilon}, "
                       f"{balance}, {eta}.")
    self.epsilon, self.balance, self.eta, self.annealed = epsilon, balance, eta, annealed
    self.train_schedule = (hyperschedules.make(train_schedule, seq_len, train_levels,
                                               train_width) if annealed else None)

  def logits_fn(self, denoiser: Any, params: Params, dropout_rng: Optional[Array] = None):
    """``(noisy, times [B, L]) -> logits``: the network has no time input."""
    return lambda noisy, times: denoiser.logits(params, noisy, times[:, 0], dropout_rng)

  def forward(self, denoiser: Any, params: Params, state: Any, data: Array, step: Array,
              rng: Array) -> tuple[Batch, Any]:
    """Flat: ``p`` stratified per row; annealed: a random call of the training schedule."""
    del params, step
    time_rng, noise_rng = jax.random.split(rng)
    mask_id = denoiser.special_ids.mask
    real = jnp.asarray(denoiser.allowed_tokens)
    if self.train_schedule is None:
      times = absorbing.stratified_times(time_rng, data.shape[0], self.time_epsilon)
      levels = self.noise_levels(times)
      active = jnp.ones(data.shape, bool)
      idle = jnp.zeros(data.shape, bool)
    else:
      tables = self.train_schedule.tables()
      call = jax.random.randint(time_rng, (data.shape[0],), 0, self.train_schedule.num_calls)
      times = call.astype(jnp.float32)
      active = jnp.asarray(tables["active"])[call]
      idle = ~active & ~jnp.asarray(tables["settled"])[call]
      levels = jnp.where(active, jnp.asarray(tables["times"])[call], 0.0)
    noisy, masked, shuffled = hybrid.epsilon_forward(noise_rng, data, levels, self.epsilon,
                                                     real, mask_id)
    noisy = jnp.where(idle, mask_id, jnp.where(active, noisy, data))
    return {"targets": data, "noisy": noisy, "masked": masked & active,
            "shuffled": shuffled & active, "active": active, "times": times,
            "levels": levels}, state

  def loss(self, denoiser: Any, params: Params, batch: Batch, rng: Optional[Array]
           ) -> tuple[Array, dict[str, Array]]:
    """Summed HDCE; ``weight_sum`` counts the tokens (annealed: the active ones)."""
    logits = denoiser.logits(params, batch["noisy"], batch["times"], rng)
    log_probs = _allowed_log_probs(logits, denoiser.allowed_tokens, denoiser.special_ids.mask)
    weights = hybrid.hdce_weights(batch["masked"], batch["shuffled"], batch["levels"],
                                  self.epsilon, self.balance, self.annealed)
    weights = jnp.where(batch["active"], weights, 0.0)
    loss = jnp.sum(weights * hybrid.token_cross_entropy(log_probs, batch["targets"]))
    return loss, {"loss_sum": loss,
                  "masked_sum": jnp.sum(batch["masked"].astype(jnp.float32)),
                  "weight_sum": jnp.sum(batch["active"].astype(jnp.float32))}

  def likelihood_bound(self, denoiser: Any, params: Params, tokens: Array, rng: Array,
                       inference_state: Mapping[str, Params]) -> Array:
    """MDLM's one-draw bound with the network's clean-token predictions (allowed ids)."""
    del inference_state
    return _mdlm_bound(denoiser, self.logits_fn(denoiser, params), tokens, rng, None)

  def conditional_likelihood_bound(self, denoiser: Any, params: Params, tokens: Array,
                                   free: Array, rng: Array,
                                   inference_state: Mapping[str, Params]) -> Array:
    """MDLM's one-draw bound of ``log p(tokens[free] | tokens[~free])``: only the free
    positions are masked, the others stay clean as a frozen prompt does in the sampler."""
    del inference_state
    return _mdlm_bound(denoiser, self.logits_fn(denoiser, params), tokens, rng, free)

  def sampler_options(self, options: sampling.SamplerOptions) -> HybridSamplerOptions:
    options = super().sampler_options(options)
    eta = self.eta if options.eta is None else options.eta
    attention = options.attention or "full"
    if eta < 0 or options.exact_stagger is not None:
      raise ValueError(f"the epsilon-hybrid sampler takes eta >= 0 (got {eta}) and no "
                       "exact_stagger.")
    if attention not in ATTENTIONS or (attention == "cached" and options.schedule == "slide"):
      raise ValueError(f"attention must be one of {ATTENTIONS} ('cached': block schedules), "
                       f"got {attention!r} with a {options.schedule!r} schedule.")
    return dataclasses.replace(options, eta=eta, attention=attention)

  def sample(self, denoiser: Any, params: Params, rng: Array, batch_size: int,
             prefix: Optional[Array], options: sampling.SamplerOptions,
             inference_state: Mapping[str, Params]) -> sampling.Samples:
    """Ancestral samples (ACS when ``eta > 0``) over the options' hyperschedule in one scan;
    the prefix is frozen."""
    del inference_state
    prefix = sampling.checked_prefix(prefix, batch_size, self.seq_len)
    mask_id = denoiser.special_ids.mask
    initial = jnp.pad(prefix, ((0, 0), (0, self.seq_len - prefix.shape[1])),
                      constant_values=mask_id)
    frozen = jnp.broadcast_to(jnp.arange(self.seq_len) < prefix.shape[1], initial.shape)
    schedule = self.hyperschedule(options)
    draws = (mask_id, jnp.asarray(denoiser.allowed_tokens), options.eta, options.temperature,
             options.top_k, options.top_p)
    if options.attention == "cached":
      final, _ = hybrid.epsilon_sample_cached(
          rng, lambda cache, block: denoiser.block_logits(params, cache, block), initial,
          frozen, schedule, *draws)
    elif options.attention == "schedule":
      context = "causal" if schedule.kind == "slide" else "block_causal"
      masks = np.stack([schedule.attention_mask(c, context)
                        for c in range(1, schedule.num_calls + 1)])
      final, _ = hybrid.epsilon_sample(
          rng, lambda noisy, times, mask: denoiser.masked_logits(params, noisy, mask), initial,
          frozen, schedule.tables(), *draws, attention_masks=masks)
    else:
      final, _ = hybrid.epsilon_sample(rng, self.logits_fn(denoiser, params), initial, frozen,
                                       schedule.tables(), *draws)
    return sampling.Samples(None, final)

  def metadata(self) -> dict[str, Any]:
    return {**super().metadata(), "epsilon": self.epsilon}


@gin.configurable
class GammaHybridProcess(_HybridProcess):
  """The gamma-hybrid CTMC (SEDD style) with score entropy and tau-leaping (flat schedules).

  Attributes:
    seq_len: ``L``.
    gamma: the uniform share of the rates.
    time_epsilon: training draws ``t`` from ``(time_epsilon, 1]``.
    score_entropy: ``"exact"`` or ``"reference"`` (the code's approximation) in the loss.
    exact_stagger: the sampler's default staggered scores (False: the reference's).
    prior_sigma: the prior is the reference's limit at this noise (``hybrid.gamma_prior``).
    bound: ``"sedd"`` or ``"mdlm"`` (see the module docstring).
    bound_time: the time the network sees in the ``"mdlm"`` bound (the reference's 1e-3).
    num_levels: the sampler's default number of calls.
    num_score_samples: bound draws averaged by ``score``.
  """

  name: ClassVar[str] = "gamma_hybrid"
  needs_time: ClassVar[bool] = True

  def __init__(self, seq_len: int = gin.REQUIRED, gamma: float = 0.01,
               time_epsilon: float = 1e-3, score_entropy: str = "exact",
               exact_stagger: bool = True, prior_sigma: float = 4.0, bound: str = "sedd",
               bound_time: float = 1e-3, num_levels: int = 128,
               num_score_samples: int = 1) -> None:
    super().__init__(seq_len, time_epsilon, "flat", None, num_levels, num_score_samples)
    if not 0.0 <= gamma < 1.0 or score_entropy not in ("exact", "reference") or bound not in (
        "sedd", "mdlm"):
      raise ValueError(f"need gamma in [0, 1), score_entropy 'exact'|'reference' and bound "
                       f"'sedd'|'mdlm', got {gamma}, {score_entropy!r}, {bound!r}.")
    self.gamma, self.score_entropy, self.exact_stagger = gamma, score_entropy, exact_stagger
    self.prior_sigma, self.bound, self.bound_time = prior_sigma, bound, bound_time

  def log_score_fn(self, denoiser: Any, params: Params, dropout_rng: Optional[Array] = None):
    """``(noisy, times [B, L]) -> log-scores``; the network sees the row's first time."""
    num_real = int(denoiser.allowed_tokens.sum())
    return lambda noisy, times: hybrid.scale_by_sigma(
        denoiser.logits(params, noisy, times[:, 0], dropout_rng),
        hybrid.log_linear_sigma(times), num_real)

  def forward(self, denoiser: Any, params: Params, state: Any, data: Array, step: Array,
              rng: Array) -> tuple[Batch, Any]:
    """``x_t`` at stratified times in ``(time_epsilon, 1]``."""
    del params, step
    time_rng, noise_rng = jax.random.split(rng)
    times = absorbing.stratified_times(time_rng, data.shape[0], self.time_epsilon)
    levels = self.noise_levels(times)
    noisy = hybrid.gamma_forward(noise_rng, data, hybrid.log_linear_sigma(levels), self.gamma,
                                 jnp.asarray(denoiser.allowed_tokens), denoiser.special_ids.mask)
    return {"targets": data, "noisy": noisy, "times": times, "levels": levels}, state

  def _weighted_entropy(self, denoiser: Any, params: Params, noisy: Array, tokens: Array,
                        levels: Array, rng: Optional[Array], kind: str) -> Array:
    """``sigma'(t) DSE`` per position ``[B, L]``."""
    log_scores = self.log_score_fn(denoiser, params, rng)(noisy, levels)
    function = (hybrid.gamma_score_entropy if kind == "exact"
                else hybrid.gamma_score_entropy_reference)
    entropy = function(log_scores, noisy, tokens, hybrid.log_linear_sigma(levels), self.gamma,
                       jnp.asarray(denoiser.allowed_tokens), denoiser.special_ids.mask)
    return hybrid.log_linear_rate(levels) * entropy

  def loss(self, denoiser: Any, params: Params, batch: Batch, rng: Optional[Array]
           ) -> tuple[Array, dict[str, Array]]:
    """Summed diffusion-weighted score entropy; ``weight_sum`` counts tokens."""
    loss = jnp.sum(self._weighted_entropy(denoiser, params, batch["noisy"], batch["targets"],
                                          batch["levels"], rng, self.score_entropy))
    masked = batch["noisy"] == denoiser.special_ids.mask
    return loss, {"loss_sum": loss, "masked_sum": jnp.sum(masked.astype(jnp.float32)),
                  "weight_sum": jnp.asarray(batch["targets"].size, jnp.float32)}

  def prior_probs(self, denoiser: Any) -> Array:
    """``[V]``: the prior of every position."""
    real = jnp.asarray(denoiser.allowed_tokens)
    mask_probability = hybrid.gamma_prior_mask_probability(self.gamma, self.prior_sigma)
    probs = jnp.where(real, (1 - mask_probability) / jnp.sum(real), 0.0)
    return probs.at[denoiser.special_ids.mask].set(mask_probability)

  def likelihood_bound(self, denoiser: Any, params: Params, tokens: Array, rng: Array,
                       inference_state: Mapping[str, Params]) -> Array:
    """One draw of ``-(int_0^1 sigma' DSE dt + KL(q_1 || prior))`` (SEDD) or MDLM's."""
    del inference_state
    return self._bound(denoiser, params, tokens, rng, None)

  def conditional_likelihood_bound(self, denoiser: Any, params: Params, tokens: Array,
                                   free: Array, rng: Array,
                                   inference_state: Mapping[str, Params]) -> Array:
    """The bound of ``log p(tokens[free] | tokens[~free])``: the forward process noises the
    free positions only, the others stay clean (a frozen prompt, as in the sampler), and only
    the free positions' score entropies and prior KLs count (SEDD's bound for the reverse
    chain of the free positions; ``bound = "mdlm"``: MDLM's with only the free positions
    masked)."""
    del inference_state
    return self._bound(denoiser, params, tokens, rng, free)

  def _bound(self, denoiser: Any, params: Params, tokens: Array, rng: Array,
             free: Optional[Array]) -> Array:
    """One draw ``[B]`` of the configured bound (of the ``free`` positions given the others
    when given)."""
    mask_id = denoiser.special_ids.mask
    real = jnp.asarray(denoiser.allowed_tokens)
    time_rng, noise_rng = jax.random.split(rng)
    if self.bound == "mdlm":
      score_fn = self.log_score_fn(denoiser, params)
      return _mdlm_bound(denoiser, lambda noisy, times: score_fn(
          noisy, jnp.full(noisy.shape, self.bound_time)), tokens, rng, free)
    levels = self.noise_levels(absorbing.stratified_times(time_rng, tokens.shape[0]))
    noisy = hybrid.gamma_forward(noise_rng, tokens, hybrid.log_linear_sigma(levels), self.gamma,
                                 real, mask_id)
    if free is not None:
      noisy = jnp.where(free, noisy, tokens)
    entropy = self._weighted_entropy(denoiser, params, noisy, tokens, levels, None, "exact")
    last = hybrid.gamma_marginal(tokens, hybrid.log_linear_sigma(jnp.ones(tokens.shape)),
                                 self.gamma, real, mask_id)
    prior = self.prior_probs(denoiser)
    kl = jnp.sum(jax.scipy.special.xlogy(last, last)
                 - jax.scipy.special.xlogy(last, jnp.maximum(prior, 1e-30)), axis=-1)
    terms = entropy + kl
    return -jnp.sum(terms if free is None else jnp.where(free, terms, 0.0), axis=-1)

  def sampler_options(self, options: sampling.SamplerOptions) -> HybridSamplerOptions:
    options = super().sampler_options(options)
    if options.schedule != "flat":
      raise ValueError("the gamma-hybrid sampler needs per-position time conditioning for a "
                       f"{options.schedule!r} schedule, which the single stack lacks: flat only.")
    if options.eta is not None or (options.temperature, options.top_k, options.top_p) != (
        1.0, 0, 1.0):
      raise ValueError("tau-leaping takes no eta, temperature, top_k or top_p.")
    exact = self.exact_stagger if options.exact_stagger is None else options.exact_stagger
    return dataclasses.replace(options, exact_stagger=exact)

  def sample(self, denoiser: Any, params: Params, rng: Array, batch_size: int,
             prefix: Optional[Array], options: sampling.SamplerOptions,
             inference_state: Mapping[str, Params]) -> sampling.Samples:
    """Tau-leaping from the prior over a flat schedule in one scan; the prefix is frozen."""
    del inference_state
    prefix = sampling.checked_prefix(prefix, batch_size, self.seq_len)
    prior_rng, sample_rng = jax.random.split(rng)
    start = hybrid.draw(prior_rng, jnp.broadcast_to(
        self.prior_probs(denoiser), (batch_size, self.seq_len, len(denoiser.allowed_tokens))))
    frozen = jnp.broadcast_to(jnp.arange(self.seq_len) < prefix.shape[1], start.shape)
    initial = start.at[:, :prefix.shape[1]].set(prefix)
    final = hybrid.gamma_sample(
        sample_rng, self.log_score_fn(denoiser, params), initial, frozen,
        self.hyperschedule(options).tables(), self.gamma, jnp.asarray(denoiser.allowed_tokens),
        denoiser.special_ids.mask, options.exact_stagger)
    return sampling.Samples(None, final)

  def metadata(self) -> dict[str, Any]:
    return {**super().metadata(), "gamma": self.gamma}
