"""The baselines of issue 5: a causal language model and masked diffusion (MDLM).

Both are ``models.BaseModel`` subclasses on ``single_stack.SingleStack``, trained by the same
``Trainer`` and CLI as the UL2 and Glauber models on the same ``lm`` tasks (batches
``{"targets": int32 [B, L]}``) with the task's vocabulary:

- ``CausalLMModel``: next-token cross entropy with the start id 0 shifted in (as T5 decoders
  do); sampling with a KV cache in one compiled loop; ``log_likelihood`` scores sequences, so a
  larger one serves as the judge of generative perplexity.
- ``MDLMModel``: the masked diffusion language model of Sahoo et al. 2024 on the absorbing
  process of ``processes/absorbing.py`` (forward masking, SUBS read-out, NELBO, ancestral
  sampler, as pure array functions over any ``logits_fn``), whose absorbing state ``m`` is the
  vocabulary's ``sentinel_id(0)`` (``denoisers.SpecialIds.mask``).

Every draw goes through ``sampling.sample_categorical``; samples of both models hold only text
ids (no pad, EOS, sentinels or mode tokens), like the Glauber sampler's.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import denoisers, models, sampling, single_stack, throughput, vocabularies
from glauber_jax.processes import absorbing

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]

START_ID = 0  # The pad id, also the decoder start token (T5's convention).


# ---- Shared plumbing ---------------------------------------------------------------------------


def _prefix_or_empty(prefix: Optional[Array], batch_size: int, seq_len: int) -> Array:
  """``prefix [B, P]`` as int32 (``[B, 0]`` when None), checked against the batch and ``L``."""
  if prefix is None:
    return jnp.zeros((batch_size, 0), jnp.int32)
  if prefix.ndim != 2 or prefix.shape[0] != batch_size:
    raise ValueError(f"prefix must be [batch_size={batch_size}, P], got {prefix.shape}.")
  if prefix.shape[1] >= seq_len:
    raise ValueError(f"prefix length {prefix.shape[1]} leaves nothing to generate (L = "
                     f"{seq_len}).")
  return prefix.astype(jnp.int32)


class _SingleStackModel(models.BaseModel):
  """What both baselines share: the network, the vocabulary checks, shapes, FLOPs."""

  feature_names = ("targets",)

  def __init__(self, config: single_stack.SingleStackConfig,
               vocabulary: vocabularies.Vocabulary, seq_len: int) -> None:
    if config.vocab_size != vocabulary.vocab_size:
      raise ValueError(f"SingleStackConfig.vocab_size={config.vocab_size} but the task's "
                       f"vocabulary has {vocabulary.vocab_size} ids.")
    if not 0 < seq_len <= config.max_length:
      raise ValueError(f"seq_len={seq_len} must be in [1, SingleStackConfig.max_length="
                       f"{config.max_length}].")
    self.config = config
    self.module = single_stack.SingleStack(config)
    self.vocabulary = vocabulary
    self.seq_len = seq_len
    self.allowed_tokens = np.logical_not(vocabulary.special_token_mask())

  def input_shapes(self, batch_size: int, feature_lengths: Mapping[str, int]
                   ) -> dict[str, tuple[int, ...]]:
    if dict(feature_lengths) != {"targets": self.seq_len}:
      raise ValueError(f"TASK_FEATURE_LENGTHS must be {{'targets': {self.seq_len}}} (the "
                       f"model's seq_len), got {dict(feature_lengths)}.")
    return {"targets": (batch_size, self.seq_len)}

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple[int, ...]]
                            ) -> dict[str, Any]:
    tokens = jnp.ones(input_shapes["targets"], jnp.int32)
    time = (jnp.ones(tokens.shape[:1], jnp.float32) if self.config.time_conditioning
            else None)
    return self.module.init(rng, tokens, time)

  def predict_batch(self, params: Params, batch: Batch, rng: Array, **kwargs: Any) -> Array:
    """Samples ``[B, L]``; ``kwargs`` are sampler options (``sample``)."""
    return self.sample(params, rng, batch["targets"].shape[0], **kwargs).final

  def num_flops_per_example(self, input_lengths: Mapping[str, int]) -> float:
    """Matmuls of one stack of ``L`` tokens plus full ``L x L`` attention (PaLM's count)."""
    length = input_lengths["targets"]
    return throughput.encoder_decoder_training_flops(self.config.network_config, length,
                                                     length)


# ---- The causal language model -----------------------------------------------------------------


@gin.configurable
class CausalLMModel(_SingleStackModel):
  """A GPT-style causal LM on ``targets``: the autoregressive baseline, and the judge.

  Attributes:
    config: the network; ``causal`` must be on and ``time_conditioning`` off.
    vocabulary: the task's vocabulary.
    seq_len: ``L``, the training length and the length of samples.
    z_loss: T5X's auxiliary ``log(Z)^2`` coefficient.
  """

  sampler_options_type = models.SamplerOptions

  def __init__(self, config: single_stack.SingleStackConfig = gin.REQUIRED,
               vocabulary: vocabularies.Vocabulary = gin.REQUIRED, seq_len: int = gin.REQUIRED,
               z_loss: float = 1e-4) -> None:
    if not config.causal:
      raise ValueError("CausalLMModel needs SingleStackConfig.causal = True.")
    if config.time_conditioning:
      raise ValueError("CausalLMModel has no diffusion time; set "
                       "SingleStackConfig.time_conditioning = False.")
    super().__init__(config, vocabulary, seq_len)
    self.z_loss = z_loss

  def logits(self, params: Params, tokens: Array, rng: Optional[Array] = None) -> Array:
    """Next-token logits ``[B, L, V]`` for ``tokens [B, L]`` (start id shifted in); dropout on
    when ``rng`` is given."""
    inputs = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=START_ID)
    rngs = {"dropout": rng} if rng is not None else None
    return self.module.apply({"params": params}, inputs, enable_dropout=rng is not None,
                             rngs=rngs)

  def loss_fn(self, params: Params, batch: Batch, rng: Optional[Array]
              ) -> tuple[Array, dict[str, Array]]:
    targets = batch["targets"]
    sums = models.cross_entropy_sums(self.logits(params, targets, rng), targets,
                                     jnp.ones(targets.shape, jnp.float32), self.z_loss)
    return sums["loss_sum"], sums

  def token_log_probs(self, params: Params, tokens: Array) -> Array:
    """``log p(x_i | x_<i)`` ``[B, L]`` float32, over the whole vocabulary."""
    log_probs = jax.nn.log_softmax(self.logits(nn.meta.unbox(params), tokens), axis=-1)
    return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]

  @functools.partial(jax.jit, static_argnames=("self",))
  def log_likelihood(self, params: Params, tokens: Array) -> Array:
    """``log p(tokens)`` ``[B]`` in nats, for any length up to ``max_length``; generative
    perplexity of samples ``[B, L]`` is ``exp(-mean / L)``."""
    return jnp.sum(self.token_log_probs(params, tokens), axis=-1)

  def score_batch(self, params: Params, batch: Batch) -> Array:
    return self.log_likelihood(params, batch["targets"])

  def likelihood_bound(self, params: Params, tokens: Array, rng: Array,
                       inference_state: Optional[Mapping[str, Params]] = None) -> Array:
    """The exact ``log_likelihood`` (no bound needed; ``rng`` unused)."""
    del rng, inference_state
    return self.log_likelihood(params, tokens)

  @functools.partial(jax.jit, static_argnames=("self", "batch_size", "temperature", "top_k",
                                               "top_p", "text_only"))
  def generate(self, params: Params, rng: Array, batch_size: int,
               prefix: Optional[Array] = None, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, text_only: bool = True) -> Array:
    """Samples ``[B, L]``, the first ``P`` equal to ``prefix [B, P]``, in one compiled program.

    One cache-filling call feeds the start token and the prefix, then a ``fori_loop`` draws
    position ``i`` with ``fold_in(rng, i)`` and feeds it back through the KV cache.
    ``text_only`` restricts the draws to text ids (as the Glauber sampler does); temperature 0
    is greedy.
    """
    params = nn.meta.unbox(params)
    prefix = _prefix_or_empty(prefix, batch_size, self.seq_len)
    prefix_len = prefix.shape[1]
    allowed = jnp.asarray(self.allowed_tokens) if text_only else None

    def feed(cache: Any, inputs: Array) -> tuple[Array, Any]:
      variables = {"params": params} if cache is None else {"params": params, "cache": cache}
      logits, updated = self.module.apply(variables, inputs, decode=True, mutable=["cache"])
      return logits[:, -1], updated["cache"]

    def choose(position: Any, logits: Array) -> Array:
      if allowed is not None:
        logits = jnp.where(allowed, logits, -jnp.inf)
      return sampling.sample_categorical(jax.random.fold_in(rng, position), logits,
                                         temperature, top_k, top_p)

    def body(position: Array, carry: tuple[Array, Array, Any]) -> tuple[Array, Array, Any]:
      tokens, logits, cache = carry
      token = choose(position, logits)
      tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, position, axis=1)
      logits, cache = feed(cache, token[:, None])
      return tokens, logits, cache

    start = jnp.full((batch_size, 1), START_ID, jnp.int32)
    logits, cache = feed(None, jnp.concatenate([start, prefix], axis=1))
    tokens = jnp.pad(prefix, ((0, 0), (0, self.seq_len - prefix_len)))
    tokens, logits, _ = jax.lax.fori_loop(prefix_len, self.seq_len - 1, body,
                                          (tokens, logits, cache))
    return tokens.at[:, -1].set(choose(self.seq_len - 1, logits))

  def _sample(self, params: Params, rng: Array, batch_size: int, prefix: Optional[Array],
              options: models.SamplerOptions) -> models.Samples:
    """``generate`` with the options' temperature, top-k and top-p; no draft."""
    return models.Samples(None, self.generate(params, rng, batch_size, prefix,
                                              options.temperature, options.top_k, options.top_p))


