"""The T5 v1.1 / UL2 encoder-decoder in flax.linen, with optional time conditioning.

The config (``network.NetworkConfig``) and the blocks live in ``glauber_jax.network``, shared
with the single stack. One network serves every encoder-decoder model family of the library:

- ``time_conditioning=False``: the T5 v1.1 / Flan-T5 architecture. With
  ``position_scheme="relative"`` the parameters load from Flan-T5 checkpoints
  (``glauber_jax.hf_import``).
- ``time_conditioning=True``: the "DiT UL2" of the Glauber paper, every sublayer of every block
  modulated by the diffusion time (``network``'s module docstring).

MASK-INFILL (one masked site) is read out in one of three ways (``infill_readout``):

- ``"decoder"``: T5's span format, the decoder reads ``[start, sentinel_0]`` and predicts the
  span; this is what a pretrained Flan-T5 can do.
- ``"encoder"``: a head on the encoder's output at the masked site (``Transformer.infill``), as
  a masked language model reads out. The decoder route must learn to find its sentinel in the
  encoder before the context can help, and a tiny UL2 trained for minutes never does (its
  infill stays at the unigram level, ``docs/results.md``); the encoder route learns the same
  conditional within a few hundred steps, and costs one encoder pass and no decoder.
- ``"cloze"``: the encoder run twice more with directional masks, a forward pass (each position
  sees itself and what precedes it) and a backward one (itself and what follows); site ``k``'s
  logits come from ``infill_mix`` and ``infill_head`` on the forward output at ``k - 1`` and the
  backward output at ``k + 1`` (cloze-driven pretraining, Baevski et al. 2019). Site ``k`` is
  never seen, so one pass over a clean sequence gives the exact single-site conditional of
  every site at once (``Transformer.cloze``): training gets ``L`` infill targets per example
  where the masked-site read-outs get one, and a teacher's infill is then learned about as
  fast as its CAUSAL-GEN. The encoder's weights are shared by the three passes.

Every parameter and every constrained activation carries logical axis names; the mapping to mesh
axes lives in ``glauber_jax.partitioning``.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from glauber_jax import errors, network

Array = jax.Array


class Encoder(nn.Module):
  """Embedding lookup (shared table passed in), encoder blocks, final norm."""

  config: network.NetworkConfig
  embedder: nn.Embed

  @nn.compact
  def __call__(self, tokens: Array, time_vector: Optional[Array], deterministic: bool,
               direction: str = "both") -> Array:
    """Encoder output ``[B, S, d_model]``. ``direction``: ``"both"`` (bidirectional attention),
    ``"forward"`` (each position attends to itself and earlier ones) or ``"backward"`` (itself
    and later ones); the last two serve the cloze read-out."""
    cfg = self.config
    length = tokens.shape[1]
    positions = jnp.arange(length)
    x = self.embedder(tokens).astype(cfg.compute_dtype)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = network.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    bias = (network.RelativePositionBias(cfg, bidirectional=True, name="relative_position_bias")(
        positions, positions) if cfg.position_scheme == "relative" else None)
    key_valid = tokens > 0
    mask = jnp.broadcast_to(key_valid[:, None, None, :],
                            (tokens.shape[0], 1, length, length))
    if direction != "both":
      if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be both, forward or backward; got {direction!r}.")
      before = positions[None, :] <= positions[:, None]  # [query, key]: key at or before.
      mask = jnp.logical_and(mask, before if direction == "forward" else before.T)
    layer_cls = network.maybe_remat(network.EncoderLayer, cfg.remat_policy)
    for i in range(cfg.num_encoder_layers):
      x = layer_cls(cfg, deterministic, name=f"layers_{i}")(x, bias, mask, positions, time_vector)
    x = network.RMSNorm(cfg, name="final_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Embedding lookup, decoder blocks (optionally with a KV cache), final norm, output head."""

  config: network.NetworkConfig
  embedder: nn.Embed

  @nn.compact
  def __call__(self, tokens: Array, encoded: Array, encoder_tokens: Array,
               time_vector: Optional[Array], deterministic: bool, decode: bool,
               prefill: bool) -> Array:
    cfg = self.config
    batch, length = tokens.shape
    if decode:
      index = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      start = index.value
      index.value = start + length
      positions = start + jnp.arange(length)
      key_positions = jnp.arange(cfg.max_decoder_length)
      self_mask = None  # the attention layer builds the causal cache mask.
    else:
      positions = jnp.arange(length)
      key_positions = positions
      self_mask = nn.make_causal_mask(tokens, dtype=jnp.bool_)
    x = self.embedder(tokens).astype(cfg.compute_dtype)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = network.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    self_bias = (network.RelativePositionBias(cfg, bidirectional=False,
                                              name="relative_position_bias")(
        positions, key_positions) if cfg.position_scheme == "relative" else None)
    cross_mask = jnp.broadcast_to((encoder_tokens > 0)[:, None, None, :],
                                  (batch, 1, length, encoder_tokens.shape[1]))
    layer_cls = network.maybe_remat(network.DecoderLayer, cfg.remat_policy)
    for i in range(cfg.num_decoder_layers):
      x = layer_cls(cfg, deterministic, decode, prefill, name=f"layers_{i}")(
          x, encoded, self_bias, self_mask, cross_mask, positions, time_vector)
    x = network.RMSNorm(cfg, name="final_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    logits = nn.Dense(cfg.vocab_size, use_bias=False, name="logits_dense",
                      dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                      kernel_init=network.param_init(nn.initializers.normal(cfg.d_model ** -0.5),
                                              ("embed", "vocab")))(x)
    logits = logits.astype(jnp.float32)
    return network.constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))


