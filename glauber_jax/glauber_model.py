"""The Glauber DiT: a time-conditioned UL2 trained on the Glauber chain, and its sampler.

This is the paper's model, following ``shared/design/glauber.md``:

- MASK-INFILL (``denoisers.mask_infill``): the encoder reads ``[NLU] x_{-k} [EOS]`` with site
  ``k`` replaced by the first sentinel, the decoder reads ``[start, sentinel_0]``; its second
  output is ``p(x_k | x_{-k}, t)``. CAUSAL-GEN (``denoisers.causal_gen``): the encoder reads
  ``[S2S] prefix [EOS]`` and the decoder writes the continuation with a KV cache.
- Training (``prepare_batch`` + ``loss_fn``): ``B`` forward chains live in the model state next
  to a frozen teacher copy of the parameters. Each step runs one batched teacher pass at every
  chain's next site, takes the forward step and trains the student on the pair ``(x_{t-1},
  x_t)`` at time ``t`` with ``score_entropy`` or ``ce``. ``training_mode="literal"`` replays the
  chain from ``x_0`` for every pair instead (Algorithm 1 as written; for small ``L``).
- Sampling (``sample``): CAUSAL-GEN of the whole sequence at ``t = T``, then ``N * L`` single-
  site MASK-INFILL steps in reverse permutation order, all in one compiled program.
- ``likelihood_bound``: the design note's ELBO (a ``<=`` perplexity).

- ``chain_health``: is the teacher an energy function the rounds can use? Printed when Glauber
  training starts (a teacher whose infill is no better than the prior's next-token prediction is
  refused unless ``allow_context_blind_teacher``), and logged during training as
  ``teacher_cross_entropy`` and ``changed_fraction``.

Tokens the text can never hold (pad, unknown, sentinels, mode tokens and padding ids) get
probability zero in every draw: the forward kernel, the infill steps and the causal phase. EOS
stays allowed where it separates the documents packed into a training sequence, and not for
tasks of fixed-length sequences with no end (``text_includes_eos``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import decoding, denoisers, models, network, throughput, vocabularies
from glauber_jax.processes import glauber

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]

TRAINING_MODES = ("buffer", "literal")
#: The per-pair losses of ``glauber.LOSSES`` (one target per pair, at the site the step updated)
#: and ``ce_all_sites`` (``GlauberDiffusionModel.loss``).
LOSSES = glauber.LOSSES + ("ce_all_sites",)
#: Parameters the DiT adds to the source UL2 network (initialised fresh when converting).
TIME_PARAM_NAMES = ("time_embedding", "modulation")


@dataclasses.dataclass(frozen=True)
class GlauberSamplerOptions(models.SamplerOptions):
  """Algorithm 2's settings: ``temperature``/``top_k``/``top_p`` shape the CAUSAL-GEN draft.

  Attributes:
    num_rounds: reverse rounds after the draft (None: the trained ``N``; 0: the draft alone).
    infill_temperature: temperature of the MASK-INFILL draws.
  """

  num_rounds: Optional[int] = None
  infill_temperature: float = 1.0


@gin.configurable
class GlauberDiffusionModel(models.BaseModel):
  """The time-conditioned UL2 of the Glauber paper (Algorithms 1 and 2).

  Attributes:
    network_config: the network; ``time_conditioning`` must be on.
    vocabulary: the task's vocabulary (special ids and the tokens text may hold).
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
    prior_loss_weight: weight of the prior's loss, CAUSAL-GEN's (``t = T``) mean per-token
      cross entropy on the batch's data rows, against the mean pair loss. The prior and the
      reverse kernel share the network, so without it the prior drifts while the reverse
      kernel trains (measured in ``docs/results.md``); 0 turns it off.
    allow_context_blind_teacher: start training even when ``chain_health`` finds the
      teacher's infill no better than the prior's next-token prediction.
    text_includes_eos: whether EOS is text (it separates packed documents); False for tasks of
      fixed-length sequences with no end, so no draw ever writes it
      (``@data.task_text_includes_eos()`` in ``gin/models/glauber.gin``).
  """

  feature_names = ("targets",)
  sampler_options_type = GlauberSamplerOptions
  inference_state_names = ("teacher",)

  def __init__(self, network_config: network.NetworkConfig = gin.REQUIRED,
               vocabulary: vocabularies.Vocabulary = gin.REQUIRED, seq_len: int = gin.REQUIRED,
               num_rounds: int = 1, permutation_seed: int = 0, loss: str = "ce",
               training_mode: str = "buffer", teacher_refresh_steps: int = 0,
               forward_mixing: float = 1e-3, prior_loss_weight: float = 1.0,
               allow_context_blind_teacher: bool = False,
               text_includes_eos: bool = True) -> None:
    if not network_config.time_conditioning:
      raise ValueError("GlauberDiffusionModel needs NetworkConfig.time_conditioning = True.")
    if network_config.vocab_size != vocabulary.vocab_size:
      raise ValueError(f"NetworkConfig.vocab_size={network_config.vocab_size} but the task's "
                       f"vocabulary has {vocabulary.vocab_size} ids.")
    if network_config.max_encoder_length < seq_len + 2:
      raise ValueError(f"MASK-INFILL reads L + 2 = {seq_len + 2} encoder tokens but "
                       f"max_encoder_length={network_config.max_encoder_length}.")
    if network_config.max_decoder_length < seq_len:
      raise ValueError(f"CAUSAL-GEN writes L = {seq_len} tokens but max_decoder_length="
                       f"{network_config.max_decoder_length}.")
    if loss not in LOSSES:
      raise ValueError(f"loss={loss!r}; expected one of {LOSSES}.")
    if loss == "ce_all_sites" and network_config.infill_readout != "cloze":
      raise ValueError("loss='ce_all_sites' reads every site at once and needs "
                       "NetworkConfig.infill_readout = 'cloze', got "
                       f"{network_config.infill_readout!r}.")
    if training_mode not in TRAINING_MODES:
      raise ValueError(f"training_mode={training_mode!r}; expected one of {TRAINING_MODES}.")
    if not 0.0 <= forward_mixing < 1.0:
      raise ValueError(f"forward_mixing must be in [0, 1), got {forward_mixing}.")
    if prior_loss_weight < 0:
      raise ValueError(f"prior_loss_weight must be >= 0, got {prior_loss_weight}.")
    self.network_config = network_config
    self.module = network.Transformer(network_config)
    self.vocabulary = vocabulary
    self.special_ids = denoisers.SpecialIds.from_vocabulary(vocabulary)
    # Text tokens plus EOS where it separates the documents packed into one sequence (the data
    # holds it, so the chain, the losses and the bound must give it probability).
    self.allowed_tokens = np.logical_not(vocabulary.special_token_mask())
    self.allowed_tokens[vocabulary.eos_id] = text_includes_eos
    self.schedule = glauber.GlauberSchedule.from_seed(seq_len, num_rounds, permutation_seed)
    self.loss = loss
    self.training_mode = training_mode
    self.teacher_refresh_steps = teacher_refresh_steps
    self.forward_mixing = forward_mixing
    self.prior_loss_weight = prior_loss_weight
    self.allow_context_blind_teacher = allow_context_blind_teacher

  @property
  def seq_len(self) -> int:
    return self.schedule.seq_len

  @property
  def num_steps(self) -> int:
    return self.schedule.num_steps

  # ---- Model calls ----------------------------------------------------------------------------

  def infill_logits(self, params: Params, tokens: Array, sites: Array, times: Array,
                    dropout_rng: Optional[Array] = None) -> Array:
    """Float32 logits ``[B, V]`` of MASK-INFILL at ``sites`` and ``times``; special ids -1e9.

    Read out by the decoder (``[start, sentinel_0]``, position 1) or, with
    ``NetworkConfig.infill_readout = "encoder"`` or ``"cloze"``, by the infill head at the
    masked encoder position ``site + 1`` (after the mode token).
    """
    features = denoisers.mask_infill(tokens, sites, self.special_ids, xp=jnp)
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    if self.network_config.infill_readout in ("encoder", "cloze"):
      logits = self.module.apply(
          {"params": params}, features["encoder_input_tokens"], sites.astype(jnp.int32) + 1,
          times.astype(jnp.float32), enable_dropout=dropout_rng is not None, rngs=rngs,
          method=network.Transformer.infill)
    else:
      logits = self.module.apply(
          {"params": params}, features["encoder_input_tokens"],
          features["decoder_input_tokens"], times.astype(jnp.float32),
          enable_dropout=dropout_rng is not None, rngs=rngs)[:, 1]
    return jnp.where(self.allowed_tokens, logits.astype(jnp.float32), -1e9)

  def cloze_logits(self, params: Params, tokens: Array, times: Array,
                   dropout_rng: Optional[Array] = None) -> Array:
    """Float32 logits ``[B, L, V]`` of the cloze read-out at every site of ``tokens [B, L]`` at
    ``times``; special ids -1e9. Site ``k``'s never see ``tokens[:, k]``, so they equal
    ``infill_logits(tokens, k, times)`` (``NetworkConfig.infill_readout = "cloze"`` only)."""
    encoder = denoisers.infill_context(tokens, self.special_ids, xp=jnp)
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    logits = self.module.apply({"params": params}, encoder, times.astype(jnp.float32),
                               enable_dropout=dropout_rng is not None, rngs=rngs,
                               method=network.Transformer.cloze)[:, 1:-1]
    return jnp.where(self.allowed_tokens, logits, -1e9)

  def infill_log_probs(self, params: Params, tokens: Array, sites: Array, times: Array
                       ) -> Array:
    """``log p_theta(x_k = . | x_{-k}, t)`` over the allowed ids, ``[B, V]`` float32."""
    logits = self.infill_logits(params, tokens, sites, times)
    return jnp.where(self.allowed_tokens, jax.nn.log_softmax(logits), -jnp.inf)

  def teacher_log_probs(self, teacher_params: Params, tokens: Array, sites: Array,
                        times: Array) -> Array:
    """The forward kernel: the teacher's MASK-INFILL at ``t = T``, mixed with uniform."""
    del times  # The teacher is the model at t = T whatever the step.
    at_end = jnp.full(sites.shape, self.num_steps, jnp.int32)
    return glauber.mix_with_uniform(self.infill_log_probs(teacher_params, tokens, sites, at_end),
                                    self.forward_mixing, jnp.asarray(self.allowed_tokens))

  def causal_log_prob(self, params: Params, tokens: Array,
                      dropout_rng: Optional[Array] = None) -> Array:
    """Teacher-forced CAUSAL-GEN log-likelihood ``[B]`` of ``tokens [B, L]`` at ``t = T``."""
    batch = tokens.shape[0]
    encoder = denoisers.causal_gen(jnp.zeros((batch, 0), jnp.int32), self.special_ids,
                                   xp=jnp)["encoder_input_tokens"]
    decoder_inputs = jnp.concatenate([jnp.zeros((batch, 1), tokens.dtype), tokens[:, :-1]], 1)
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    logits = self.module.apply({"params": params}, encoder, decoder_inputs,
                               jnp.full((batch,), self.num_steps, jnp.float32),
                               enable_dropout=dropout_rng is not None, rngs=rngs)
    logits = jnp.where(self.allowed_tokens, logits.astype(jnp.float32), -jnp.inf)
    log_probs = jax.nn.log_softmax(logits)
    return jnp.sum(jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0], axis=-1)

  # ---- BaseModel: variables, shapes, state -----------------------------------------------------

  def input_shapes(self, batch_size: int, feature_lengths: Mapping[str, int]
                   ) -> dict[str, tuple[int, ...]]:
    if feature_lengths.get("targets") != self.seq_len:
      raise ValueError(f"TASK_FEATURE_LENGTHS must be {{'targets': {self.seq_len}}} (the "
                       f"model's seq_len), got {dict(feature_lengths)}.")
    return {"targets": (batch_size, self.seq_len)}

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple[int, ...]]
                            ) -> dict[str, Any]:
    batch = input_shapes["targets"][0]
    encoder = jnp.ones((batch, self.seq_len + 2), jnp.int32)
    decoder = jnp.ones((batch, 2), jnp.int32)
    return self.module.init(rng, encoder, decoder, jnp.ones((batch,), jnp.float32))

  def is_added_param(self, path: tuple[str, ...]) -> bool:
    """True for the DiT's time parameters, absent from a source UL2 / Flan-T5 checkpoint."""
    return any(name in path for name in TIME_PARAM_NAMES)

  def init_model_state(self, params: Params, batch: Batch, rng: Array) -> dict[str, Any]:
    """The frozen teacher and, in buffer mode, chains staggered uniformly over ``1..T``."""
    state: dict[str, Any] = {"teacher": params}
    if self.training_mode == "buffer":
      data = batch["targets"]
      targets = jnp.asarray(glauber.staggered_targets(data.shape[0], self.num_steps))
      state["chains"] = glauber.warm_up_chains(
          rng, data, jnp.asarray(self.schedule.sites()),
          functools.partial(self.teacher_log_probs, params), targets)
    return state

  def model_state_shardings(self, abstract_model_state: Any, param_shardings: Any,
                            batch_sharding: Any, replicated: Any) -> Any:
    del replicated
    shardings: dict[str, Any] = {"teacher": param_shardings}
    if "chains" in abstract_model_state:  # Rows split like the batch's.
      row_axes = batch_sharding.spec[0]
      shardings["chains"] = jax.tree.map(
          lambda leaf: jax.sharding.NamedSharding(
              batch_sharding.mesh, jax.sharding.PartitionSpec(row_axes, *[None] * (leaf.ndim - 1))),
          abstract_model_state["chains"])
    return shardings

  def prepare_batch(self, params: Params, model_state: Any, batch: Batch, step: Array,
                    rng: Array) -> tuple[Batch, Any]:
    """Refreshes the teacher when due, then makes one training pair per example."""
    teacher = model_state["teacher"]
    if self.teacher_refresh_steps > 0:
      refresh = jnp.logical_and(step > 0, step % self.teacher_refresh_steps == 0)
      teacher = jax.lax.cond(refresh, lambda: params, lambda: teacher)
    teacher_fn = functools.partial(self.teacher_log_probs, jax.lax.stop_gradient(teacher))
    sites = jnp.asarray(self.schedule.sites())
    new_state = {"teacher": teacher}
    if self.training_mode == "buffer":
      chains, pair = glauber.advance_chains(rng, model_state["chains"], sites, teacher_fn,
                                            batch["targets"])
      new_state["chains"] = chains
    else:
      pair = glauber.literal_pairs(rng, batch["targets"], sites, teacher_fn)
    pairs = {
        "tokens": pair.current,
        "sites": pair.sites,
        "times": pair.times,
        "previous_values": glauber.get_sites(pair.previous, pair.sites),
        "current_values": glauber.get_sites(pair.current, pair.sites),
        "teacher_log_probs": pair.teacher_log_probs,
        "data": batch["targets"],
    }
    return pairs, new_state

  # ---- Loss ------------------------------------------------------------------------------------

  def loss_fn(self, params: Params, batch: Batch, rng: Optional[Array]
              ) -> tuple[Array, dict[str, Array]]:
    """Summed pair loss over the batch (plus the weighted prior loss on the data rows), with
    reverse cross entropy and accuracy, the chain's health and the prior's NLL as metrics."""
    infill_rng, prior_rng = (None, None) if rng is None else jax.random.split(rng)
    if self.loss == "ce_all_sites":
      previous = glauber.set_sites(batch["tokens"], batch["sites"], batch["previous_values"])
      every_site = self.cloze_logits(params, previous, batch["times"], infill_rng)
      logits = jnp.take_along_axis(every_site, batch["sites"][:, None, None], axis=1)[:, 0]
      log_probs = jax.nn.log_softmax(every_site, axis=-1)
      per_pair = -jnp.mean(jnp.take_along_axis(log_probs, previous[..., None], axis=-1)[..., 0],
                           axis=-1)
    else:
      logits = self.infill_logits(params, batch["tokens"], batch["sites"], batch["times"],
                                  infill_rng)
      per_pair = glauber.pair_loss(self.loss, logits, batch["teacher_log_probs"],
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
      prior_nll = -self.causal_log_prob(params, batch["data"], prior_rng) / self.seq_len
      prior_sum = jnp.mean(prior_nll) * num_pairs
      loss = loss + self.prior_loss_weight * prior_sum
      metrics["prior_nll_sum"] = jax.lax.stop_gradient(prior_sum)
    return loss, {"loss_sum": loss, **metrics}

  def num_flops_per_example(self, input_lengths: Mapping[str, int]) -> float:
    """Student forward + backward and one teacher forward on MASK-INFILL (encoder L + 2), and
    the prior's CAUSAL-GEN forward + backward when its loss is on."""
    del input_lengths
    training = throughput.encoder_decoder_training_flops(self.network_config, self.seq_len + 2,
                                                         2)
    prior = (throughput.encoder_decoder_training_flops(self.network_config, 2, self.seq_len)
             if self.prior_loss_weight > 0 else 0.0)
    return training * 4.0 / 3.0 + prior

  def checkpoint_metadata(self) -> dict[str, Any]:
    return {"glauber_schedule": self.schedule.to_json(), "loss": self.loss,
            "forward_mixing": self.forward_mixing,
            "infill_readout": self.network_config.infill_readout}

  def check_checkpoint_metadata(self, saved: Mapping[str, Any]) -> None:
    """The checkpoint's permutations must be this model's: the reverse rounds visit the sites
    in the order the model was trained on. A UL2 or source checkpoint has none."""
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
          "GlauberDiffusionModel.permutation_seed (for fewer rounds at inference, the "
          "num_rounds sampler option).")

  # ---- Chain health ----------------------------------------------------------------------------

  @functools.partial(jax.jit, static_argnames=("self",))
  def chain_health(self, params: Params, teacher_params: Params, data: Array, rng: Array
                   ) -> dict[str, Array]:
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
    teacher = self.teacher_log_probs(teacher_params, data, sites, sites + 1)
    infill_nll = -jnp.mean(jnp.take_along_axis(teacher, glauber.get_sites(data, sites)[:, None],
                                               axis=-1))
    counts = jnp.sum(jax.nn.one_hot(data, self.network_config.vocab_size), axis=(0, 1))
    frequencies = counts / jnp.sum(counts)
    unigram = -jnp.sum(jnp.where(counts > 0, frequencies * jnp.log(frequencies), 0.0))
    schedule_sites = jnp.asarray(self.schedule.sites())
    teacher_fn = functools.partial(self.teacher_log_probs, teacher_params)
    after_round = glauber.run_forward(round_rng, data, schedule_sites[:self.seq_len], teacher_fn)
    chain_end = glauber.run_forward(chain_rng, data, schedule_sites, teacher_fn)
    return {
        "teacher_infill_nll": infill_nll,
        "prior_nll": -jnp.mean(self.causal_log_prob(params, data)) / self.seq_len,
        "batch_unigram_entropy": unigram,
        "sweep_changed_fraction": jnp.mean((after_round != data).astype(jnp.float32)),
        "chain_end_prior_nll": -jnp.mean(self.causal_log_prob(params, chain_end)) / self.seq_len,
    }

  def training_start_report(self, params: Params, model_state: Any, batch: Batch, rng: Array
                            ) -> dict[str, float]:
    """``chain_health`` on the first batch; raises if the teacher's infill is no better than
    the prior's next-token prediction (``allow_context_blind_teacher`` overrides)."""
    health = {name: float(value) for name, value in jax.device_get(
        self.chain_health(params, model_state["teacher"], batch["targets"], rng)).items()}
    if health["teacher_infill_nll"] >= health["prior_nll"]:
      message = (
          f"the teacher's MASK-INFILL is context-blind: its infill cross entropy "
          f"{health['teacher_infill_nll']:.3f} nats is no better than CAUSAL-GEN's next-token "
          f"{health['prior_nll']:.3f} (batch unigram {health['batch_unigram_entropy']:.3f}); "
          f"one forward round changes {100 * health['sweep_changed_fraction']:.0f}% of the "
          "sites and the rounds would turn drafts into unigram draws. Pretrain the UL2 with "
          "the single-site denoiser and the encoder readout (gin/ul2_tiny.gin shows how), or "
          "set GlauberDiffusionModel.allow_context_blind_teacher = True to train anyway.")
      if not self.allow_context_blind_teacher:
        raise ValueError(message)
      logging.warning(message)
    return health

  # ---- Sampling and scoring ----------------------------------------------------------------------

  def causal_gen(self, params: Params, rng: Array, batch_size: int,
                 prefix: Optional[Array] = None, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0) -> Array:
    """CAUSAL-GEN at ``t = T``: ``[B, L]`` tokens, the first ``P`` equal to ``prefix [B, P]``."""
    prefix = jnp.zeros((batch_size, 0), jnp.int32) if prefix is None else prefix
    prefix_len = prefix.shape[1]
    if prefix_len >= self.seq_len:
      raise ValueError(f"prefix length {prefix_len} leaves nothing to generate (L = "
                       f"{self.seq_len}).")
    encoder = denoisers.causal_gen(prefix, self.special_ids, xp=jnp)["encoder_input_tokens"]
    continuation = decoding.decode(
        self.module, params, encoder, rng, max_decode_length=self.seq_len - prefix_len,
        time=jnp.full((batch_size,), self.num_steps, jnp.float32), temperature=temperature,
        top_k=top_k, top_p=top_p, eos_id=None, allowed_tokens=jnp.asarray(self.allowed_tokens))
    return jnp.concatenate([prefix.astype(jnp.int32), continuation], axis=1)

  def sampler_options(self, options: Mapping[str, Any]) -> GlauberSamplerOptions:
    """The options with ``num_rounds`` resolved (default: the trained ``N``) and checked."""
    resolved = super().sampler_options(options)
    num_rounds = (self.schedule.num_rounds if resolved.num_rounds is None
                  else resolved.num_rounds)
    if not 0 <= num_rounds <= self.schedule.num_rounds:
      raise ValueError(f"num_rounds must be in [0, {self.schedule.num_rounds}] (the trained N), "
                       f"got {num_rounds}.")
    return dataclasses.replace(resolved, num_rounds=num_rounds)

  def draft_options(self, options: models.SamplerOptions) -> GlauberSamplerOptions:
    """CAUSAL-GEN alone: no rounds."""
    return dataclasses.replace(options, num_rounds=0)

  def _sample(self, params: Params, rng: Array, batch_size: int, prefix: Optional[Array],
              options: GlauberSamplerOptions) -> models.Samples:
    """Algorithm 2 in one compiled program: the CAUSAL-GEN draft, then ``options.num_rounds``
    reverse rounds of MASK-INFILL (fewer than trained run the last rounds' steps
    ``t = n L .. 1``; 0 is CAUSAL-GEN only). The causal phase draws with the options'
    ``temperature``/``top_k``/``top_p``, the infill draws with ``infill_temperature``."""
    causal_rng, infill_rng = jax.random.split(rng)
    draft = self.causal_gen(params, causal_rng, batch_size, prefix, options.temperature,
                            options.top_k, options.top_p)
    if options.num_rounds == 0:
      return models.Samples(draft, draft)
    prefix_len = 0 if prefix is None else prefix.shape[1]
    frozen = jnp.broadcast_to(jnp.arange(self.seq_len) < prefix_len, draft.shape)
    sites = jnp.asarray(self.schedule.sites()[: options.num_rounds * self.seq_len])
    final = glauber.reverse_sweep(infill_rng, draft, sites,
                                  functools.partial(self.infill_log_probs, params), frozen,
                                  options.infill_temperature)
    return models.Samples(draft, final)

  def likelihood_bound(self, params: Params, tokens: Array, rng: Array,
                       inference_state: Optional[Mapping[str, Params]] = None) -> Array:
    """One-path ELBO ``[B]`` (nats) of ``tokens [B, L]``; ``exp(-mean / L)`` bounds the PPL.
    The forward kernels are ``inference_state["teacher"]``'s (default: the parameters)."""
    teacher = params if inference_state is None else inference_state.get("teacher", params)
    return self._likelihood_bound(params, teacher, tokens, rng)

  @functools.partial(jax.jit, static_argnames=("self",))
  def _likelihood_bound(self, params: Params, teacher_params: Params, tokens: Array,
                        rng: Array) -> Array:
    return glauber.likelihood_bound(
        rng, tokens, jnp.asarray(self.schedule.sites()),
        functools.partial(self.teacher_log_probs, teacher_params),
        functools.partial(self.infill_log_probs, params),
        functools.partial(self.causal_log_prob, params))

  def predict_batch(self, params: Params, batch: Batch, rng: Array, **kwargs: Any) -> Array:
    """Algorithm 2 samples ``[B, L]``; ``kwargs`` are sampler options."""
    return self.sample(params, rng, batch["targets"].shape[0], **kwargs).final

  def score_batch(self, params: Params, batch: Batch) -> Array:
    """The ELBO with the student as its own teacher (``likelihood_bound`` takes a trained
    teacher copy)."""
    return self.likelihood_bound(params, batch["targets"], jax.random.PRNGKey(0))
