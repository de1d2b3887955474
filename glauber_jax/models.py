"""The model interface the trainer and the CLIs drive, and the UL2 encoder-decoder model.

As in T5X, the trainer only knows ``BaseModel``: initial variables, a loss, batch prediction and
batch scoring. ``DiffusionModel`` is the one subclass for every diffusion family: a denoiser
network driven by a ``processes.base.Process``.
The inference CLI only knows the sampling half of the same interface: ``sample`` with the
model's own ``sampling.SamplerOptions`` (checked by ``sampler_options``), ``likelihood_bound``,
the checkpointed state inference needs (``inference_state_names``) and the check of a checkpoint's
metadata against the configured model (``check_checkpoint_metadata``).

Losses are returned as *sums* together with the number of weighted target tokens
(``metrics["weight_sum"]``), so that gradient accumulation over microbatches and data-parallel
reduction give exactly the per-token mean of the whole batch.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from glauber_jax import decoding, encoder_decoder, network, sampling, throughput, vocabularies
from glauber_jax.processes import base as processes_base

Array = jax.Array
Batch = Mapping[str, Array]
Params = Any

def targets_input_shapes(batch_size: int, feature_lengths: Mapping[str, int], seq_len: int
                         ) -> dict[str, tuple[int, ...]]:
  """``{"targets": (batch_size, seq_len)}`` for the models of ``{"targets": [B, L]}`` rows;
  ValueError unless the task's feature lengths are exactly ``{"targets": seq_len}``."""
  if dict(feature_lengths) != {"targets": seq_len}:
    raise ValueError(f"TASK_FEATURE_LENGTHS must be {{'targets': {seq_len}}} (the model's "
                     f"seq_len), got {dict(feature_lengths)}.")
  return {"targets": (batch_size, seq_len)}


ENCODER_DECODER_FEATURES = ("encoder_input_tokens", "decoder_input_tokens",
                            "decoder_target_tokens", "decoder_loss_weights")