class Transformer(nn.Module):
  """The encoder-decoder: ``__call__`` for teacher forcing, ``encode``/``decode`` for sampling.

  ``time`` is a ``[B]`` array of diffusion times when ``config.time_conditioning`` is set, and
  must be None otherwise.
  """

  config: network.NetworkConfig

  def setup(self) -> None:
    cfg = self.config
    self.token_embedder = nn.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.d_model, dtype=cfg.compute_dtype,
        param_dtype=cfg.weight_dtype,
        embedding_init=network.param_init(nn.initializers.normal(1.0), ("vocab", "embed")),
        name="token_embedder")
    self.encoder = Encoder(cfg, self.token_embedder, name="encoder")
    self.decoder = Decoder(cfg, self.token_embedder, name="decoder")
    if cfg.time_conditioning:
      self.time_embedding = network.TimeEmbedding(cfg, name="time_embedding")
    if cfg.infill_readout == "cloze":
      self.infill_mix = nn.Dense(
          cfg.d_model, use_bias=False, name="infill_mix", dtype=cfg.compute_dtype,
          param_dtype=cfg.weight_dtype,
          kernel_init=network.param_init(nn.initializers.normal((2 * cfg.d_model) ** -0.5),
                                         ("mlp", "embed")))
    if cfg.infill_readout in ("encoder", "cloze"):
      self.infill_head = nn.Dense(
          cfg.vocab_size, use_bias=False, name="infill_head", dtype=cfg.compute_dtype,
          param_dtype=cfg.weight_dtype,
          kernel_init=network.param_init(nn.initializers.normal(cfg.d_model ** -0.5),
                                         ("embed", "vocab")))

  def _time_vector(self, time: Optional[Array], batch: int) -> Optional[Array]:
    time = network.checked_time(self.config, time, batch)
    return None if time is None else self.time_embedding(time)

  def _check_length(self, name: str, length: int, limit: int) -> None:
    if length > limit:
      raise errors.ConfigError(
          f"{name} has length {length}, longer than the model's maximum {limit} "
          f"(NetworkConfig.max_{name.split('_')[0]}_length).")

  def encode(self, encoder_input_tokens: Array, time: Optional[Array] = None,
             enable_dropout: bool = False) -> Array:
    self._check_length("encoder_input_tokens", encoder_input_tokens.shape[1],
                       self.config.max_encoder_length)
    time_vector = self._time_vector(time, encoder_input_tokens.shape[0])
    return self.encoder(encoder_input_tokens, time_vector, not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             time: Optional[Array] = None, enable_dropout: bool = False, decode: bool = False,
             prefill: bool = False) -> Array:
    """Decoder logits ``[B, T, vocab]`` in float32.

    With ``decode=True`` the call appends ``decoder_input_tokens`` to the KV cache (the
    ``cache`` collection must be mutable); ``prefill=True`` marks the first such call, which
    also projects the encoder output into the cross-attention cache.
    """
    self._check_length("decoder_input_tokens", decoder_input_tokens.shape[1],
                       self.config.max_decoder_length)
    time_vector = self._time_vector(time, decoder_input_tokens.shape[0])
    return self.decoder(decoder_input_tokens, encoded, encoder_input_tokens, time_vector,
                        not enable_dropout, decode, prefill)

  def infill(self, encoder_input_tokens: Array, sites: Array, time: Optional[Array] = None,
             enable_dropout: bool = False) -> Array:
    """Encoder or cloze read-out MASK-INFILL: float32 logits ``[B, vocab]`` of the tokens at
    encoder positions ``sites [B]`` (``0 < site < S - 1`` for the cloze read-out)."""
    if self.config.infill_readout == "cloze":
      hidden = self._cloze_hidden(encoder_input_tokens, time, enable_dropout)
      hidden = jnp.take_along_axis(hidden, sites[:, None, None], axis=1)[:, 0]
      return self.infill_head(hidden).astype(jnp.float32)
    if self.config.infill_readout != "encoder":
      raise ValueError("Transformer.infill needs NetworkConfig.infill_readout = 'encoder' or "
                       "'cloze'.")
    encoded = self.encode(encoder_input_tokens, time, enable_dropout)
    return self._infill_logits(encoded, sites)

  def cloze(self, encoder_input_tokens: Array, time: Optional[Array] = None,
            enable_dropout: bool = False) -> Array:
    """Cloze read-out at every position: float32 logits ``[B, S, vocab]``, position ``p``'s
    from the tokens other than ``p`` (the first and last positions see one side only)."""
    if self.config.infill_readout != "cloze":
      raise ValueError("Transformer.cloze needs NetworkConfig.infill_readout = 'cloze'.")
    hidden = self._cloze_hidden(encoder_input_tokens, time, enable_dropout)
    logits = self.infill_head(hidden).astype(jnp.float32)
    return network.constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))

  def _cloze_hidden(self, tokens: Array, time: Optional[Array], enable_dropout: bool) -> Array:
    """``[B, S, d_model]``: position ``p`` mixes the forward pass at ``p - 1`` and the backward
    pass at ``p + 1`` (zeros beyond the ends)."""
    self._check_length("encoder_input_tokens", tokens.shape[1], self.config.max_encoder_length)
    time_vector = self._time_vector(time, tokens.shape[0])
    forward = self.encoder(tokens, time_vector, not enable_dropout, direction="forward")
    backward = self.encoder(tokens, time_vector, not enable_dropout, direction="backward")
    zeros = jnp.zeros_like(forward[:, :1])
    around = jnp.concatenate([jnp.concatenate([zeros, forward[:, :-1]], 1),
                              jnp.concatenate([backward[:, 1:], zeros], 1)], -1)
    return nn.gelu(self.infill_mix(around))

  def _infill_logits(self, encoded: Array, sites: Array) -> Array:
    hidden = jnp.take_along_axis(encoded, sites[:, None, None], axis=1)[:, 0]
    return self.infill_head(hidden).astype(jnp.float32)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               time: Optional[Array] = None, enable_dropout: bool = False) -> Array:
    encoded = self.encode(encoder_input_tokens, time, enable_dropout)
    if self.config.infill_readout == "encoder" and self.is_initializing():
      self._infill_logits(encoded, jnp.zeros(encoded.shape[:1], jnp.int32))  # Creates the head.
    if self.config.infill_readout == "cloze" and self.is_initializing():
      self.cloze(encoder_input_tokens, time)  # Creates the mixing layer and the head.
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, time, enable_dropout)
