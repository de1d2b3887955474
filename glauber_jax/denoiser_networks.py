"""The flax networks as the denoisers the processes call (``processes.base.Denoiser``).

- ``EncoderDecoderDenoiser``: the time-conditioned UL2 of the Glauber paper
  (``encoder_decoder.Transformer``). MASK-INFILL (``denoisers.mask_infill``): the encoder reads
  ``[NLU] x_{-k} [EOS]`` with site ``k`` replaced by the first sentinel, the decoder reads
  ``[start, sentinel_0]``, and its second output is ``p(x_k | x_{-k}, t)``; or, with
  ``NetworkConfig.infill_readout = "encoder"`` / ``"cloze"``, the infill head at the masked
  encoder position. CAUSAL-GEN (``denoisers.causal_gen``): the encoder reads
  ``[S2S] prefix [EOS]`` and the decoder writes the continuation with a KV cache.
- ``SingleStackDenoiser``: a bidirectional ``single_stack.SingleStack`` giving one logit vector
  per position (the absorbing process's SUBS denoiser).

Both know the task's vocabulary: ``allowed_tokens`` holds the ids text may hold (pad, unknown,
sentinels and mode tokens never; EOS only where it separates the documents packed into a
training sequence, ``text_includes_eos``), and every read-out gives the others logit -1e9.
Parameter paths are the networks' own, so checkpoints of either network load unchanged.
"""

from __future__ import annotations

from typing import Any, Optional

import gin
import jax
import jax.numpy as jnp

from glauber_jax import (decoding, denoisers, encoder_decoder, network, single_stack, throughput,
                         vocabularies)

Array = jax.Array
Params = Any

#: Parameters the DiT adds to the source UL2 network (initialised fresh when converting).
TIME_PARAM_NAMES = ("time_embedding", "modulation")
#: The logit of ids a sample may not hold (finite, so that log-softmax stays defined).
BLOCKED_LOGIT = -1e9


def _dropout(rng: Optional[Array]) -> dict[str, Any]:
  """``apply`` keyword arguments: dropout on with ``rng``, off without."""
  return {"enable_dropout": rng is not None,
          "rngs": None if rng is None else {"dropout": rng}}