def cross_entropy_sums(logits: Array, targets: Array, weights: Array,
                       z_loss: float = 0.0) -> dict[str, Array]:
  """Weighted token cross entropy, z-loss and accuracy, summed over the batch.

  Args:
    logits: ``[B, T, V]`` float32 logits.
    targets: ``[B, T]`` integer targets.
    weights: ``[B, T]`` per-token weights (0 on padding).
    z_loss: coefficient of ``log(Z)^2`` (T5X's auxiliary loss keeping the softmax normaliser
      near one).

  Returns:
    ``loss_sum`` (cross entropy plus z-loss), ``z_loss_sum``, ``accuracy_sum`` (correct
    argmax predictions) and
    ``weight_sum``.
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  token_nll = log_z - target_logits
  token_z_loss = z_loss * jnp.square(log_z)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {
      "loss_sum": jnp.sum((token_nll + token_z_loss) * weights),
      "z_loss_sum": jnp.sum(token_z_loss * weights),
      "accuracy_sum": jnp.sum(correct * weights),
      "weight_sum": jnp.sum(weights),
  }


class BaseModel(abc.ABC):
  """What the trainer, the checkpointer and the CLIs need from any model."""

  #: Batch features the loss reads; the trainer checks incoming batches against these.
  feature_names: tuple[str, ...] = ()

  @property
  def name(self) -> str:
    """What the model is, for records and logs: its class name by default."""
    return type(self).__name__

  @abc.abstractmethod
  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple[int, ...]]
                            ) -> dict[str, Any]:
    """Variables (``{"params": ...}``) with logically partitioned (boxed) leaves."""

  @abc.abstractmethod
  def loss_fn(self, params: Params, batch: Batch, rng: Optional[Array]
              ) -> tuple[Array, dict[str, Array]]:
    """Summed loss and summed metrics, ``weight_sum`` among them. ``rng`` None: no dropout."""

  @abc.abstractmethod
  def predict_batch(self, params: Params, batch: Batch, rng: Array, **kwargs: Any) -> Array:
    """Generated token ids ``[B, T]``."""

  @abc.abstractmethod
  def score_batch(self, params: Params, batch: Batch) -> Array:
    """Per-example log-likelihood ``[B]`` of the batch's targets."""

  def num_flops_per_example(self, input_lengths: Mapping[str, int]) -> float:
    """Training FLOPs (forward + backward) per example; used for MFU. 0 when unknown."""
    del input_lengths
    return 0.0

  def checkpoint_metadata(self) -> dict[str, Any]:
    """JSON-serialisable facts saved with every checkpoint (e.g. a sampler's permutations)."""
    return {}

  def check_checkpoint_metadata(self, saved: Mapping[str, Any]) -> None:
    """Raises ValueError if a checkpoint's saved ``checkpoint_metadata`` contradicts this
    configured model (called on resume and before inference). Nothing to check by default."""
    del saved

  def input_shapes(self, batch_size: int, feature_lengths: Mapping[str, int]
                   ) -> dict[str, tuple[int, ...]]:
    """Global shapes of the batches the data pipeline feeds this model."""
    del batch_size, feature_lengths
    raise NotImplementedError

  def is_added_param(self, path: tuple[str, ...]) -> bool:
    """Whether the parameter at ``path`` is new to this model, so absent from the source
    checkpoint it starts from (it keeps its initial value). The plain models add none."""
    del path
    return False

  # ---- Optional training state beyond the parameters (e.g. a frozen teacher) -------------

  def init_model_state(self, params: Params, batch: Batch, rng: Array) -> Any:
    """State the model carries between steps (checkpointed with the parameters); None: none."""
    del params, batch, rng
    return None

  def model_state_shardings(self, abstract_model_state: Any, param_shardings: Any,
                            batch_sharding: Any, replicated: Any) -> Any:
    """Shardings of ``init_model_state``'s output, from the parameters' and the batch's."""
    del abstract_model_state, param_shardings, batch_sharding, replicated
    return None

  def training_start_report(self, params: Params, model_state: Any, batch: Batch, rng: Array
                            ) -> dict[str, float]:
    """Diagnostics logged before the first step of a fresh run (e.g. whether a diffusion
    model's teacher can serve); may raise to refuse a run that cannot work. None by default."""
    del params, model_state, batch, rng
    return {}

  def prepare_batch(self, params: Params, model_state: Any, batch: Batch, step: Array,
                    rng: Array) -> tuple[Batch, Any]:
    """Turns a data batch into the loss's batch before the gradient (not differentiated).

    The default passes the batch through; a diffusion model runs its forward process here.
    """
    del params, step, rng
    return batch, model_state

  # ---- Sampling and likelihood bounds (the inference CLI's interface) ------------------------

  #: The sampler's settings; None: this model does not sample.
  sampler_options_type: Optional[type[sampling.SamplerOptions]] = None
  #: ``model_state`` entries inference needs besides the parameters (each falls back to the
  #: parameters when a checkpoint lacks it, as a source checkpoint does).
  inference_state_names: tuple[str, ...] = ()

  def sampler_options(self, options: Mapping[str, Any]) -> sampling.SamplerOptions:
    """``sampler_options_type(**options)``; ValueError names the valid options when ``options``
    holds one this model's sampler does not have. Models override it to resolve defaults that
    depend on the configuration (e.g. the trained number of rounds) and to check ranges."""
    if self.sampler_options_type is None:
      raise ValueError(f"{type(self).__name__} has no sampler; sample from a diffusion model "
                       "or a baseline (a *_glauber.gin, ar or mdlm gin file).")
    valid = [field.name for field in dataclasses.fields(self.sampler_options_type)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
      raise ValueError(f"{type(self).__name__}'s sampler has no option {unknown}; its options "
                       f"are {valid}.")
    return self.sampler_options_type(**options)

  def draft_options(self, options: sampling.SamplerOptions) -> sampling.SamplerOptions:
    """``options`` for the model's first draft alone (``infer --mode=causal``); the same options
    for samplers without a refinement stage."""
    return options

  def sample(self, params: Params, rng: Array, batch_size: int, prefix: Optional[Array] = None,
             inference_state: Optional[Mapping[str, Params]] = None, **options: Any
             ) -> sampling.Samples:
    """``batch_size`` samples, the first ``P`` tokens equal to ``prefix [B, P]`` and never
    resampled, in one compiled program per shape and options; ``options`` are the model's
    ``sampling.SamplerOptions`` by name, ``inference_state`` the ``inference_state_names``
    entries (missing ones fall back to the parameters)."""
    return self.sample_with(params, rng, batch_size, prefix, self.sampler_options(options),
                            inference_state)

  def sample_with(self, params: Params, rng: Array, batch_size: int, prefix: Optional[Array],
                  options: sampling.SamplerOptions,
                  inference_state: Optional[Mapping[str, Params]] = None) -> sampling.Samples:
    """``sample`` with checked options (``sampler_options``' result)."""
    return self._compiled_sample(params, rng, batch_size, prefix, options,
                                 dict(inference_state or {}))

  @functools.partial(jax.jit, static_argnames=("self", "batch_size", "options"))
  def _compiled_sample(self, params: Params, rng: Array, batch_size: int,
                       prefix: Optional[Array], options: sampling.SamplerOptions,
                       inference_state: Mapping[str, Params]) -> sampling.Samples:
    return self._sample(nn.meta.unbox(params), rng, batch_size, prefix, options,
                        nn.meta.unbox(inference_state))

  def _sample(self, params: Params, rng: Array, batch_size: int, prefix: Optional[Array],
              options: sampling.SamplerOptions, inference_state: Mapping[str, Params]
              ) -> sampling.Samples:
    """The sampler, traced under ``sample_with``'s jit; models with a sampler override it."""
    del params, rng, batch_size, prefix, options, inference_state
    raise ValueError(f"{type(self).__name__} has no sampler.")

  def likelihood_bound(self, params: Params, tokens: Array, rng: Array,
                       inference_state: Optional[Mapping[str, Params]] = None) -> Array:
    """A lower bound ``[B]`` (nats) on ``log p(tokens [B, L])``, exact for a causal LM, one
    Monte-Carlo draw for a diffusion bound (average over ``rng`` for a tighter estimate);
    ``inference_state`` holds the ``inference_state_names`` entries."""
    del params, tokens, rng, inference_state
    raise ValueError(f"{type(self).__name__} has no likelihood bound.")

  def conditional_likelihood_bound(self, params: Params, tokens: Array, free: Array,
                                   rng: Array,
                                   inference_state: Optional[Mapping[str, Params]] = None
                                   ) -> Array:
    """A lower bound ``[B]`` (nats) on ``log p(tokens[free] | tokens[~free])`` (``free
    [B, L]`` bool), exact for a causal LM (which then needs every free position after the
    frozen ones it conditions on), one Monte-Carlo draw for a diffusion bound: the
    likelihood of a continuation given its prompt, as the sampler draws it."""
    del params, tokens, free, rng, inference_state
    raise ValueError(f"{type(self).__name__} has no conditional likelihood bound.")


@gin.configurable
class EncoderDecoderModel(BaseModel):
  """The UL2 / T5 encoder-decoder trained with teacher-forced cross entropy.

  With ``network_config.infill_readout == "encoder"`` the loss also trains the network's
  encoder-readout MASK-INFILL head on every single-site example of the batch (the I-denoiser's,
  ``denoisers.single_site_infill``, and R-examples with one span of one token): the head reads
  the encoder output at the masked site and predicts its token. Its cross entropy is added to
  the summed loss like one more target token per such example, and logged as
  ``infill_cross_entropy`` (the mean over those examples). With ``"cloze"`` the same examples,
  their site filled back in, train the cloze read-out at every token of the sequence (``L``
  targets per example, each seeing all the other tokens; ``encoder_decoder.Transformer.cloze``).

  Attributes:
    network_config: the network's shape and numerics.
    z_loss: T5X's auxiliary ``log(Z)^2`` coefficient.
    eos_id: end-of-sequence id for decoding.
    vocabulary: the task's vocabulary; needed (for the mask id) with the encoder readout.
  """

  feature_names = ENCODER_DECODER_FEATURES

  def __init__(self, network_config: network.NetworkConfig = gin.REQUIRED, z_loss: float = 1e-4,
               eos_id: int = 1, vocabulary: Optional[vocabularies.Vocabulary] = None) -> None:
    if network_config.infill_readout in ("encoder", "cloze") and vocabulary is None:
      raise ValueError(f"NetworkConfig.infill_readout = {network_config.infill_readout!r} needs "
                       "EncoderDecoderModel.vocabulary (the task's, for its mask id): add "
                       "`models.EncoderDecoderModel.vocabulary = @data.task_vocabulary()`.")
    self.network_config = network_config
    self.module = encoder_decoder.Transformer(network_config)
    self.z_loss = z_loss
    self.eos_id = eos_id
    self.mask_id = None if vocabulary is None else vocabulary.sentinel_id(0)

  def input_shapes(self, batch_size: int, feature_lengths: Mapping[str, int]
                   ) -> dict[str, tuple[int, ...]]:
    return {
        "encoder_input_tokens": (batch_size, feature_lengths["inputs"]),
        "decoder_input_tokens": (batch_size, feature_lengths["targets"]),
        "decoder_target_tokens": (batch_size, feature_lengths["targets"]),
        "decoder_loss_weights": (batch_size, feature_lengths["targets"]),
    }

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple[int, ...]]
                            ) -> dict[str, Any]:
    encoder_tokens = jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32)
    decoder_tokens = jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32)
    time = (jnp.zeros(encoder_tokens.shape[:1], jnp.float32)
            if self.network_config.time_conditioning else None)
    return self.module.init({"params": rng}, encoder_tokens, decoder_tokens, time)

  def logits(self, params: Params, batch: Batch, rng: Optional[Array],
             time: Optional[Array] = None) -> Array:
    """Teacher-forced decoder logits ``[B, T, V]``; dropout is on when ``rng`` is given."""
    rngs = {"dropout": rng} if rng is not None else None
    return self.module.apply({"params": params}, batch["encoder_input_tokens"],
                             batch["decoder_input_tokens"], time, enable_dropout=rng is not None,
                             rngs=rngs)

  def loss_fn(self, params: Params, batch: Batch, rng: Optional[Array]
              ) -> tuple[Array, dict[str, Array]]:
    logits = self.logits(params, batch, rng)
    sums = cross_entropy_sums(logits, batch["decoder_target_tokens"],
                              batch["decoder_loss_weights"], self.z_loss)
    if self.network_config.infill_readout in ("encoder", "cloze"):
      infill_sum, infill_count = self._encoder_infill_sums(params, batch, rng)
      sums["loss_sum"] = sums["loss_sum"] + infill_sum
      sums["infill_cross_entropy_sum"] = jax.lax.stop_gradient(
          infill_sum / jnp.maximum(infill_count, 1.0) * sums["weight_sum"])
    return sums["loss_sum"], sums

  def _encoder_infill_sums(self, params: Params, batch: Batch, rng: Optional[Array]
                           ) -> tuple[Array, Array]:
    """Summed infill cross entropy of the encoder or cloze read-out over the batch's
    single-site examples, and the number of predicted tokens. A single-site example's inputs
    are ``[NLU] x_{-k} EOS`` with sentinel 0 at ``k``, its targets ``<s0> x_k EOS``."""
    targets = batch["decoder_target_tokens"]
    encoder_tokens = batch["encoder_input_tokens"]
    single = jnp.logical_and(targets[:, 0] == self.mask_id,
                             jnp.sum(batch["decoder_loss_weights"], axis=-1) == 3)
    masked = encoder_tokens == self.mask_id
    sites = jnp.argmax(masked, axis=-1).astype(jnp.int32)
    rngs = {"dropout": rng} if rng is not None else None
    if self.network_config.infill_readout == "cloze":
      # The clean sequence: every token between the mode token and EOS is a target.
      clean = jnp.where(masked, targets[:, 1:2], encoder_tokens)
      logits = self.module.apply({"params": params}, clean, enable_dropout=rng is not None,
                                 rngs=rngs, method=encoder_decoder.Transformer.cloze)
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), clean[..., None], axis=-1)[..., 0]
      is_token = jnp.logical_and(clean > 0, clean != self.eos_id)
      weights = (single[:, None] & is_token & (jnp.arange(clean.shape[1]) > 0)).astype(
          jnp.float32)
      return jnp.sum(nll * weights), jnp.sum(weights)
    logits = self.module.apply({"params": params}, encoder_tokens, sites,
                               enable_dropout=rng is not None, rngs=rngs,
                               method=encoder_decoder.Transformer.infill)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[:, 1:2], axis=-1)[:, 0]
    weights = single.astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(weights)

  def score_batch(self, params: Params, batch: Batch) -> Array:
    logits = self.logits(params, batch, None)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target_log_probs = jnp.take_along_axis(
        log_probs, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
    return jnp.sum(target_log_probs * batch["decoder_loss_weights"], axis=-1)

  def predict_batch(self, params: Params, batch: Batch, rng: Array, **kwargs: Any) -> Array:
    """Samples decoder outputs with ``decoding.decode`` (kwargs: temperature, top_k, ...)."""
    max_length = kwargs.pop("max_decode_length", batch["decoder_target_tokens"].shape[1]
                            if "decoder_target_tokens" in batch else None)
    return decoding.decode(self.module, params, batch["encoder_input_tokens"], rng,
                           max_decode_length=max_length, eos_id=self.eos_id, **kwargs)

  def num_flops_per_example(self, input_lengths: Mapping[str, int]) -> float:
    return throughput.encoder_decoder_training_flops(
        self.network_config, input_lengths["inputs"], input_lengths["targets"])


@gin.configurable
class DiffusionModel(BaseModel):
  """A discrete diffusion model: a denoiser network driven by a process.

  The one model every diffusion family trains and samples with
  (``processes.base.Process``): the process owns the forward corruption, the loss, the
  sampler, the bound and the checkpoint facts, and calls the denoiser's read-outs; this class
  adapts the pair to ``BaseModel``. Batches are ``{"targets": int32 [B, L]}`` rows of a task.

  Attributes:
    denoiser: the network (``denoiser_networks.EncoderDecoderDenoiser`` for Glauber,
      ``SingleStackDenoiser`` for the absorbing process) or a table.
    process: the family (``GlauberProcess``, ``AbsorbingProcess``).
  """

  feature_names = ("targets",)

  def __init__(self, denoiser: Any = gin.REQUIRED,
               process: processes_base.Process = gin.REQUIRED) -> None:
    process.check_denoiser(denoiser)
    self.denoiser = denoiser
    self.process = process
    self.sampler_options_type = process.sampler_options_type
    self.inference_state_names = process.inference_state_names

  @property
  def name(self) -> str:
    return f"DiffusionModel({self.process.name})"

  @property
  def seq_len(self) -> int:
    return self.process.seq_len

  @property
  def vocabulary(self) -> vocabularies.Vocabulary:
    return self.denoiser.vocabulary

  # ---- Training ------------------------------------------------------------------------------

  def input_shapes(self, batch_size: int, feature_lengths: Mapping[str, int]
                   ) -> dict[str, tuple[int, ...]]:
    return targets_input_shapes(batch_size, feature_lengths, self.seq_len)

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple[int, ...]]
                            ) -> dict[str, Any]:
    return self.denoiser.init_variables(rng, input_shapes["targets"][0], self.seq_len)

  def is_added_param(self, path: tuple[str, ...]) -> bool:
    return self.denoiser.is_added_param(path)

  def init_model_state(self, params: Params, batch: Batch, rng: Array) -> Any:
    return self.process.init_state(self.denoiser, params, batch["targets"], rng)

  def model_state_shardings(self, abstract_model_state: Any, param_shardings: Any,
                            batch_sharding: Any, replicated: Any) -> Any:
    del replicated
    return self.process.state_shardings(abstract_model_state, param_shardings, batch_sharding)

  def training_start_report(self, params: Params, model_state: Any, batch: Batch, rng: Array
                            ) -> dict[str, float]:
    return self.process.start_report(self.denoiser, params, model_state, batch["targets"], rng)

  def prepare_batch(self, params: Params, model_state: Any, batch: Batch, step: Array,
                    rng: Array) -> tuple[Batch, Any]:
    """The process's forward corruption of the data rows."""
    return self.process.forward(self.denoiser, params, model_state, batch["targets"], step,
                                rng)

  def loss_fn(self, params: Params, batch: Batch, rng: Optional[Array]
              ) -> tuple[Array, dict[str, Array]]:
    return self.process.loss(self.denoiser, params, batch, rng)

  def num_flops_per_example(self, input_lengths: Mapping[str, int]) -> float:
    del input_lengths
    return self.process.training_flops(self.denoiser)

  # ---- Sampling, the bound, checkpoints ------------------------------------------------------

  def sampler_options(self, options: Mapping[str, Any]) -> sampling.SamplerOptions:
    return self.process.sampler_options(super().sampler_options(options))

  def draft_options(self, options: sampling.SamplerOptions) -> sampling.SamplerOptions:
    return self.process.draft_options(options)

  def _sample(self, params: Params, rng: Array, batch_size: int, prefix: Optional[Array],
              options: sampling.SamplerOptions, inference_state: Mapping[str, Params]
              ) -> sampling.Samples:
    return self.process.sample(self.denoiser, params, rng, batch_size, prefix, options,
                               inference_state)

  def likelihood_bound(self, params: Params, tokens: Array, rng: Array,
                       inference_state: Optional[Mapping[str, Params]] = None) -> Array:
    """The process's one-draw bound ``[B]`` (nats); ``inference_state`` entries missing (or
    None) fall back to the parameters."""
    return self._likelihood_bound(params, tokens, rng, dict(inference_state or {}))

  @functools.partial(jax.jit, static_argnames=("self",))
  def _likelihood_bound(self, params: Params, tokens: Array, rng: Array,
                        inference_state: Mapping[str, Params]) -> Array:
    return self.process.likelihood_bound(self.denoiser, nn.meta.unbox(params), tokens, rng,
                                         nn.meta.unbox(inference_state))

  def conditional_likelihood_bound(self, params: Params, tokens: Array, free: Array,
                                   rng: Array,
                                   inference_state: Optional[Mapping[str, Params]] = None
                                   ) -> Array:
    """The process's one-draw conditional bound ``[B]`` (nats); ``free`` broadcasts to
    ``tokens``' shape."""
    return self._conditional_likelihood_bound(params, tokens,
                                              jnp.broadcast_to(free, tokens.shape), rng,
                                              dict(inference_state or {}))

  @functools.partial(jax.jit, static_argnames=("self",))
  def _conditional_likelihood_bound(self, params: Params, tokens: Array, free: Array,
                                    rng: Array, inference_state: Mapping[str, Params]) -> Array:
    return self.process.conditional_likelihood_bound(
        self.denoiser, nn.meta.unbox(params), tokens, free, rng, nn.meta.unbox(inference_state))

  def predict_batch(self, params: Params, batch: Batch, rng: Array, **kwargs: Any) -> Array:
    """Samples ``[B, L]``; ``kwargs`` are sampler options."""
    return self.sample(params, rng, batch["targets"].shape[0], **kwargs).final

  @functools.partial(jax.jit, static_argnames=("self",))
  def score_batch(self, params: Params, batch: Batch) -> Array:
    return self.process.score(self.denoiser, nn.meta.unbox(params), batch["targets"])

  def checkpoint_metadata(self) -> dict[str, Any]:
    return self.process.metadata()

  def check_checkpoint_metadata(self, saved: Mapping[str, Any]) -> None:
    self.process.check_metadata(saved)


def count_params(params: Params) -> int:
  """Number of scalars in a (possibly boxed) parameter tree."""
  return sum(int(x.size) for x in jax.tree.leaves(nn.meta.unbox(params)))
