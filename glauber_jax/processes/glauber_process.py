"""The Glauber process behind the ``Process`` interface: the paper's Algorithms 1 and 2.

Following ``shared/design/glauber.md`` (the chain's array functions are in
``processes/glauber.py``):

- Training (``forward`` + ``loss``): ``B`` forward chains live in the training state next to a
  frozen teacher copy of the parameters. Each step runs one batched teacher pass at every
  chain's next site, takes the forward step and trains the student on the pair ``(x_{t-1},
  x_t)`` at time ``t`` with one of ``LOSSES``. ``training_mode="literal"`` replays the chain
  from ``x_0`` for every pair instead (Algorithm 1 as written; for small ``L``).
- Sampling (``sample``): CAUSAL-GEN of the whole sequence at ``t = T``, then ``N * L`` single-
  site MASK-INFILL steps in reverse permutation order, all in one compiled program.
- ``likelihood_bound``: the design note's ELBO (a ``<=`` perplexity).
- ``chain_health``: is the teacher an energy function the rounds can use? Printed when Glauber
  training starts (a teacher whose infill is no better than the prior's next-token prediction is
  refused unless ``allow_context_blind_teacher``), and logged during training as
  ``teacher_cross_entropy`` and ``changed_fraction``.

Noise levels: site ``k``'s level at step ``t`` is the share of its ``N`` heat-bath updates that
steps ``1..t`` have made (``noise_levels``), so every site is at level 1 at ``t = T``.

The denoiser (``GlauberDenoiser``) is the time-conditioned UL2 of
``denoiser_networks.EncoderDecoderDenoiser``, or a table in the exact tests.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, ClassVar, Mapping, Optional, Protocol

import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import sampling
from glauber_jax.processes import base, glauber

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]

TRAINING_MODES = ("buffer", "literal")
#: Whose CAUSAL-GEN is the prior (``GlauberProcess.prior``).
PRIORS = ("trained", "frozen")
#: The per-pair losses of ``glauber.LOSSES`` (one target per pair, at the site the step updated)
#: and ``ce_all_sites`` (``GlauberProcess.loss``).
LOSSES = glauber.LOSSES + ("ce_all_sites",)


class GlauberDenoiser(base.Denoiser, Protocol):
  """The read-outs the Glauber process calls (``EncoderDecoderDenoiser`` documents them)."""

  def infill_logits(self, params: Params, tokens: Array, sites: Array, times: Array,
                    dropout_rng: Optional[Array] = None) -> Array:
    """MASK-INFILL logits ``[B, V]`` of site ``sites [B]`` of ``tokens [B, L]``."""

  def cloze_logits(self, params: Params, tokens: Array, times: Array,
                   dropout_rng: Optional[Array] = None) -> Array:
    """MASK-INFILL logits ``[B, L, V]`` of every site at once (``ce_all_sites`` only)."""

  def causal_log_prob(self, params: Params, tokens: Array, times: Array,
                      dropout_rng: Optional[Array] = None) -> Array:
    """The prior's log-likelihood ``[B]`` of ``tokens [B, L]``."""

  def causal_token_log_probs(self, params: Params, tokens: Array, times: Array,
                             dropout_rng: Optional[Array] = None) -> Array:
    """The prior's ``log p(x_i | x_<i)`` ``[B, L]`` (``conditional_likelihood_bound`` only)."""

  def causal_gen(self, params: Params, rng: Array, prefix: Array, seq_len: int, times: Array,
                 options: sampling.SamplerOptions) -> Array:
    """Prior draws ``[B, L]`` continuing ``prefix [B, P]``."""


@dataclasses.dataclass(frozen=True)
class GlauberSamplerOptions(sampling.SamplerOptions):
  """Algorithm 2's settings: ``temperature``/``top_k``/``top_p`` shape the CAUSAL-GEN draft.

  Attributes:
    num_rounds: reverse rounds after the draft (None: the trained ``N``; 0: the draft alone).
    infill_temperature: temperature of the MASK-INFILL draws.
  """

  num_rounds: Optional[int] = None
  infill_temperature: float = 1.0