@gin.configurable
class EncoderDecoderDenoiser:
  """The time-conditioned UL2: MASK-INFILL, the cloze read-out and CAUSAL-GEN.

  Attributes:
    network_config: the network; ``time_conditioning`` must be on.
    vocabulary: the task's vocabulary (special ids and the tokens text may hold).
    text_includes_eos: whether EOS is text (it separates packed documents); False for tasks of
      fixed-length sequences with no end, so no draw ever writes it
      (``@data.task_text_includes_eos()`` in ``gin/models/glauber.gin``).
  """

  def __init__(self, network_config: network.NetworkConfig = gin.REQUIRED,
               vocabulary: vocabularies.Vocabulary = gin.REQUIRED,
               text_includes_eos: bool = True) -> None:
    if not network_config.time_conditioning:
      raise ValueError("the diffusion denoiser needs NetworkConfig.time_conditioning = True.")
    network_config.check_vocabulary(vocabulary)
    self.network_config = network_config
    self.module = encoder_decoder.Transformer(network_config)
    self.vocabulary = vocabulary
    self.special_ids = denoisers.SpecialIds.from_vocabulary(vocabulary)
    self.allowed_tokens = vocabulary.text_token_mask(text_includes_eos)

  def init_variables(self, rng: Array, batch_size: int, seq_len: int) -> dict[str, Any]:
    return self.module.init(rng, jnp.ones((batch_size, seq_len + 2), jnp.int32),
                            jnp.ones((batch_size, 2), jnp.int32),
                            jnp.ones((batch_size,), jnp.float32))

  def is_added_param(self, path: tuple[str, ...]) -> bool:
    """True for the DiT's time parameters, absent from a source UL2 / Flan-T5 checkpoint."""
    return any(name in path for name in TIME_PARAM_NAMES)

  def training_flops(self, input_length: int, output_length: int) -> float:
    return throughput.encoder_decoder_training_flops(self.network_config, input_length,
                                                     output_length)

  def infill_logits(self, params: Params, tokens: Array, sites: Array, times: Array,
                    dropout_rng: Optional[Array] = None) -> Array:
    """Float32 MASK-INFILL logits ``[B, V]`` of ``tokens [B, L]`` at ``sites [B]`` and
    ``times [B]``; ids outside ``allowed_tokens`` get ``BLOCKED_LOGIT``.

    Read out by the decoder (``[start, sentinel_0]``, position 1) or, with
    ``NetworkConfig.infill_readout = "encoder"`` or ``"cloze"``, by the infill head at the
    masked encoder position ``site + 1`` (after the mode token).
    """
    features = denoisers.mask_infill(tokens, sites, self.special_ids, xp=jnp)
    if self.network_config.infill_readout in ("encoder", "cloze"):
      logits = self.module.apply(
          {"params": params}, features["encoder_input_tokens"], sites.astype(jnp.int32) + 1,
          times.astype(jnp.float32), method=encoder_decoder.Transformer.infill,
          **_dropout(dropout_rng))
    else:
      logits = self.module.apply(
          {"params": params}, features["encoder_input_tokens"],
          features["decoder_input_tokens"], times.astype(jnp.float32),
          **_dropout(dropout_rng))[:, 1]
    return jnp.where(self.allowed_tokens, logits.astype(jnp.float32), BLOCKED_LOGIT)

  def cloze_logits(self, params: Params, tokens: Array, times: Array,
                   dropout_rng: Optional[Array] = None) -> Array:
    """Float32 logits ``[B, L, V]`` of the cloze read-out at every site of ``tokens [B, L]`` at
    ``times [B]``. Site ``k``'s never see ``tokens[:, k]``, so they equal
    ``infill_logits(tokens, k, times)`` (``NetworkConfig.infill_readout = "cloze"`` only)."""
    if self.network_config.infill_readout != "cloze":
      raise ValueError("cloze_logits needs NetworkConfig.infill_readout = 'cloze', got "
                       f"{self.network_config.infill_readout!r}.")
    encoder = denoisers.infill_context(tokens, self.special_ids, xp=jnp)
    logits = self.module.apply({"params": params}, encoder, times.astype(jnp.float32),
                               method=encoder_decoder.Transformer.cloze,
                               **_dropout(dropout_rng))[:, 1:-1]
    return jnp.where(self.allowed_tokens, logits.astype(jnp.float32), BLOCKED_LOGIT)

  def causal_log_prob(self, params: Params, tokens: Array, times: Array,
                      dropout_rng: Optional[Array] = None) -> Array:
    """Teacher-forced CAUSAL-GEN log-likelihood ``[B]`` of ``tokens [B, L]`` at ``times``."""
    return jnp.sum(self.causal_token_log_probs(params, tokens, times, dropout_rng), axis=-1)

  def causal_token_log_probs(self, params: Params, tokens: Array, times: Array,
                             dropout_rng: Optional[Array] = None) -> Array:
    """CAUSAL-GEN's ``log p(x_i | x_<i)`` ``[B, L]`` of ``tokens [B, L]`` at ``times``."""
    batch = tokens.shape[0]
    encoder = denoisers.causal_gen(jnp.zeros((batch, 0), jnp.int32), self.special_ids,
                                   xp=jnp)["encoder_input_tokens"]
    decoder_inputs = jnp.concatenate([jnp.zeros((batch, 1), tokens.dtype), tokens[:, :-1]], 1)
    logits = self.module.apply({"params": params}, encoder, decoder_inputs,
                               times.astype(jnp.float32), **_dropout(dropout_rng))
    logits = jnp.where(self.allowed_tokens, logits.astype(jnp.float32), -jnp.inf)
    log_probs = jax.nn.log_softmax(logits)
    return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]

  def causal_gen(self, params: Params, rng: Array, prefix: Array, seq_len: int, times: Array,
                 options: Any) -> Array:
    """CAUSAL-GEN with the KV cache: ``[B, L]`` tokens, the first ``P`` equal to ``prefix
    [B, P]``, drawn at ``times [B]`` with the options' ``temperature``/``top_k``/``top_p``."""
    encoder = denoisers.causal_gen(prefix, self.special_ids, xp=jnp)["encoder_input_tokens"]
    continuation = decoding.decode(
        self.module, params, encoder, rng, max_decode_length=seq_len - prefix.shape[1],
        time=times.astype(jnp.float32), temperature=options.temperature, top_k=options.top_k,
        top_p=options.top_p, eos_id=None, allowed_tokens=jnp.asarray(self.allowed_tokens))
    return jnp.concatenate([prefix, continuation], axis=1)


