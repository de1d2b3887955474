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
  weighted score entropy (exact, or the reference's approximation), plus eq. 10-11's settled-
  token cross-entropy when trained on a hyperschedule (``annealed``); analytic tau-leaping.
  Block and slide schedules (training and sampling) need a network that reads one time per
  position (``NetworkConfig.time_per_token``); eq. 12's weighted embedding is the network's
  ``NetworkConfig.weighted_mask_embedding``.

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
import functools
from typing import Any, Callable, ClassVar, Mapping, Optional

import gin
import jax
import jax.numpy as jnp

from glauber_jax import sampling
from glauber_jax.processes import absorbing, base, hybrid, hyperschedules

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]
#: The epsilon-hybrid sampler's attention settings.
ATTENTIONS = ("full", "schedule", "cached")
#: The epsilon-hybrid's annealed training: attention (standard layout) and layouts.
TRAIN_ATTENTIONS = ("full", "schedule")
TRAIN_LAYOUTS = ("standard", "efficient")


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
      ``"cached"`` (the same logits with the settled positions' keys and values cached).
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

  def training_positions(self, rng: Array, batch_size: int,
                         train_schedule: Optional[hyperschedules.Hyperschedule]
                         ) -> tuple[Array, Array, Array, Array]:
    """Each row's training call: ``(times [B], levels [B, L], active, settled [B, L])``. Flat
    (``train_schedule`` None): stratified times in ``(time_epsilon, 1]``, every position active
    at its row's time; annealed: a uniform call of ``train_schedule`` (``times`` is its index)
    with its per-position levels and partition."""
    if train_schedule is None:
      times = absorbing.stratified_times(rng, batch_size, self.time_epsilon)
      shape = (batch_size, self.seq_len)
      return times, self.noise_levels(times), jnp.ones(shape, bool), jnp.zeros(shape, bool)
    tables = train_schedule.tables()
    call = jax.random.randint(rng, (batch_size,), 0, train_schedule.num_calls)
    return (call.astype(jnp.float32), jnp.asarray(tables["times"])[call],
            jnp.asarray(tables["active"])[call], jnp.asarray(tables["settled"])[call])

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


def _network_option(denoiser: Any, name: str) -> bool:
  """A boolean ``NetworkConfig`` option of the denoiser's network (False without a network)."""
  return bool(getattr(getattr(denoiser, "network_config", None), name, False))


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
    train_attention: annealed, standard layout: ``"full"`` (bidirectional, idle positions MASK)
      or ``"schedule"``: the call's hyperschedule mask (``Hyperschedule.sampling_context``:
      causal for slide, block-causal otherwise), the mask the sampler's ``attention =
      "schedule" | "cached"`` evaluates the network with.
    train_layout: annealed: ``"standard"`` (one call per row) or ``"efficient"``: the ``[y; x]``
      layout of length ``2L`` (``hyperschedules.efficient_attention_mask``; needs
      ``train_attention = "schedule"``) that trains every chunk of the noisy copy ``x`` at once,
      each at its own call: a block schedule draws each block's level uniformly and
      independently; a slide schedule draws a shift ``r`` in ``[0, w)`` per row and cuts ``x``
      into the windows of all the calls ``c = r (mod w)`` (chunks ``[0, r)``, ``[r, r + w)``,
      ..., at the window levels). ``weight_sum`` counts the ``L`` noisy positions per row.
    schedule, width, num_levels: the sampler's default hyperschedule.
    eta: the sampler's default ACS rate.
    num_score_samples: bound draws averaged by ``score``.
  """

  name: ClassVar[str] = "epsilon_hybrid"
  needs_time: ClassVar[bool] = False

  def __init__(self, seq_len: int = gin.REQUIRED, epsilon: float = 0.01, balance: float = 1.0,
               time_epsilon: float = 1e-4, annealed: bool = False, train_schedule: str = "block",
               train_width: Optional[int] = None, train_levels: int = 16,
               train_attention: str = "full", train_layout: str = "standard",
               schedule: str = "flat", width: Optional[int] = None, num_levels: int = 128,
               eta: float = 0.0, num_score_samples: int = 1) -> None:
    super().__init__(seq_len, time_epsilon, schedule, width, num_levels, num_score_samples)
    if not 0.0 <= epsilon < 1.0 or balance < 0 or eta < 0:
      raise ValueError(f"need epsilon in [0, 1), balance >= 0 and eta >= 0, got {epsilon}, "
                       f"{balance}, {eta}.")
    if train_attention not in TRAIN_ATTENTIONS or train_layout not in TRAIN_LAYOUTS:
      raise ValueError(f"train_attention must be one of {TRAIN_ATTENTIONS} and train_layout one "
                       f"of {TRAIN_LAYOUTS}, got {train_attention!r}, {train_layout!r}.")
    if (train_attention, train_layout) != ("full", "standard") and not annealed:
      raise ValueError("train_attention = 'schedule' and train_layout = 'efficient' train over "
                       "a hyperschedule: they need annealed = True.")
    if train_layout == "efficient" and train_attention != "schedule":
      raise ValueError("the efficient layout is masked: it needs train_attention = 'schedule'.")
    self.epsilon, self.balance, self.eta, self.annealed = epsilon, balance, eta, annealed
    self.train_attention, self.train_layout = train_attention, train_layout
    self.train_schedule = (hyperschedules.make(train_schedule, seq_len, train_levels,
                                               train_width) if annealed else None)

  def logits_fn(self, denoiser: Any, params: Params, dropout_rng: Optional[Array] = None):
    """``(noisy, times [B, L]) -> logits``: the network has no time input."""
    return lambda noisy, times: denoiser.logits(params, noisy, times[:, 0], dropout_rng)

  def _efficient_levels(self, rng: Array, batch_size: int) -> tuple[Array, Array]:
    """The efficient layout's draw: ``(chunk_start, p)`` ``[B, L]`` (see ``train_layout``)."""
    schedule = self.train_schedule
    positions = jnp.arange(self.seq_len)
    width = schedule.width
    if schedule.kind == "slide":
      shift = jax.random.randint(rng, (batch_size, 1), 0, width)
      offset = (positions - shift) % width
      chunk_start = jnp.maximum(positions - offset, 0)
      levels = jnp.asarray(schedule.window_levels())[offset]
    else:
      block = positions // width
      block_levels = jax.random.randint(rng, (batch_size, -(-self.seq_len // width)), 0,
                                        schedule.num_levels)
      chunk_start = jnp.broadcast_to(block * width, (batch_size, self.seq_len))
      levels = block_levels[:, block]
    return chunk_start, schedule.active_times(levels, xp=jnp)

  def forward(self, denoiser: Any, params: Params, state: Any, data: Array, step: Array,
              rng: Array) -> tuple[Batch, Any]:
    """Flat: ``p`` stratified per row; annealed: a random call of the training schedule, or
    with the efficient layout every chunk at its own call."""
    del params, step
    time_rng, noise_rng = jax.random.split(rng)
    mask_id = denoiser.special_ids.mask
    real = jnp.asarray(denoiser.allowed_tokens)
    if self.train_layout == "efficient":
      chunk_start, levels = self._efficient_levels(time_rng, data.shape[0])
      noisy, masked, shuffled = hybrid.epsilon_forward(noise_rng, data, levels, self.epsilon,
                                                       real, mask_id)
      return {"targets": data, "noisy": noisy, "masked": masked, "shuffled": shuffled,
              "active": jnp.ones(data.shape, bool), "levels": levels,
              "chunk_start": chunk_start}, state
    times, levels, active, settled = self.training_positions(time_rng, data.shape[0],
                                                             self.train_schedule)
    idle = ~active & ~settled
    levels = jnp.where(active, levels, 0.0)
    noisy, masked, shuffled = hybrid.epsilon_forward(noise_rng, data, levels, self.epsilon,
                                                     real, mask_id)
    noisy = jnp.where(idle, mask_id, jnp.where(active, noisy, data))
    return {"targets": data, "noisy": noisy, "masked": masked & active,
            "shuffled": shuffled & active, "active": active, "settled": settled,
            "times": times, "levels": levels}, state

  def training_flops(self, denoiser: Any) -> float:
    """The efficient layout runs the network on ``2L`` positions."""
    length = 2 * self.seq_len if self.train_layout == "efficient" else self.seq_len
    return denoiser.training_flops(length, length)

  def training_logits(self, denoiser: Any, params: Params, batch: Batch,
                      rng: Optional[Array] = None) -> Array:
    """The network's logits ``[B, L, V]`` at the noisy positions of a ``forward`` batch, under
    the training attention (``train_attention``, ``train_layout``)."""
    noisy = batch["noisy"]
    if self.train_attention == "full":
      return denoiser.logits(params, noisy, batch["times"], rng)
    schedule = self.train_schedule
    context = schedule.sampling_context()
    if self.train_layout == "standard":
      mask = hyperschedules.partition_attention_mask(batch["settled"], batch["active"], context,
                                                     schedule.width, xp=jnp)
      return denoiser.masked_logits(params, noisy, mask, dropout_rng=rng)
    # Block chunks are the same in every row: one [2L, 2L] mask (slide: one per row).
    chunk_start = batch["chunk_start"] if schedule.kind == "slide" else batch["chunk_start"][0]
    mask = hyperschedules.efficient_attention_mask(chunk_start, context, schedule.width, xp=jnp)
    positions = jnp.tile(jnp.arange(self.seq_len), 2)
    logits = denoiser.masked_logits(params, jnp.concatenate([batch["targets"], noisy], axis=1),
                                    mask, positions, rng)
    return logits[:, self.seq_len:]

  def loss(self, denoiser: Any, params: Params, batch: Batch, rng: Optional[Array]
           ) -> tuple[Array, dict[str, Array]]:
    """Summed HDCE; ``weight_sum`` counts the tokens (annealed: the active ones)."""
    logits = self.training_logits(denoiser, params, batch, rng)
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
    if attention not in ATTENTIONS:
      raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}.")
    return dataclasses.replace(options, eta=eta, attention=attention)

  def epsilon_sampler(self, denoiser: Any, params: Params, options: HybridSamplerOptions
                      ) -> Callable[[Array, Array, Array], tuple[Array, Array]]:
    """``(rng, initial [B, L], frozen [B, L]) -> (final, corrections [B])``: the ancestral
    sampler (ACS when ``eta > 0``) of checked options (``sampler_options``) over their
    hyperschedule, with their attention: ``full``; ``schedule`` (the hyperschedule's masks,
    ``Hyperschedule.sampling_context``); ``cached`` (the same logits with the settled
    positions' keys and values cached: ``hybrid.epsilon_sample_cached`` for block schedules,
    ``hybrid.epsilon_sample_cached_slide`` for slide ones). ``initial`` holds MASK where
    nothing is known; ``frozen`` positions never change."""
    schedule = self.hyperschedule(options)
    draws = {"mask_id": denoiser.special_ids.mask,
             "allowed": jnp.asarray(denoiser.allowed_tokens), "eta": options.eta,
             "temperature": options.temperature, "top_k": options.top_k, "top_p": options.top_p}
    if options.attention == "cached":
      sampler = (hybrid.epsilon_sample_cached_slide if schedule.kind == "slide"
                 else hybrid.epsilon_sample_cached)
      return lambda rng, initial, frozen: sampler(
          rng, functools.partial(denoiser.block_logits, params), initial, frozen, schedule,
          **draws)
    if options.attention == "schedule":
      tables = schedule.tables()
      masks = hyperschedules.partition_attention_mask(
          tables["settled"], tables["active"], schedule.sampling_context(), schedule.width)
      return lambda rng, initial, frozen: hybrid.epsilon_sample(
          rng, lambda noisy, times, mask: denoiser.masked_logits(params, noisy, mask), initial,
          frozen, schedule.tables(), attention_masks=masks, **draws)
    return lambda rng, initial, frozen: hybrid.epsilon_sample(
        rng, self.logits_fn(denoiser, params), initial, frozen, schedule.tables(), **draws)

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
    final, _ = self.epsilon_sampler(denoiser, params, options)(rng, initial, frozen)
    return sampling.Samples(None, final)

  def metadata(self) -> dict[str, Any]:
    return {**super().metadata(), "epsilon": self.epsilon}


@gin.configurable
class GammaHybridProcess(_HybridProcess):
  """The gamma-hybrid CTMC (SEDD style) with score entropy and tau-leaping over hyperschedules.

  Attributes:
    seq_len: ``L``.
    gamma: the uniform share of the rates.
    time_epsilon: flat training draws ``t`` from ``(time_epsilon, 1]``.
    score_entropy: ``"exact"`` or ``"reference"`` (the code's approximation) in the loss.
    annealed: train on a random call of ``train_schedule`` per row (the reference's annealed
      training): every position is noised at its own time (settled ``1e-4``, idle ``1 -
      1e-4``), the score entropy counts the active positions (weight 1) and the idle ones
      (``idle_weight``), and the settled ones get eq. 10-11's cross-entropy. Needs
      ``NetworkConfig.time_per_token``. False: flat training at one time per row.
    train_schedule, train_width, train_levels: the hyperschedule of annealed training.
    idle_weight: the score entropy's weight at idle positions (the reference's 0.001).
    settled_weight: ``beta_1`` of eq. 10 (the reference's ``ce_loss_weight``, 1): each row
      adds ``beta_1`` times the mean over its settled positions of eq. 11's block weight
      (``(i // w) / (ceil(L / w) - 1)`` over the whole sequence as the paper writes it; the
      reference code applies it to the settled prefix's length) times the cross-entropy of the
      clean token (softmax of the log-scores over the real tokens), beside its summed
      diffusion term (``beta_2 = 1``): the reference's relative scales.
    exact_stagger: the sampler's default staggered scores (False: the reference's).
    prior_sigma: the prior is the reference's limit at this noise (``hybrid.gamma_prior``).
    bound: ``"sedd"`` or ``"mdlm"`` (see the module docstring).
    bound_time: the time the network sees in the ``"mdlm"`` bound (the reference's 1e-3).
    schedule, width, num_levels: the sampler's default hyperschedule (flat: ``num_levels``
      calls).
    num_score_samples: bound draws averaged by ``score``.
  """

  name: ClassVar[str] = "gamma_hybrid"
  needs_time: ClassVar[bool] = True

  def __init__(self, seq_len: int = gin.REQUIRED, gamma: float = 0.01,
               time_epsilon: float = 1e-3, score_entropy: str = "exact",
               annealed: bool = False, train_schedule: str = "block",
               train_width: Optional[int] = None, train_levels: int = 16,
               idle_weight: float = 1e-3, settled_weight: float = 1.0,
               exact_stagger: bool = True, prior_sigma: float = 4.0, bound: str = "sedd",
               bound_time: float = 1e-3, schedule: str = "flat", width: Optional[int] = None,
               num_levels: int = 128, num_score_samples: int = 1) -> None:
    super().__init__(seq_len, time_epsilon, schedule, width, num_levels, num_score_samples)
    if not 0.0 <= gamma < 1.0 or score_entropy not in ("exact", "reference") or bound not in (
        "sedd", "mdlm"):
      raise ValueError(f"need gamma in [0, 1), score_entropy 'exact'|'reference' and bound "
                       f"'sedd'|'mdlm', got {gamma}, {score_entropy!r}, {bound!r}.")
    if idle_weight < 0 or settled_weight < 0:
      raise ValueError(f"idle_weight ({idle_weight}) and settled_weight ({settled_weight}) "
                       "must be non-negative.")
    self.gamma, self.score_entropy, self.exact_stagger = gamma, score_entropy, exact_stagger
    self.prior_sigma, self.bound, self.bound_time = prior_sigma, bound, bound_time
    self.annealed, self.idle_weight, self.settled_weight = annealed, idle_weight, settled_weight
    self.train_schedule = (hyperschedules.make(train_schedule, seq_len, train_levels,
                                               train_width) if annealed else None)

  def check_denoiser(self, denoiser: Any) -> None:
    super().check_denoiser(denoiser)
    if self.annealed:
      self._check_per_token(denoiser, f"annealed training on a {self.train_schedule.kind!r} "
                            "hyperschedule")

  def _check_per_token(self, denoiser: Any, what: str) -> None:
    """ValueError unless the denoiser's network reads one time per position."""
    if not _network_option(denoiser, "time_per_token"):
      raise ValueError(f"the gamma-hybrid's {what} gives each position its own time: it needs "
                       "NetworkConfig.time_per_token = True (per-token time conditioning).")

  def log_score_fn(self, denoiser: Any, params: Params, dropout_rng: Optional[Array] = None):
    """``(noisy, times [B, L]) -> log-scores``. A per-token network
    (``NetworkConfig.time_per_token``) sees every position's time, a per-sequence one the row's
    first; with ``NetworkConfig.weighted_mask_embedding`` the network also gets eq. 12's
    weights ``1 - exp(-gamma sigma(t))`` at the positions' times."""
    num_real = int(denoiser.allowed_tokens.sum())
    per_token = _network_option(denoiser, "time_per_token")
    weighted = _network_option(denoiser, "weighted_mask_embedding")

    def log_scores(noisy: Array, times: Array) -> Array:
      sigma = hybrid.log_linear_sigma(times)
      embedding = ({"mask_weight": hybrid.mask_embedding_weight(sigma, self.gamma)}
                   if weighted else {})
      raw = denoiser.logits(params, noisy, times if per_token else times[:, 0], dropout_rng,
                            **embedding)
      return hybrid.scale_by_sigma(raw, sigma, num_real)

    return log_scores

  def forward(self, denoiser: Any, params: Params, state: Any, data: Array, step: Array,
              rng: Array) -> tuple[Batch, Any]:
    """Flat: ``x_t`` at stratified times in ``(time_epsilon, 1]``; annealed: every position at
    its time of a random call of the training schedule."""
    del params, step
    time_rng, noise_rng = jax.random.split(rng)
    times, levels, active, settled = self.training_positions(time_rng, data.shape[0],
                                                             self.train_schedule)
    noisy = hybrid.gamma_forward(noise_rng, data, hybrid.log_linear_sigma(levels), self.gamma,
                                 jnp.asarray(denoiser.allowed_tokens), denoiser.special_ids.mask)
    return {"targets": data, "noisy": noisy, "times": times, "levels": levels,
            "active": active, "settled": settled}, state

  def _weighted_entropy(self, denoiser: Any, log_scores: Array, noisy: Array, tokens: Array,
                        levels: Array, kind: str) -> Array:
    """``sigma'(t) DSE`` per position ``[B, L]``."""
    function = (hybrid.gamma_score_entropy if kind == "exact"
                else hybrid.gamma_score_entropy_reference)
    entropy = function(log_scores, noisy, tokens, hybrid.log_linear_sigma(levels), self.gamma,
                       jnp.asarray(denoiser.allowed_tokens), denoiser.special_ids.mask)
    return hybrid.log_linear_rate(levels) * entropy

  def loss(self, denoiser: Any, params: Params, batch: Batch, rng: Optional[Array]
           ) -> tuple[Array, dict[str, Array]]:
    """Eq. 10 summed over rows: the diffusion-weighted score entropy at the active positions
    (and ``idle_weight`` times it at idle ones) plus ``settled_weight`` times each row's
    block-weighted settled cross-entropy (``settled_ce_sum``); ``weight_sum`` counts tokens."""
    mask_id = denoiser.special_ids.mask
    log_scores = self.log_score_fn(denoiser, params, rng)(batch["noisy"], batch["levels"])
    entropy = self._weighted_entropy(denoiser, log_scores, batch["noisy"], batch["targets"],
                                     batch["levels"], self.score_entropy)
    settled = batch["settled"]
    position_weights = jnp.where(batch["active"], 1.0,
                                 jnp.where(settled, 0.0, self.idle_weight))
    diffusion = jnp.sum(position_weights * entropy)
    block_weights = hyperschedules.block_weighting(
        self.seq_len, self.seq_len if self.train_schedule is None else self.train_schedule.width)
    settled_ce = jnp.sum(hybrid.settled_cross_entropy(
        _allowed_log_probs(log_scores, denoiser.allowed_tokens, mask_id), batch["targets"],
        settled, block_weights))
    loss = diffusion + self.settled_weight * settled_ce
    masked = batch["noisy"] == mask_id
    return loss, {"loss_sum": loss, "masked_sum": jnp.sum(masked.astype(jnp.float32)),
                  "settled_ce_sum": settled_ce,
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
    entropy = self._weighted_entropy(denoiser, self.log_score_fn(denoiser, params)(
        noisy, levels), noisy, tokens, levels, "exact")
    last = hybrid.gamma_marginal(tokens, hybrid.log_linear_sigma(jnp.ones(tokens.shape)),
                                 self.gamma, real, mask_id)
    prior = self.prior_probs(denoiser)
    kl = jnp.sum(jax.scipy.special.xlogy(last, last)
                 - jax.scipy.special.xlogy(last, jnp.maximum(prior, 1e-30)), axis=-1)
    terms = entropy + kl
    return -jnp.sum(terms if free is None else jnp.where(free, terms, 0.0), axis=-1)

  def sampler_options(self, options: sampling.SamplerOptions) -> HybridSamplerOptions:
    options = super().sampler_options(options)
    if options.attention not in (None, "full"):
      raise ValueError("the gamma-hybrid sampler attends fully (attention 'full'), got "
                       f"{options.attention!r}.")
    if options.eta is not None or (options.temperature, options.top_k, options.top_p) != (
        1.0, 0, 1.0):
      raise ValueError("tau-leaping takes no eta, temperature, top_k or top_p.")
    exact = self.exact_stagger if options.exact_stagger is None else options.exact_stagger
    return dataclasses.replace(options, exact_stagger=exact)

  def sample(self, denoiser: Any, params: Params, rng: Array, batch_size: int,
             prefix: Optional[Array], options: sampling.SamplerOptions,
             inference_state: Mapping[str, Params]) -> sampling.Samples:
    """Tau-leaping from the prior over the options' hyperschedule in one scan, full attention
    (settled positions at time ``1e-4``, idle ones hold their prior draws at ``1 - 1e-4``); the
    prefix is frozen. Schedules other than flat need ``NetworkConfig.time_per_token``."""
    del inference_state
    if options.schedule != "flat":
      self._check_per_token(denoiser, f"{options.schedule!r} sampling schedule")
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