# ---- Masked diffusion --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MDLMSamplerOptions(models.SamplerOptions):
  """The ancestral sampler's settings.

  Attributes:
    num_steps: ancestral steps (None: ``MDLMModel.num_steps``).
  """

  num_steps: Optional[int] = None


@gin.configurable
class MDLMModel(_SingleStackModel):
  """Masked diffusion (MDLM) with a bidirectional single stack as the SUBS denoiser.

  Attributes:
    config: the network; ``causal`` must be off. ``time_conditioning`` is optional (MDLM
      finds it unnecessary with SUBS and a log-linear schedule: the mask count reveals ``t``).
    vocabulary: the task's vocabulary; its ``sentinel_id(0)`` is the mask.
    seq_len: ``L``.
    num_steps: ``N``, ancestral sampling steps.
    time_epsilon: training draws ``t`` from ``(time_epsilon, 1]`` (MDLM's ``sampling_eps``,
      keeps ``1/t`` bounded); the bound (``score_batch``, ``likelihood_bound``) uses ``(0, 1]``.
    num_score_samples: Monte Carlo draws of ``t`` averaged per sequence by ``score_batch``.
  """

  sampler_options_type = MDLMSamplerOptions

  def __init__(self, config: single_stack.SingleStackConfig = gin.REQUIRED,
               vocabulary: vocabularies.Vocabulary = gin.REQUIRED, seq_len: int = gin.REQUIRED,
               num_steps: int = 128, time_epsilon: float = 1e-3,
               num_score_samples: int = 1) -> None:
    if config.causal:
      raise ValueError("MDLMModel needs a bidirectional denoiser: SingleStackConfig.causal = "
                       "False.")
    if num_steps < 1 or num_score_samples < 1:
      raise ValueError(f"num_steps ({num_steps}) and num_score_samples ({num_score_samples}) "
                       "must be positive.")
    if not 0.0 <= time_epsilon < 1.0:
      raise ValueError(f"time_epsilon must be in [0, 1), got {time_epsilon}.")
    super().__init__(config, vocabulary, seq_len)
    self.mask_id = denoisers.SpecialIds.from_vocabulary(vocabulary).mask
    self.num_steps = num_steps
    self.time_epsilon = time_epsilon
    self.num_score_samples = num_score_samples

  def logits(self, params: Params, noisy: Array, times: Array,
             dropout_rng: Optional[Array] = None) -> Array:
    """Denoiser logits ``[B, L, V]`` float32 of ``noisy [B, L]`` at ``times [B]``."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply({"params": params}, noisy,
                             times if self.config.time_conditioning else None,
                             enable_dropout=dropout_rng is not None, rngs=rngs)

  def loss_fn(self, params: Params, batch: Batch, rng: Optional[Array]
              ) -> tuple[Array, dict[str, Array]]:
    """Summed NELBO draws (``t`` from ``(time_epsilon, 1]``); ``weight_sum`` counts tokens, so
    the logged ``loss`` is the bound in nats per token. ``rng`` None: fixed noise, no dropout.

    Also logged: ``masked`` (fraction of tokens masked) and ``masked_correct`` (fraction of
    tokens masked and predicted right; their ratio is the accuracy on masked tokens).
    """
    tokens = batch["targets"]
    time_rng, mask_rng, dropout_rng = jax.random.split(
        rng if rng is not None else jax.random.PRNGKey(0), 3)
    times = absorbing.stratified_times(time_rng, tokens.shape[0], self.time_epsilon)
    noisy, masked = absorbing.forward_mask(mask_rng, tokens, times, self.mask_id)
    log_probs = absorbing.subs_log_probs(
        self.logits(params, noisy, times, dropout_rng if rng is not None else None),
        self.mask_id)
    loss = jnp.sum(absorbing.nelbo_terms(log_probs, tokens, masked, times))
    correct = (jnp.argmax(log_probs, axis=-1) == tokens) & masked
    return loss, {
        "loss_sum": loss,
        "masked_sum": jnp.sum(masked.astype(jnp.float32)),
        "masked_correct_sum": jnp.sum(correct.astype(jnp.float32)),
        "weight_sum": jnp.asarray(tokens.size, jnp.float32),
    }

  @functools.partial(jax.jit, static_argnames=("self", "num_samples"))
  def elbo(self, params: Params, tokens: Array, rng: Array, num_samples: int = 1) -> Array:
    """The ELBO ``[B]`` (nats, ``<= log p_theta(x)``) of ``tokens [B, L]``, averaged over
    ``num_samples`` draws of ``(t, z_t)``; ``exp(-mean / L)`` bounds the perplexity."""
    logits_fn = functools.partial(self.logits, nn.meta.unbox(params))
    draws = jax.lax.map(lambda key: absorbing.nelbo(key, tokens, logits_fn, self.mask_id),
                        jax.random.split(rng, num_samples))
    return -jnp.mean(draws, axis=0)

  def likelihood_bound(self, params: Params, tokens: Array, rng: Array,
                       inference_state: Optional[Mapping[str, Params]] = None) -> Array:
    """The one-draw ``elbo`` (MDLM needs no inference state)."""
    del inference_state
    return self.elbo(params, tokens, rng)

  def score_batch(self, params: Params, batch: Batch) -> Array:
    """The ELBO with ``num_score_samples`` draws (a lower bound on the log-likelihood)."""
    return self.elbo(params, batch["targets"], jax.random.PRNGKey(0), self.num_score_samples)

  @functools.partial(jax.jit, static_argnames=("self", "batch_size", "num_steps",
                                               "temperature", "top_k", "top_p"))
  def generate(self, params: Params, rng: Array, batch_size: int,
               prefix: Optional[Array] = None, num_steps: Optional[int] = None,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Ancestral samples ``[B, L]`` of text ids in one compiled ``lax.scan`` of ``num_steps``
    (default ``N``) steps; the first ``P`` tokens equal ``prefix [B, P]`` and are never
    resampled."""
    params = nn.meta.unbox(params)
    prefix = _prefix_or_empty(prefix, batch_size, self.seq_len)
    initial = jnp.pad(prefix, ((0, 0), (0, self.seq_len - prefix.shape[1])),
                      constant_values=self.mask_id)
    return absorbing.ancestral_sample(rng, functools.partial(self.logits, params), initial,
                                      num_steps or self.num_steps, self.mask_id,
                                      jnp.asarray(self.allowed_tokens), temperature, top_k,
                                      top_p)

  def sampler_options(self, options: Mapping[str, Any]) -> MDLMSamplerOptions:
    """The options with ``num_steps`` resolved (default: the configured ``N``) and checked."""
    resolved = super().sampler_options(options)
    num_steps = self.num_steps if resolved.num_steps is None else resolved.num_steps
    if num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    return dataclasses.replace(resolved, num_steps=num_steps)

  def _sample(self, params: Params, rng: Array, batch_size: int, prefix: Optional[Array],
              options: MDLMSamplerOptions) -> models.Samples:
    """``generate`` with the options' steps, temperature, top-k and top-p; no draft."""
    return models.Samples(None, self.generate(params, rng, batch_size, prefix, options.num_steps,
                                              options.temperature, options.top_k, options.top_p))

  def checkpoint_metadata(self) -> dict[str, Any]:
    return {"mask_id": self.mask_id, "num_steps": self.num_steps}
