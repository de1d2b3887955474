"""The autoregressive baseline of issue 5: a causal language model, and the judge.

``CausalLMModel`` is a ``models.BaseModel`` on ``single_stack.SingleStack``, trained by the same
``Trainer`` and CLI as the UL2 and the diffusion models on the same ``lm`` tasks (batches
``{"targets": int32 [B, L]}``) with the task's vocabulary: next-token cross entropy with the
start id 0 shifted in (as T5 decoders do); sampling with a KV cache in one compiled loop;
``log_likelihood`` scores sequences, so a larger one serves as the judge of generative
perplexity. Its samples hold only text ids (no pad, EOS, sentinels or mode tokens), like the
diffusion samplers'. The masked-diffusion baseline (MDLM) is ``models.DiffusionModel`` with
``processes.absorbing_process.AbsorbingProcess``.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import (decoding, models, network, sampling, single_stack, throughput,
                         vocabularies)

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]

@gin.configurable
class CausalLMModel(models.BaseModel):
  """A GPT-style causal LM on ``targets``: the autoregressive baseline, and the judge.

  Attributes:
    network_config: the causal single stack's shape (``single_stack.SingleStack``: depth
      ``num_encoder_layers``, longest sequence ``max_encoder_length``); ``time_conditioning``
      must be off.
    vocabulary: the task's vocabulary.
    seq_len: ``L``, the training length and the length of samples.
    z_loss: T5X's auxiliary ``log(Z)^2`` coefficient.
  """

  feature_names = ("targets",)
  sampler_options_type = sampling.SamplerOptions

  def __init__(self, network_config: network.NetworkConfig = gin.REQUIRED,
               vocabulary: vocabularies.Vocabulary = gin.REQUIRED, seq_len: int = gin.REQUIRED,
               z_loss: float = 1e-4) -> None:
    if network_config.time_conditioning:
      raise ValueError("CausalLMModel has no diffusion time; set "
                       "NetworkConfig.time_conditioning = False.")
    network_config.check_vocabulary(vocabulary)
    if not 0 < seq_len <= network_config.max_encoder_length:
      raise ValueError(f"seq_len={seq_len} must be in [1, NetworkConfig.max_encoder_length="
                       f"{network_config.max_encoder_length}].")
    self.network_config = network_config
    self.module = single_stack.SingleStack(network_config, causal=True)
    self.vocabulary = vocabulary
    self.seq_len = seq_len
    self.allowed_tokens = np.logical_not(vocabulary.special_token_mask())
    self.z_loss = z_loss

  def input_shapes(self, batch_size: int, feature_lengths: Mapping[str, int]
                   ) -> dict[str, tuple[int, ...]]:
    return models.targets_input_shapes(batch_size, feature_lengths, self.seq_len)

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple[int, ...]]
                            ) -> dict[str, Any]:
    return self.module.init(rng, jnp.ones(input_shapes["targets"], jnp.int32))

  def predict_batch(self, params: Params, batch: Batch, rng: Array, **kwargs: Any) -> Array:
    """Samples ``[B, L]``; ``kwargs`` are sampler options (``sample``)."""
    return self.sample(params, rng, batch["targets"].shape[0], **kwargs).final

  def num_flops_per_example(self, input_lengths: Mapping[str, int]) -> float:
    """Matmuls of one stack of ``L`` tokens plus full ``L x L`` attention (PaLM's count)."""
    length = input_lengths["targets"]
    return throughput.single_stack_training_flops(self.network_config, length)

  def logits(self, params: Params, tokens: Array, rng: Optional[Array] = None) -> Array:
    """Next-token logits ``[B, L, V]`` for ``tokens [B, L]`` (start id shifted in); dropout on
    when ``rng`` is given."""
    inputs = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)),
                     constant_values=vocabularies.PAD_ID)  # The start token.
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
    """``log p(tokens)`` ``[B]`` in nats, for any length up to ``max_encoder_length``; generative
    perplexity of samples ``[B, L]`` is ``exp(-mean / L)``."""
    return jnp.sum(self.token_log_probs(params, tokens), axis=-1)

  def score_batch(self, params: Params, batch: Batch) -> Array:
    return self.log_likelihood(params, batch["targets"])

  def likelihood_bound(self, params: Params, tokens: Array, rng: Array,
                       inference_state: Optional[Mapping[str, Params]] = None) -> Array:
    """The exact ``log_likelihood`` (no bound needed; ``rng`` unused)."""
    del rng, inference_state
    return self.log_likelihood(params, tokens)

  @functools.partial(jax.jit, static_argnames=("self",))
  def conditional_log_likelihood(self, params: Params, tokens: Array, free: Array) -> Array:
    """``sum_{free i} log p(x_i | x_<i)`` ``[B]``: exactly ``log p(tokens[free] |
    tokens[~free])`` when every frozen position before the last free one precedes the
    first free one (a prompt, then the continuation)."""
    return jnp.sum(jnp.where(free, self.token_log_probs(params, tokens), 0.0), axis=-1)

  def conditional_likelihood_bound(self, params: Params, tokens: Array, free: Array,
                                   rng: Array,
                                   inference_state: Optional[Mapping[str, Params]] = None
                                   ) -> Array:
    """The exact ``conditional_log_likelihood`` (``rng`` unused)."""
    del rng, inference_state
    return self.conditional_log_likelihood(params, tokens, free)

  @functools.partial(jax.jit, static_argnames=("self", "batch_size", "temperature", "top_k",
                                               "top_p", "text_only"))
  def generate(self, params: Params, rng: Array, batch_size: int,
               prefix: Optional[Array] = None, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, text_only: bool = True) -> Array:
    """Samples ``[B, L]``, the first ``P`` equal to ``prefix [B, P]``, in one compiled program.

    The start token fills the KV cache, then ``decoding.sample_with_cache`` forces the prefix
    and draws position ``i`` with ``fold_in(rng, i)``, feeding each token back through the
    cache.
    ``text_only`` restricts the draws to text ids (as the Glauber sampler does); temperature 0
    is greedy.
    """
    params = nn.meta.unbox(params)
    prefix = sampling.checked_prefix(prefix, batch_size, self.seq_len)

    def feed(cache: Any, tokens: Array) -> tuple[Array, Any]:
      variables = {"params": params} if cache is None else {"params": params, "cache": cache}
      logits, updated = self.module.apply(variables, tokens[:, None], decode=True,
                                          mutable=["cache"])
      return logits[:, -1], updated["cache"]

    logits, cache = feed(None, jnp.full((batch_size,), vocabularies.PAD_ID, jnp.int32))
    return decoding.sample_with_cache(
        feed, logits, cache, jnp.pad(prefix, ((0, 0), (0, self.seq_len - prefix.shape[1]))),
        jnp.full((batch_size,), prefix.shape[1], jnp.int32), rng, temperature=temperature,
        top_k=top_k, top_p=top_p,
        allowed_tokens=jnp.asarray(self.allowed_tokens) if text_only else None)

  def _sample(self, params: Params, rng: Array, batch_size: int, prefix: Optional[Array],
              options: sampling.SamplerOptions, inference_state: Mapping[str, Params]
              ) -> sampling.Samples:
    """``generate`` with the options' temperature, top-k and top-p; no draft."""
    del inference_state
    return sampling.Samples(None, self.generate(params, rng, batch_size, prefix,
                                                options.temperature, options.top_k,
                                                options.top_p))