@gin.configurable
class SingleStackDenoiser:
  """A bidirectional single stack: one logit vector per position of the noisy sequence.

  Attributes:
    network_config: the bidirectional single stack's shape (``single_stack.SingleStack``: depth
      ``num_encoder_layers``, longest sequence ``max_encoder_length``). ``time_conditioning`` is
      optional (MDLM finds it unnecessary with SUBS and a log-linear schedule: the mask count
      reveals ``t``); with ``time_per_token`` the times may be ``[B, L]``, and with
      ``weighted_mask_embedding`` the calls take the eq. 12 weights ``mask_weight [B, L]`` of
      the vocabulary's MASK (the gamma-hybrid's options).
    vocabulary: the task's vocabulary.
    text_includes_eos: whether EOS is text (it separates packed documents, so the processes
      corrupt, predict and draw it as any token); False for tasks of fixed-length sequences
      with no end (``@data.task_text_includes_eos()`` in ``gin/models/{mdlm,hybrid}.gin``).
  """

  def __init__(self, network_config: network.NetworkConfig = gin.REQUIRED,
               vocabulary: vocabularies.Vocabulary = gin.REQUIRED,
               text_includes_eos: bool = False) -> None:
    network_config.check_vocabulary(vocabulary)
    self.network_config = network_config
    self.vocabulary = vocabulary
    self.special_ids = denoisers.SpecialIds.from_vocabulary(vocabulary)
    self.module = single_stack.SingleStack(network_config, causal=False,
                                           mask_id=self.special_ids.mask)
    self.allowed_tokens = vocabulary.text_token_mask(text_includes_eos)

  @property
  def max_length(self) -> int:
    return self.network_config.max_encoder_length

  def init_variables(self, rng: Array, batch_size: int, seq_len: int) -> dict[str, Any]:
    time = (jnp.ones((batch_size,), jnp.float32) if self.network_config.time_conditioning
            else None)
    mask_weight = (jnp.zeros((batch_size, seq_len), jnp.float32)
                   if self.network_config.weighted_mask_embedding else None)
    return self.module.init(rng, jnp.ones((batch_size, seq_len), jnp.int32), time,
                            mask_weight=mask_weight)

  def training_flops(self, input_length: int, output_length: int) -> float:
    """Matmuls of one stack plus full attention (PaLM's count, as for the causal LM)."""
    del output_length  # One stack: the outputs are the inputs' positions.
    return throughput.single_stack_training_flops(self.network_config, input_length)

  def is_added_param(self, path: tuple[str, ...]) -> bool:
    """False: the single stack adds no parameter to a checkpoint of its own shape."""
    del path
    return False

  def logits(self, params: Params, noisy: Array, times: Array,
             dropout_rng: Optional[Array] = None, mask_weight: Optional[Array] = None
             ) -> Array:
    """Float32 logits ``[B, L, V]`` of ``noisy [B, L]`` at ``times [B]`` (or ``[B, L]`` with
    ``NetworkConfig.time_per_token``), with the eq. 12 weights ``mask_weight [B, L]`` exactly
    when ``NetworkConfig.weighted_mask_embedding``."""
    logits = self.module.apply({"params": params}, noisy,
                               times if self.network_config.time_conditioning else None,
                               mask_weight=mask_weight, **_dropout(dropout_rng))
    return logits.astype(jnp.float32)

  def masked_logits(self, params: Params, noisy: Array, attention_mask: Array,
                    positions: Optional[Array] = None,
                    dropout_rng: Optional[Array] = None) -> Array:
    """Float32 logits ``[B, L, V]`` under ``attention_mask`` (bool ``[L, L]`` or ``[B, L, L]``,
    a hyperschedule's mask; no time input), at ``positions [L]`` (default ``0 .. L-1``; the
    ``[y; y]`` training layout repeats them)."""
    return self.module.apply({"params": params}, noisy, None, attention_mask=attention_mask,
                             positions=positions,
                             **_dropout(dropout_rng)).astype(jnp.float32)

  def block_logits(self, params: Params, cache: Optional[dict[str, Any]], block: Array,
                   block_mask: Optional[Array] = None) -> tuple[Array, dict[str, Any]]:
    """Block decoding with the KV cache (no time input): float32 logits ``[B, w, V]`` of
    ``block [B, w]`` placed after the cached positions, attending to them and to each other
    (``block_mask [w, w]``: to the block's tokens it allows), and the cache with the block
    appended (keep it to commit the block, drop it to evaluate the block again). ``cache``
    None: an empty one."""
    variables = {"params": params} if cache is None else {"params": params, "cache": cache}
    logits, mutated = self.module.apply(variables, block, None, decode=True, block_decode=True,
                                        block_mask=block_mask, mutable=["cache"])
    return logits.astype(jnp.float32), mutated["cache"]