@gin.configurable
class GlauberProcess(base.Process):
  """Glauber dynamics with the model's own MASK-INFILL as the energy function.

  Attributes:
    seq_len: ``L``, the length of the generated sequences (``TASK_FEATURE_LENGTHS["targets"]``).
    num_rounds: ``N``, Glauber rounds; ``T = N * L`` forward steps.
    permutation_seed: seed of the ``N`` site permutations (saved with every checkpoint).
    loss: ``ce`` (default, lowest variance), ``score_entropy_rb`` (the paper's score entropy,
      Rao-Blackwellised) or ``score_entropy`` (as written); all share one minimiser
      (``glauber.pair_loss``) and train one site per pair. ``ce_all_sites`` (cloze read-out
      only) trains the read-out at time ``t`` at every site of ``x_{t-1}``: the heat-bath step
      draws ``x_{t,k}`` without looking at ``x_{t-1,k}``, so the reverse kernel at ``k = s_t``
      is the single-site conditional of the law of ``x_{t-1}``, and that law's conditionals at
      the other ``L - 1`` sites are targets of the same function from the same forward pass
      (``L`` targets per pair instead of one; at ``t = 1`` they are the UL2's own cloze
      pretraining targets). Its per-pair loss is the mean over the sites. Use it with
      ``training_mode="literal"``: a buffer chain holds one data row for ``T`` steps, and
      ``L`` targets per step let the student memorise those rows (held-out reverse cross
      entropy above the teacher's in ``docs/results.md``).
    training_mode: ``buffer`` (trajectory buffer, default) or ``literal`` (Algorithm 1).
    teacher_refresh_steps: copy the student into the teacher every this many steps; 0 (the
      default): never. A refresh copies whatever the student is, so only turn it on once the
      student beats the teacher on held-out infill cross entropy.
    forward_mixing: ``eps`` of the forward kernel ``(1 - eps) q + eps * uniform`` (bounds the
      score-entropy ratio; see ``glauber.mix_with_uniform``).
    prior: whose CAUSAL-GEN drafts the samples and gives the bound's prior term. ``trained``
      (default): the DiT's own at ``t = T``, which shares the network with the reverse kernel
      and is kept from drifting by ``prior_loss_weight``. ``frozen``: the frozen teacher's
      (the pre-diffusion UL2, ``inference_state["teacher"]``), the law the forward chain
      relaxes towards, so the drafts are what the reverse kernel was trained to start from;
      needs ``prior_loss_weight = 0`` and ``teacher_refresh_steps = 0``.
    prior_loss_weight: weight of the prior's loss, CAUSAL-GEN's (``t = T``) mean per-token
      cross entropy on the batch's data rows, against the mean pair loss. The prior and the
      reverse kernel share the network, so without it the prior drifts while the reverse
      kernel trains (measured in ``docs/results.md``); 0 turns it off.
    allow_context_blind_teacher: start training even when ``chain_health`` finds the
      teacher's infill no better than the prior's next-token prediction.
  """

  name: ClassVar[str] = "glauber"
  sampler_options_type: ClassVar[type[sampling.SamplerOptions]] = GlauberSamplerOptions
  inference_state_names: ClassVar[tuple[str, ...]] = ("teacher",)

  def __init__(self, seq_len: int = gin.REQUIRED, num_rounds: int = 1,
               permutation_seed: int = 0, loss: str = "ce", training_mode: str = "buffer",
               teacher_refresh_steps: int = 0, forward_mixing: float = 1e-3,
               prior: str = "trained", prior_loss_weight: float = 1.0,
               allow_context_blind_teacher: bool = False) -> None:
    if loss not in LOSSES:
      raise ValueError(f"loss={loss!r}; expected one of {LOSSES}.")
    if training_mode not in TRAINING_MODES:
      raise ValueError(f"training_mode={training_mode!r}; expected one of {TRAINING_MODES}.")
    if not 0.0 <= forward_mixing < 1.0:
      raise ValueError(f"forward_mixing must be in [0, 1), got {forward_mixing}.")
    if prior_loss_weight < 0:
      raise ValueError(f"prior_loss_weight must be >= 0, got {prior_loss_weight}.")
    if prior not in PRIORS:
      raise ValueError(f"prior={prior!r}; expected one of {PRIORS}.")
    if prior == "frozen" and (prior_loss_weight > 0 or teacher_refresh_steps > 0):
      raise ValueError(
          "prior='frozen' drafts with the frozen teacher, so nothing may train or replace it: "
          f"set GlauberProcess.prior_loss_weight = 0 (got {prior_loss_weight}) and "
          f"teacher_refresh_steps = 0 (got {teacher_refresh_steps}).")
    self.schedule = glauber.GlauberSchedule.from_seed(seq_len, num_rounds, permutation_seed)
    self.seq_len = seq_len
    self.loss_name = loss
    self.training_mode = training_mode
    self.teacher_refresh_steps = teacher_refresh_steps
    self.forward_mixing = forward_mixing
    self.prior = prior
    self.prior_loss_weight = prior_loss_weight
    self.allow_context_blind_teacher = allow_context_blind_teacher
    # updates[t, k]: how many of steps 1..t update site k (t = 0..T).
    visits = np.zeros((self.num_steps + 1, seq_len), np.float32)
    visits[np.arange(1, self.num_steps + 1), self.schedule.sites()] = 1.0
    self._updates = np.cumsum(visits, axis=0)

  @property
  def num_steps(self) -> int:
    return self.schedule.num_steps

  def check_denoiser(self, denoiser: Any) -> None:
    config = getattr(denoiser, "network_config", None)
    if config is None:
      return  # A table denoiser: nothing to size.
    if config.max_encoder_length < self.seq_len + 2:
      raise ValueError(f"MASK-INFILL reads L + 2 = {self.seq_len + 2} encoder tokens but "
                       f"max_encoder_length={config.max_encoder_length}.")
    if config.max_decoder_length < self.seq_len:
      raise ValueError(f"CAUSAL-GEN writes L = {self.seq_len} tokens but max_decoder_length="
                       f"{config.max_decoder_length}.")
    if self.loss_name == "ce_all_sites" and config.infill_readout != "cloze":
      raise ValueError("loss='ce_all_sites' reads every site at once and needs "
                       f"NetworkConfig.infill_readout = 'cloze', got {config.infill_readout!r}.")

  def noise_levels(self, times: Array) -> Array:
    """Site ``k``'s share of its ``N`` updates made by step ``t``: ``[B, L]`` in ``[0, 1]``."""
    return jnp.asarray(self._updates)[times] / self.schedule.num_rounds

  # ---- The kernels --------------------------------------------------------------------------

  def _at_end(self, batch: int) -> Array:
    return jnp.full((batch,), self.num_steps, jnp.int32)

  def infill_log_probs(self, denoiser: GlauberDenoiser, params: Params, tokens: Array,
                       sites: Array, times: Array) -> Array:
    """``log p_theta(x_k = . | x_{-k}, t)`` over the allowed ids, ``[B, V]`` float32."""
    logits = denoiser.infill_logits(params, tokens, sites, times)
    return jnp.where(denoiser.allowed_tokens, jax.nn.log_softmax(logits), -jnp.inf)

  def teacher_log_probs(self, denoiser: GlauberDenoiser, teacher_params: Params, tokens: Array,
                        sites: Array, times: Optional[Array] = None) -> Array:
    """The forward kernel: the teacher's MASK-INFILL at ``t = T`` (whatever the step's
    ``times``), mixed with uniform."""
    del times
    at_end = self._at_end(sites.shape[0])
    return glauber.mix_with_uniform(
        self.infill_log_probs(denoiser, teacher_params, tokens, sites, at_end),
        self.forward_mixing, jnp.asarray(denoiser.allowed_tokens))

  def prior_log_prob(self, denoiser: GlauberDenoiser, params: Params, tokens: Array,
                     dropout_rng: Optional[Array] = None) -> Array:
    """CAUSAL-GEN's log-likelihood ``[B]`` of ``tokens [B, L]`` at ``t = T``."""
    return denoiser.causal_log_prob(params, tokens, self._at_end(tokens.shape[0]), dropout_rng)

  def prior_params(self, params: Params, inference_state: Mapping[str, Params]) -> Params:
    """The parameters whose CAUSAL-GEN is the prior (``prior``): the DiT's or the teacher's."""
    if self.prior == "frozen":
      return inference_state.get("teacher", params)
    return params

  # ---- Training -----------------------------------------------------------------------------

  def init_state(self, denoiser: GlauberDenoiser, params: Params, data: Array, rng: Array
                 ) -> dict[str, Any]:
    """The frozen teacher and, in buffer mode, chains staggered uniformly over ``1..T``."""
    state: dict[str, Any] = {"teacher": params}
    if self.training_mode == "buffer":
      targets = jnp.asarray(glauber.staggered_targets(data.shape[0], self.num_steps))
      state["chains"] = glauber.warm_up_chains(
          rng, data, jnp.asarray(self.schedule.sites()),
          functools.partial(self.teacher_log_probs, denoiser, params), targets)
    return state

  def state_shardings(self, abstract_state: Any, param_shardings: Any, batch_sharding: Any
                      ) -> Any:
    shardings: dict[str, Any] = {"teacher": param_shardings}
    if "chains" in abstract_state:  # Rows split like the batch's.
      row_axes = batch_sharding.spec[0]
      shardings["chains"] = jax.tree.map(
          lambda leaf: jax.sharding.NamedSharding(
              batch_sharding.mesh, jax.sharding.PartitionSpec(row_axes, *[None] * (leaf.ndim - 1))),
          abstract_state["chains"])
    return shardings

  def forward(self, denoiser: GlauberDenoiser, params: Params, state: Any, data: Array,
              step: Array, rng: Array) -> tuple[Batch, Any]:
    """Refreshes the teacher when due, then makes one training pair per data row."""
    teacher = state["teacher"]
    if self.teacher_refresh_steps > 0:
      refresh = jnp.logical_and(step > 0, step % self.teacher_refresh_steps == 0)
      teacher = jax.lax.cond(refresh, lambda: params, lambda: teacher)
    teacher_fn = functools.partial(self.teacher_log_probs, denoiser,
                                   jax.lax.stop_gradient(teacher))
    sites = jnp.asarray(self.schedule.sites())
    new_state = {"teacher": teacher}
    if self.training_mode == "buffer":
      chains, pair = glauber.advance_chains(rng, state["chains"], sites, teacher_fn, data)
      new_state["chains"] = chains
    else:
      pair = glauber.literal_pairs(rng, data, sites, teacher_fn)
    pairs = {
        "tokens": pair.current,
        "sites": pair.sites,
        "times": pair.times,
        "levels": self.noise_levels(pair.times),
        "previous_values": glauber.get_sites(pair.previous, pair.sites),
        "current_values": glauber.get_sites(pair.current, pair.sites),
        "teacher_log_probs": pair.teacher_log_probs,
        "data": data,
    }
    return pairs, new_state

  def loss(self, denoiser: GlauberDenoiser, params: Params, batch: Batch, rng: Optional[Array]
           ) -> tuple[Array, dict[str, Array]]:
    """Summed pair loss over the batch (plus the weighted prior loss on the data rows), with
    reverse cross entropy and accuracy, the chain's health and the prior's NLL as metrics."""
    infill_rng, prior_rng = (None, None) if rng is None else jax.random.split(rng)
    if self.loss_name == "ce_all_sites":
      previous = glauber.set_sites(batch["tokens"], batch["sites"], batch["previous_values"])
      every_site = denoiser.cloze_logits(params, previous, batch["times"], infill_rng)
      logits = jnp.take_along_axis(every_site, batch["sites"][:, None, None], axis=1)[:, 0]
      log_probs = jax.nn.log_softmax(every_site, axis=-1)
      per_pair = -jnp.mean(jnp.take_along_axis(log_probs, previous[..., None], axis=-1)[..., 0],
                           axis=-1)
    else:
      logits = denoiser.infill_logits(params, batch["tokens"], batch["sites"], batch["times"],
                                      infill_rng)
      per_pair = glauber.pair_loss(self.loss_name, logits, batch["teacher_log_probs"],
                                   batch["previous_values"], batch["current_values"])
    cross_entropy = glauber.cross_entropy_loss(logits, batch["previous_values"])
    accuracy = jnp.argmax(logits, axis=-1) == batch["previous_values"]
    teacher_nll = -jnp.take_along_axis(batch["teacher_log_probs"],
                                       batch["previous_values"][:, None], axis=-1)[:, 0]
    changed = batch["current_values"] != batch["previous_values"]
    num_pairs = per_pair.shape[0]
    loss = jnp.sum(per_pair)
    metrics = {
        "reverse_cross_entropy_sum": jax.lax.stop_gradient(jnp.sum(cross_entropy)),
        "accuracy_sum": jnp.sum(accuracy.astype(jnp.float32)),
        "teacher_cross_entropy_sum": jnp.sum(teacher_nll),
        "changed_fraction_sum": jnp.sum(changed.astype(jnp.float32)),
        "weight_sum": jnp.asarray(num_pairs, jnp.float32),
    }
    if self.prior_loss_weight > 0:
      # The prior's mean per-token NLL as a per-pair sum (metrics are divided by the pairs).
      prior_nll = -self.prior_log_prob(denoiser, params, batch["data"], prior_rng) / self.seq_len
      prior_sum = jnp.mean(prior_nll) * num_pairs
      loss = loss + self.prior_loss_weight * prior_sum
      metrics["prior_nll_sum"] = jax.lax.stop_gradient(prior_sum)
    return loss, {"loss_sum": loss, **metrics}

  def training_flops(self, denoiser: GlauberDenoiser) -> float:
    """Student forward + backward and one teacher forward on MASK-INFILL (encoder L + 2), and
    the prior's CAUSAL-GEN forward + backward when its loss is on."""
    training = denoiser.training_flops(self.seq_len + 2, 2)
    prior = denoiser.training_flops(2, self.seq_len) if self.prior_loss_weight > 0 else 0.0
    return training * 4.0 / 3.0 + prior

  # ---- Chain health -------------------------------------------------------------------------

  @functools.partial(jax.jit, static_argnames=("self", "denoiser"))
  def chain_health(self, denoiser: GlauberDenoiser, params: Params, teacher_params: Params,
                   data: Array, rng: Array) -> dict[str, Array]:
    """Can the rounds use this teacher? Measured on data rows ``[B, L]`` (nats per token).

    - ``teacher_infill_nll``: the teacher's MASK-INFILL cross entropy at one random site per row;
    - ``prior_nll``: CAUSAL-GEN's (the student's, at ``t = T``) cross entropy on the same rows;
    - ``batch_unigram_entropy``: the rows' plug-in unigram entropy (biased low on small batches);
    - ``sweep_changed_fraction``: the share of sites one forward round (``L`` steps) changes;
    - ``chain_end_prior_nll``: CAUSAL-GEN's cross entropy on the chain's end states ``x_T``.

    A single-site infill conditions on more than a next-token prediction, so a teacher that
    uses its context has ``teacher_infill_nll`` below ``prior_nll``; one at the unigram level
    turns every draft into unigram draws within a round.
    """
    site_rng, round_rng, chain_rng = jax.random.split(rng, 3)
    batch = data.shape[0]
    sites = jax.random.randint(site_rng, (batch,), 0, self.seq_len)
    teacher_fn = functools.partial(self.teacher_log_probs, denoiser, teacher_params)
    teacher = teacher_fn(data, sites)
    infill_nll = -jnp.mean(jnp.take_along_axis(teacher, glauber.get_sites(data, sites)[:, None],
                                               axis=-1))
    counts = jnp.sum(jax.nn.one_hot(data, denoiser.allowed_tokens.shape[0]), axis=(0, 1))
    frequencies = counts / jnp.sum(counts)
    unigram = -jnp.sum(jnp.where(counts > 0, frequencies * jnp.log(frequencies), 0.0))
    schedule_sites = jnp.asarray(self.schedule.sites())
    after_round = glauber.run_forward(round_rng, data, schedule_sites[:self.seq_len], teacher_fn)
    chain_end = glauber.run_forward(chain_rng, data, schedule_sites, teacher_fn)
    prior_nll = -jnp.mean(self.prior_log_prob(denoiser, params, data)) / self.seq_len
    return {
        "teacher_infill_nll": infill_nll,
        "prior_nll": prior_nll,
        "batch_unigram_entropy": unigram,
        "sweep_changed_fraction": jnp.mean((after_round != data).astype(jnp.float32)),
        "chain_end_prior_nll": -jnp.mean(self.prior_log_prob(denoiser, params, chain_end))
                               / self.seq_len,
    }

  def start_report(self, denoiser: GlauberDenoiser, params: Params, state: Any, data: Array,
                   rng: Array) -> dict[str, float]:
    """``chain_health`` on the first batch; raises if the teacher's infill is no better than
    the prior's next-token prediction (``allow_context_blind_teacher`` overrides)."""
    health = {name: float(value) for name, value in jax.device_get(
        self.chain_health(denoiser, params, state["teacher"], data, rng)).items()}
    if health["teacher_infill_nll"] >= health["prior_nll"]:
      message = (
          f"the teacher's MASK-INFILL is context-blind: its infill cross entropy "
          f"{health['teacher_infill_nll']:.3f} nats is no better than CAUSAL-GEN's next-token "
          f"{health['prior_nll']:.3f} (batch unigram {health['batch_unigram_entropy']:.3f}); "
          f"one forward round changes {100 * health['sweep_changed_fraction']:.0f}% of the "
          "sites and the rounds would turn drafts into unigram draws. Pretrain the UL2 with "
          "the single-site denoiser and the encoder readout (gin/ul2_tiny.gin shows how), or "
          "set GlauberProcess.allow_context_blind_teacher = True to train anyway.")
      if not self.allow_context_blind_teacher:
        raise ValueError(message)
      logging.warning(message)
    return health

  # ---- Sampling and the bound ---------------------------------------------------------------

  def sampler_options(self, options: sampling.SamplerOptions) -> GlauberSamplerOptions:
    """The options with ``num_rounds`` resolved (default: the trained ``N``) and checked."""
    num_rounds = (self.schedule.num_rounds if options.num_rounds is None
                  else options.num_rounds)
    if not 0 <= num_rounds <= self.schedule.num_rounds:
      raise ValueError(f"num_rounds must be in [0, {self.schedule.num_rounds}] (the trained N), "
                       f"got {num_rounds}.")
    return dataclasses.replace(options, num_rounds=num_rounds)

  def draft_options(self, options: sampling.SamplerOptions) -> GlauberSamplerOptions:
    """CAUSAL-GEN alone: no rounds."""
    return dataclasses.replace(options, num_rounds=0)

  def causal_gen(self, denoiser: GlauberDenoiser, params: Params, rng: Array, batch_size: int,
                 prefix: Optional[Array], options: sampling.SamplerOptions) -> Array:
    """The CAUSAL-GEN draft at ``t = T``: ``[B, L]``, the first ``P`` equal to ``prefix``."""
    prefix = sampling.checked_prefix(prefix, batch_size, self.seq_len)
    return denoiser.causal_gen(params, rng, prefix, self.seq_len, self._at_end(batch_size),
                               options)

  def sample(self, denoiser: GlauberDenoiser, params: Params, rng: Array, batch_size: int,
             prefix: Optional[Array], options: sampling.SamplerOptions,
             inference_state: Mapping[str, Params]) -> sampling.Samples:
    """Algorithm 2: the prior's CAUSAL-GEN draft (``prior_params``), then
    ``options.num_rounds`` reverse rounds of MASK-INFILL (fewer than trained run the last
    rounds' steps ``t = n L .. 1``; 0 is CAUSAL-GEN only). The causal phase draws with the
    options' ``temperature``/``top_k``/``top_p``, the infill draws with
    ``infill_temperature``."""
    causal_rng, infill_rng = jax.random.split(rng)
    draft = self.causal_gen(denoiser, self.prior_params(params, inference_state), causal_rng,
                            batch_size, prefix, options)
    if options.num_rounds == 0:
      return sampling.Samples(draft, draft)
    prefix_len = 0 if prefix is None else prefix.shape[1]
    frozen = jnp.broadcast_to(jnp.arange(self.seq_len) < prefix_len, draft.shape)
    sites = jnp.asarray(self.schedule.sites()[: options.num_rounds * self.seq_len])
    final = glauber.reverse_sweep(
        infill_rng, draft, sites, functools.partial(self.infill_log_probs, denoiser, params),
        frozen, options.infill_temperature)
    return sampling.Samples(draft, final)

  def likelihood_bound(self, denoiser: GlauberDenoiser, params: Params, tokens: Array,
                       rng: Array, inference_state: Mapping[str, Params]) -> Array:
    """One-path ELBO ``[B]`` (nats) of ``tokens [B, L]``; ``exp(-mean / L)`` bounds the PPL.
    The forward kernels are ``inference_state["teacher"]``'s (default: the parameters), the
    prior term ``prior_params``'."""
    teacher = inference_state.get("teacher", params)
    return glauber.likelihood_bound(
        rng, tokens, jnp.asarray(self.schedule.sites()),
        functools.partial(self.teacher_log_probs, denoiser, teacher),
        functools.partial(self.infill_log_probs, denoiser, params),
        functools.partial(self.prior_log_prob, denoiser,
                          self.prior_params(params, inference_state)))

  def conditional_likelihood_bound(self, denoiser: GlauberDenoiser, params: Params,
                                   tokens: Array, free: Array, rng: Array,
                                   inference_state: Mapping[str, Params]) -> Array:
    """One-path ELBO ``[B]`` of ``log p(tokens[free] | tokens[~free])``: the forward chain and
    the reverse rounds skip the other sites (as ``sample`` skips a prompt's), and the prior
    term is CAUSAL-GEN's log-likelihood of the free sites given the tokens before them (the
    model drafts the free sites after the prompt; later frozen sites do not condition the
    draft, only the rounds)."""
    teacher = inference_state.get("teacher", params)
    prior_params = self.prior_params(params, inference_state)

    def prior_term(x_final: Array) -> Array:
      token_log_probs = denoiser.causal_token_log_probs(prior_params, x_final,
                                                        self._at_end(x_final.shape[0]))
      return jnp.sum(jnp.where(free, token_log_probs, 0.0), axis=-1)

    return glauber.likelihood_bound(
        rng, tokens, jnp.asarray(self.schedule.sites()),
        functools.partial(self.teacher_log_probs, denoiser, teacher),
        functools.partial(self.infill_log_probs, denoiser, params), prior_term, free)

  # ---- Checkpoints --------------------------------------------------------------------------

  def metadata(self) -> dict[str, Any]:
    return {**super().metadata(), "glauber_schedule": self.schedule.to_json(),
            "loss": self.loss_name, "forward_mixing": self.forward_mixing}

  def check_metadata(self, saved: Mapping[str, Any]) -> None:
    """The checkpoint's permutations must be this process's: the reverse rounds visit the
    sites in the order the model was trained on. A UL2 or source checkpoint has none."""
    super().check_metadata(saved)
    if "glauber_schedule" not in saved:
      return
    trained = glauber.GlauberSchedule.from_json(saved["glauber_schedule"])
    if not np.array_equal(trained.permutations, self.schedule.permutations):
      trained_order = np.asarray(trained.permutations)[:, :8].tolist()
      configured_order = np.asarray(self.schedule.permutations)[:, :8].tolist()
      raise ValueError(
          f"the checkpoint was trained with {trained.num_rounds} rounds of site permutations "
          f"starting {trained_order}, but the gin configuration builds "
          f"{self.schedule.num_rounds} rounds starting {configured_order}: the rounds would "
          "visit the sites in an order the model never saw. Use the run's NUM_ROUNDS and "
          "GlauberProcess.permutation_seed (for fewer rounds at inference, the num_rounds "
          "sampler option).")
