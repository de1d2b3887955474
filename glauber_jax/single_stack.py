"""A single-stack (decoder-only) transformer built from ``network``'s blocks.

The baselines of ``glauber_jax.baselines`` share this network:

- ``causal=True``: a GPT-style causal language model. ``decode=True`` appends the given tokens
  to a KV cache (``network.MultiHeadAttention``'s, the ``cache`` collection) and returns their
  next-token logits, so sampling costs one position per step.
- ``causal=False``: full bidirectional self-attention, the denoiser of masked diffusion (MDLM).

The blocks are the T5 v1.1 / UL2 ones (RMSNorm, unscaled attention, gated-GELU MLP, no biases,
untied float32 output head), with RoPE or T5's relative bias, and optionally the DiT time
conditioning of ``network`` (sinusoid, MLP, zero-initialised adaLN modulation). There is no
padding mask: language-model chunks are dense, and the causal model's start token is the pad id
0, which must stay visible.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from glauber_jax import errors, network

Array = jax.Array


class SingleStack(nn.Module):
  """Token embedding, blocks, final norm, untied float32 logits ``[B, T, V]``.

  ``config`` is a ``network.NetworkConfig`` read as one stack of encoder blocks: the depth is
  ``num_encoder_layers``, the longest input (and the KV-cache length) ``max_encoder_length``;
  ``num_decoder_layers``, ``max_decoder_length`` and ``infill_readout`` are unused. In gin, the
  single stack's config is the ``single_stack`` scope's (``single_stack/network.NetworkConfig``,
  ``gin/models/causal_lm.gin``), so one run can shape it apart from an encoder-decoder's
  (unscoped ``network.NetworkConfig`` bindings still reach it where the scope sets nothing).
  ``causal`` picks the attention pattern (the model using the stack sets it).

  ``time`` is a ``[B]`` (or scalar) array of diffusion times when ``config.time_conditioning``
  is set, and must be None otherwise. ``decode=True`` (the ``cache`` collection mutable) appends
  ``tokens`` at the cache position: the first such call creates the cache, and may feed several
  tokens at once (a prefix). A causal stack attends causally; a bidirectional one (only with
  ``block_decode=True``) decodes blocks: the new tokens attend to everything cached and to each
  other (block-causal KV caching of the hybrid processes' block hyperschedules; calling it
  without keeping the mutated cache evaluates a block without committing it).
  ``attention_mask`` (bidirectional, not decoding): bool ``[L, L]`` or ``[B, L, L]``, True where
  a query may attend to a key (a hyperschedule's mask). ``positions`` (not decoding): int
  ``[L]`` positions of the tokens in place of ``0 .. L-1`` (the hybrid processes' ``[y; y]``
  training layout repeats ``0 .. d-1``); with them ``L`` may exceed ``max_encoder_length`` (no
  cache is written). ``block_mask`` (block decoding): bool ``[w, w]`` or ``[B, w, w]``, which of
  the new tokens each new token attends to (besides everything cached; default all): the slide
  hyperschedules' cached decoding mixes settled (causal) and active rows in one block.

  With ``config.time_per_token``, ``time`` may also be ``[B, L]``, one time per token (per-token
  adaLN). With ``config.weighted_mask_embedding``, ``mask_weight [B, L]`` is required and the
  token embeddings become ``(1 - w) f(x) + w f(mask_id)`` (HDLM eq. 12); ``mask_id`` is then
  the vocabulary's MASK id.
  """

  config: network.NetworkConfig
  causal: bool
  mask_id: Optional[int] = None

  def __post_init__(self) -> None:
    if self.config.num_encoder_layers <= 0:
      raise ValueError("a single stack needs NetworkConfig.num_encoder_layers (its depth) "
                       f"positive, got {self.config.num_encoder_layers}.")
    if self.config.weighted_mask_embedding and self.mask_id is None:
      raise ValueError("NetworkConfig.weighted_mask_embedding needs SingleStack.mask_id.")
    super().__post_init__()

  @nn.compact
  def __call__(self, tokens: Array, time: Optional[Array] = None, enable_dropout: bool = False,
               decode: bool = False, attention_mask: Optional[Array] = None,
               block_decode: bool = False, positions: Optional[Array] = None,
               block_mask: Optional[Array] = None, mask_weight: Optional[Array] = None
               ) -> Array:
    cfg = self.config
    max_length = cfg.max_encoder_length
    batch, length = tokens.shape
    deterministic = not enable_dropout
    if positions is not None and decode:
      raise ValueError("positions are for the non-decoding forward.")
    if block_mask is not None and not (decode and block_decode):
      raise ValueError("block_mask is for bidirectional block decoding.")
    if length > max_length and positions is None:
      raise errors.ConfigError(f"tokens have length {length}, longer than the model's maximum "
                       f"{max_length} (NetworkConfig.max_encoder_length).")
    if decode:
      if not self.causal and not block_decode:
        raise ValueError("decode=True needs a causal single stack (SingleStack.causal), or "
                         "block_decode=True for a bidirectional one.")
      index = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      start = index.value
      index.value = start + length
      positions = start + jnp.arange(length)
      key_positions = jnp.arange(max_length)
      # Causal: the attention layer builds the causal cache mask. Bidirectional (block
      # decoding): the new tokens see everything cached and each other.
      mask = None if self.causal else (key_positions < start + length)[None, None, None, :]
      if block_mask is not None:
        offset = jnp.clip(key_positions - start, 0, length - 1)
        within = jnp.take(jnp.broadcast_to(block_mask, (batch, length, length)), offset, axis=-1)
        mask = ((key_positions < start) | ((key_positions < start + length) & within))[:, None]
    else:
      positions = jnp.arange(length) if positions is None else positions
      key_positions = positions
      mask = nn.make_causal_mask(tokens, dtype=jnp.bool_) if self.causal else None
      if attention_mask is not None:
        if self.causal:
          raise ValueError("attention_mask is for bidirectional single stacks.")
        mask = jnp.broadcast_to(attention_mask, (batch, length, length))[:, None]
    time_vector = self._time_vector(time, batch, length)
    embed = nn.Embed(num_embeddings=cfg.vocab_size, features=cfg.d_model,
                     dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                     embedding_init=network.param_init(
                         nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
                     name="token_embedder")
    x = embed(tokens).astype(cfg.compute_dtype)
    if cfg.weighted_mask_embedding != (mask_weight is not None):
      raise ValueError("mask_weight ([B, L]) is given exactly when "
                       "NetworkConfig.weighted_mask_embedding is set.")
    if mask_weight is not None:
      x = self._weighted_mask_embedding(x, embed(jnp.asarray(self.mask_id)), mask_weight)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = network.constrain(
        x, ("activation_batch", "activation_length", "activation_embed"))
    bias = (network.RelativePositionBias(cfg, bidirectional=not self.causal,
                                         name="relative_position_bias")(positions, key_positions)
            if cfg.position_scheme == "relative" else None)
    layer_cls = network.maybe_remat(network.EncoderLayer, cfg.remat_policy)
    for i in range(cfg.num_encoder_layers):
      x = layer_cls(cfg, deterministic, decode, name=f"layers_{i}")(x, bias, mask, positions,
                                                                     time_vector)
    x = network.RMSNorm(cfg, name="final_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    logits = nn.Dense(cfg.vocab_size, use_bias=False, name="logits_dense",
                      dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                      kernel_init=network.param_init(
                          nn.initializers.normal(stddev=cfg.d_model ** -0.5),
                          ("embed", "vocab")))(x)
    return network.constrain(
        logits.astype(jnp.float32), ("activation_batch", "activation_length", "activation_vocab"))

  def _weighted_mask_embedding(self, embedded: Array, mask_embedding: Array, weight: Array
                               ) -> Array:
    """Eq. 12: ``(1 - w) f(x) + w f(MASK)`` per token (float32 mix, ``w [B, L]``)."""
    weight = jnp.broadcast_to(jnp.asarray(weight, jnp.float32), embedded.shape[:2])[..., None]
    mixed = (1 - weight) * embedded.astype(jnp.float32) + weight * mask_embedding.astype(
        jnp.float32)
    return mixed.astype(self.config.compute_dtype)

  def _time_vector(self, time: Optional[Array], batch: int, length: int) -> Optional[Array]:
    time = network.checked_time(self.config, time, batch, length)
    return (None if time is None
            else network.TimeEmbedding(self.config, name="time_embedding")(time))
