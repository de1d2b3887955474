"""The configuration and building blocks of the library's transformers, in flax.linen.

``NetworkConfig`` shapes both networks: the T5 v1.1 / UL2 encoder-decoder
(``glauber_jax.encoder_decoder.Transformer``) and the single stack of the baselines
(``glauber_jax.single_stack.SingleStack``). The blocks are T5 v1.1's (RMSNorm, gated-GELU MLP,
no biases, attention logits unscaled as in T5) with T5's bucketed relative position bias or RoPE,
and a KV cache for decoding.

With ``time_conditioning`` the blocks become the "DiT UL2" of the Glauber paper: a sinusoidal
embedding of the diffusion time feeds a small MLP (``TimeEmbedding``), and every sublayer of
every block is modulated as ``x + (1 + gate(t)) * sublayer(norm(x) * (1 + scale(t)) + shift(t))``
(``Modulation``). The modulation projections start at zero, so a freshly converted DiT computes
exactly its source UL2 at every ``t`` (plain adaLN-Zero would zero the residual branches and
destroy the pretrained model).

Every parameter and every constrained activation carries logical axis names; the mapping to mesh
axes lives in ``glauber_jax.partitioning``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]

POSITION_SCHEMES = ("relative", "rope")
INFILL_READOUTS = ("decoder", "encoder", "cloze")
REMAT_POLICIES = ("none", "full", "dots")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """Shape and numerics of the encoder-decoder, and of the single stack.

  ``glauber_jax.single_stack.SingleStack`` reads the same config as one stack of encoder blocks:
  ``num_encoder_layers`` is its depth and ``max_encoder_length`` its longest input (and KV-cache
  length); it ignores ``num_decoder_layers``, ``max_decoder_length`` and ``infill_readout``.

  Attributes:
    vocab_size: rows of the shared input embedding and columns of the output head.
    d_model: width of the residual stream.
    num_heads: attention heads.
    head_dim: width of one head (T5's ``d_kv``).
    d_ff: hidden width of the gated-GELU MLP.
    num_encoder_layers: encoder blocks.
    num_decoder_layers: decoder blocks.
    dropout_rate: dropout after attention, MLP and embeddings (T5 places it there).
    position_scheme: ``"relative"`` (T5 bucketed bias, needed for Flan-T5 weights) or ``"rope"``.
    relative_attention_num_buckets: T5 bucket count.
    relative_attention_max_distance: T5 largest bucketed distance.
    rope_max_wavelength: RoPE base.
    max_encoder_length: longest encoder input accepted (checked when tracing).
    max_decoder_length: longest decoder input accepted, also the KV-cache length.
    layer_norm_epsilon: RMSNorm epsilon.
    dtype: activation / compute dtype name (``"bfloat16"`` or ``"float32"``).
    param_dtype: parameter dtype name.
    attention_implementation: passed to ``jax.nn.dot_product_attention`` (None lets XLA
      choose; ``"cudnn"`` forces the fused GPU kernel; ``"xla"`` the portable one).
    remat_policy: activation rematerialisation of each block: none, full or dots (saves
      matmul outputs without batch dimensions).
    time_conditioning: add the DiT time embedding and modulation.
    time_per_token: with ``time_conditioning``, the single stack's time input is one time per
      token, ``[B, L]`` (a ``[B]`` input is broadcast over the positions): every position's
      shift, scale and gate come from its own time (per-token adaLN), as hyperschedules give
      each position its own noise level. The parameters are the per-sequence network's, which
      it computes exactly when all positions share a time. Single stack only.
    weighted_mask_embedding: the single stack mixes the MASK embedding into every token's,
      ``(1 - w) f(x) + w f(MASK)`` with a per-token weight ``w [B, L]`` given with the input
      (HDLM eq. 12: ``w = 1 - exp(-gamma sigma)``, computed by the gamma-hybrid process).
    time_embed_dim: width of the time MLP; the modulation adds
      ``time_embed_dim * 3 * d_model`` parameters per sublayer.
    infill_readout: how MASK-INFILL is read out (module docstring): ``"decoder"`` (T5 span
      format, Flan-T5 compatible), ``"encoder"`` (an ``infill_head`` on the encoder output at
      the masked site) or ``"cloze"`` (forward and backward encoder passes around the site).
  """

  vocab_size: int = 32128
  d_model: int = 512
  num_heads: int = 8
  head_dim: int = 64
  d_ff: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  dropout_rate: float = 0.0
  position_scheme: str = "relative"
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  rope_max_wavelength: float = 10_000.0
  max_encoder_length: int = 1024
  max_decoder_length: int = 1024
  layer_norm_epsilon: float = 1e-6
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  attention_implementation: Optional[str] = None
  remat_policy: str = "none"
  time_conditioning: bool = False
  time_embed_dim: int = 256
  time_per_token: bool = False
  weighted_mask_embedding: bool = False
  infill_readout: str = "decoder"

  def check_vocabulary(self, vocabulary: Any) -> None:
    """ValueError unless ``vocab_size`` is the task vocabulary's size."""
    if self.vocab_size != vocabulary.vocab_size:
      raise ValueError(f"NetworkConfig.vocab_size={self.vocab_size} but the task's vocabulary "
                       f"has {vocabulary.vocab_size} ids.")

  def __post_init__(self) -> None:
    if self.infill_readout not in INFILL_READOUTS:
      raise ValueError(
          f"NetworkConfig.infill_readout={self.infill_readout!r}; expected one of "
          f"{INFILL_READOUTS}.")
    if self.position_scheme not in POSITION_SCHEMES:
      raise ValueError(
          f"NetworkConfig.position_scheme={self.position_scheme!r}; expected one of "
          f"{POSITION_SCHEMES}.")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"NetworkConfig.remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}.")
    if self.time_per_token and not self.time_conditioning:
      raise ValueError("NetworkConfig.time_per_token needs time_conditioning = True.")
    if self.position_scheme == "rope" and self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}.")
    for name in ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff",
                 "max_encoder_length", "max_decoder_length"):
      if getattr(self, name) <= 0:
        raise ValueError(f"NetworkConfig.{name} must be positive, got {getattr(self, name)}.")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)


def _normal(stddev: float) -> Initializer:
  return nn.initializers.normal(stddev=stddev)


def param_init(init: Initializer, axes: tuple[str, ...]) -> Initializer:
  return nn.with_logical_partitioning(init, axes)


def constrain(x: Array, axes: tuple[str, ...]) -> Array:
  return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
  """T5's layer norm: no mean subtraction, no bias, statistics in float32."""

  config: NetworkConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    scale = self.param("scale", param_init(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), cfg.weight_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
                                 + cfg.layer_norm_epsilon)
    return (normed * scale.astype(jnp.float32)).astype(cfg.compute_dtype)


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
  """T5's bucketing of ``key_position - query_position`` into ``num_buckets`` ids.

  Half the buckets (all of them when unidirectional) hold exact small distances, the rest
  logarithmically spaced distances up to ``max_distance``.
  """
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (relative_position > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  safe = jnp.maximum(distance, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(safe / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
  """T5 relative position bias, shared by all layers of one stack: ``[1, H, Tq, Tk]``."""

  config: NetworkConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    cfg = self.config
    table = self.param(
        "rel_embedding", param_init(_normal(1.0), ("relpos_buckets", "heads")),
        (cfg.relative_attention_num_buckets, cfg.num_heads), cfg.weight_dtype)
    buckets = relative_position_bucket(
        key_positions[None, :] - query_positions[:, None], self.bidirectional,
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
    bias = jnp.take(table, buckets, axis=0)  # [Tq, Tk, H]
    return jnp.transpose(bias, (2, 0, 1))[None].astype(cfg.compute_dtype)


def apply_rope(x: Array, positions: Array, max_wavelength: float) -> Array:
  """Rotary position embedding on ``x [B, T, H, D]`` at integer ``positions [T]``."""
  half = x.shape[-1] // 2
  inv_freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [T, half]
  sin = jnp.sin(angles)[None, :, None, :]
  cos = jnp.cos(angles)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


class EinsumDense(nn.Module):
  """A bias-free projection ``einsum(equation, x, kernel)`` whose kernel keeps its full rank.

  (flax's ``DenseGeneral`` initialises a flattened kernel, which breaks logical sharding
  constraints of rank-3 kernels under ``jax.set_mesh``.)
  """

  config: NetworkConfig
  equation: str
  kernel_shape: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  stddev: float

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    kernel = self.param("kernel", param_init(_normal(self.stddev), self.kernel_axes),
                        self.kernel_shape, cfg.weight_dtype)
    return jnp.einsum(self.equation, x.astype(cfg.compute_dtype),
                      kernel.astype(cfg.compute_dtype))


class MultiHeadAttention(nn.Module):
  """T5 attention (no biases, unscaled logits) with an optional KV cache.

  In ``decode`` mode a self-attention layer appends the new keys and values at the cache index
  of a cache of ``cache_length`` positions (its stack's maximum length) and attends causally to
  everything written so far (a ``mask`` over the cache positions, if given, replaces the causal
  one: the block decoding of ``single_stack``); a cross-attention layer projects the encoder
  output once (``prefill``) and reads the projected keys and values from the cache afterwards.
  """

  config: NetworkConfig
  self_attention: bool
  decode: bool = False
  prefill: bool = False
  cache_length: int = 0

  def _project(self, name: str, x: Array, stddev: float) -> Array:
    cfg = self.config
    return EinsumDense(cfg, "btd,dhk->bthk", (cfg.d_model, cfg.num_heads, cfg.head_dim),
                       ("embed", "heads", "kv"), stddev, name=name)(x)

  def _cache_append(self, key: Array, value: Array) -> tuple[Array, Array, Array]:
    """Writes ``key/value [B, T, H, D]`` at the cache index; returns full caches and index."""
    cfg = self.config
    batch, steps = key.shape[0], key.shape[1]
    shape = (batch, self.cache_length, cfg.num_heads, cfg.head_dim)
    cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, value.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    index = cache_index.value
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, index, 0, 0))
    cache_index.value = index + steps
    return cached_key.value, cached_value.value, index

  def _cross_cache(self, inputs_kv: Optional[Array]) -> tuple[Array, Array]:
    """Projected encoder keys/values, computed at prefill and read back afterwards."""
    if self.prefill or self.is_initializing():
      key = self._project("key", inputs_kv, self.config.d_model ** -0.5)
      value = self._project("value", inputs_kv, self.config.d_model ** -0.5)
      self.put_variable("cache", "cross_key", key)
      self.put_variable("cache", "cross_value", value)
      return key, value
    return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array], bias: Optional[Array],
               mask: Optional[Array], positions: Optional[Array],
               deterministic: bool) -> Array:
    cfg = self.config
    init_q = (cfg.d_model * cfg.head_dim) ** -0.5
    init_kv = cfg.d_model ** -0.5
    query = self._project("query", inputs_q, init_q)
    if self.decode and not self.self_attention:
      key, value = self._cross_cache(inputs_kv)
    else:
      source = inputs_q if self.self_attention else inputs_kv
      key = self._project("key", source, init_kv)
      value = self._project("value", source, init_kv)
    if self.self_attention and cfg.position_scheme == "rope":
      query = apply_rope(query, positions, cfg.rope_max_wavelength)
      key = apply_rope(key, positions, cfg.rope_max_wavelength)
    if self.decode and self.self_attention:
      key, value, index = self._cache_append(key, value)
      steps = query.shape[1]
      key_positions = jnp.arange(self.cache_length)
      query_positions = index + jnp.arange(steps)
      causal = key_positions[None, :] <= query_positions[:, None]
      mask = causal[None, None] if mask is None else mask  # A given mask replaces the causal one.
    query = constrain(query, ("activation_batch", "activation_length", "activation_heads",
                               "activation_kv"))
    key = constrain(key, ("activation_batch", "activation_length", "activation_heads",
                           "activation_kv"))
    value = constrain(value, ("activation_batch", "activation_length", "activation_heads",
                               "activation_kv"))
    attended = jax.nn.dot_product_attention(
        query, key, value, bias=None if bias is None else bias.astype(query.dtype), mask=mask,
        scale=1.0, implementation=cfg.attention_implementation)
    attended = nn.Dropout(cfg.dropout_rate)(attended, deterministic=deterministic)
    out = EinsumDense(cfg, "bthk,hkd->btd", (cfg.num_heads, cfg.head_dim, cfg.d_model),
                      ("heads", "kv", "embed"), (cfg.num_heads * cfg.head_dim) ** -0.5,
                      name="out")(attended)
    return constrain(out, ("activation_batch", "activation_length", "activation_embed"))


class GatedGeluMlp(nn.Module):
  """T5 v1.1 feed-forward block: ``wo(gelu(wi_0 x) * wi_1 x)``."""

  config: NetworkConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config

    def dense(name: str, features: int, stddev: float, axes: tuple[str, str]) -> nn.Dense:
      return nn.Dense(features, use_bias=False, name=name, dtype=cfg.compute_dtype,
                      param_dtype=cfg.weight_dtype, kernel_init=param_init(_normal(stddev), axes))

    gate = dense("wi_0", cfg.d_ff, cfg.d_model ** -0.5, ("embed", "mlp"))(x)
    linear = dense("wi_1", cfg.d_ff, cfg.d_model ** -0.5, ("embed", "mlp"))(x)
    hidden = jax.nn.gelu(gate, approximate=True) * linear
    hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_mlp"))
    hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
    out = dense("wo", cfg.d_model, cfg.d_ff ** -0.5, ("mlp", "embed"))(hidden)
    return constrain(out, ("activation_batch", "activation_length", "activation_embed"))


def timestep_embedding(time: Array, dim: int, max_period: float = 10_000.0) -> Array:
  """Sinusoidal embedding of (possibly fractional) diffusion times ``[...] -> [..., dim]``
  (``[B]`` per sequence, ``[B, L]`` per token)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = time.astype(jnp.float32)[..., None] * freqs
  embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    embedding = jnp.pad(embedding, ((0, 0),) * time.ndim + ((0, 1),))
  return embedding


def checked_time(config: NetworkConfig, time: Optional[Array], batch: int,
                 length: Optional[int] = None) -> Optional[Array]:
  """``time`` as float32 ``[batch]`` for a time-conditioned network, ``[batch, length]`` for a
  per-token one (``config.time_per_token``; a ``[batch]`` time is broadcast over the
  positions), None for one without; ValueError when the call and the configuration disagree
  (``length`` None: the caller, the encoder-decoder, takes per-sequence times only)."""
  if not config.time_conditioning:
    if time is not None:
      raise ValueError("This network has no time conditioning; pass time=None.")
    return None
  if time is None:
    raise ValueError("A time-conditioned network needs `time` ([batch] diffusion times).")
  time = jnp.asarray(time, jnp.float32)
  if not config.time_per_token:
    return jnp.broadcast_to(time, (batch,))
  if length is None:
    raise ValueError("NetworkConfig.time_per_token is for the single stack only.")
  return jnp.broadcast_to(time[:, None] if time.ndim == 1 else time, (batch, length))


class TimeEmbedding(nn.Module):
  """Sinusoid of ``t`` followed by a two-layer SiLU MLP: the DiT's conditioning vector
  (``[B] -> [B, width]``, or per token ``[B, L] -> [B, L, width]``)."""

  config: NetworkConfig

  @nn.compact
  def __call__(self, time: Array) -> Array:
    cfg = self.config
    width = cfg.time_embed_dim
    hidden = timestep_embedding(time, width)
    for name in ("dense_0", "dense_1"):
      hidden = nn.Dense(width, name=name, dtype=jnp.float32, param_dtype=cfg.weight_dtype,
                        kernel_init=param_init(nn.initializers.xavier_uniform(),
                                                ("time_embed", "time_mlp")),
                        bias_init=param_init(nn.initializers.zeros, ("time_mlp",)))(hidden)
      hidden = nn.silu(hidden)
    return hidden


class Modulation(nn.Module):
  """Zero-initialised projection of the time vector to (shift, scale, gate) per sublayer, each
  ``[B, 1, d_model]`` (one time vector per sequence, ``[B, width]``) or ``[B, L, d_model]``
  (one per token, ``[B, L, width]``)."""

  config: NetworkConfig
  num_sublayers: int

  @nn.compact
  def __call__(self, time_vector: Array) -> tuple[tuple[Array, Array, Array], ...]:
    cfg = self.config
    out = nn.Dense(3 * self.num_sublayers * cfg.d_model, name="adaln", dtype=jnp.float32,
                   param_dtype=cfg.weight_dtype,
                   kernel_init=param_init(nn.initializers.zeros, ("time_embed", "modulation")),
                   bias_init=param_init(nn.initializers.zeros, ("modulation",)))(time_vector)
    if out.ndim == 2:
      out = out[:, None, :]
    chunks = jnp.split(out.astype(cfg.compute_dtype), 3 * self.num_sublayers, axis=-1)
    return tuple(tuple(chunks[3 * i:3 * i + 3]) for i in range(self.num_sublayers))


def _modulated_residual(x: Array, norm: RMSNorm, sublayer: Callable[[Array], Array],
                        modulation: Optional[tuple[Array, Array, Array]]) -> Array:
  """``x + sublayer(norm(x))``, or its time-modulated form when ``modulation`` is given."""
  if modulation is None:
    return x + sublayer(norm(x))
  shift, scale, gate = modulation
  return x + (1 + gate) * sublayer(norm(x) * (1 + scale) + shift)


class EncoderLayer(nn.Module):
  """Self-attention then MLP, each pre-normalised and residual (optionally time-modulated)."""

  config: NetworkConfig
  deterministic: bool
  decode: bool = False  # Causal single stacks decode with a KV cache (glauber_jax.single_stack).

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array], mask: Optional[Array], positions: Array,
               time_vector: Optional[Array]) -> Array:
    cfg = self.config
    mods = (Modulation(cfg, 2, name="modulation")(time_vector)
            if time_vector is not None else (None, None))
    attention = MultiHeadAttention(cfg, self_attention=True, decode=self.decode,
                                   cache_length=cfg.max_encoder_length, name="attention")
    x = _modulated_residual(
        x, RMSNorm(cfg, name="pre_attention_norm"),
        lambda h: attention(h, None, bias, mask, positions, self.deterministic), mods[0])
    mlp = GatedGeluMlp(cfg, name="mlp")
    x = _modulated_residual(x, RMSNorm(cfg, name="pre_mlp_norm"),
                            lambda h: mlp(h, self.deterministic), mods[1])
    return constrain(x, ("activation_batch", "activation_length", "activation_embed"))


class DecoderLayer(nn.Module):
  """Causal self-attention, cross-attention to the encoder, then MLP."""

  config: NetworkConfig
  deterministic: bool
  decode: bool = False
  prefill: bool = False

  @nn.compact
  def __call__(self, x: Array, encoded: Optional[Array], self_bias: Optional[Array],
               self_mask: Optional[Array], cross_mask: Array, positions: Array,
               time_vector: Optional[Array]) -> Array:
    cfg = self.config
    mods = (Modulation(cfg, 3, name="modulation")(time_vector)
            if time_vector is not None else (None, None, None))
    self_attention = MultiHeadAttention(cfg, self_attention=True, decode=self.decode,
                                        prefill=self.prefill,
                                        cache_length=cfg.max_decoder_length,
                                        name="self_attention")
    x = _modulated_residual(
        x, RMSNorm(cfg, name="pre_self_attention_norm"),
        lambda h: self_attention(h, None, self_bias, self_mask, positions, self.deterministic),
        mods[0])
    cross_attention = MultiHeadAttention(cfg, self_attention=False, decode=self.decode,
                                         prefill=self.prefill, name="cross_attention")
    x = _modulated_residual(
        x, RMSNorm(cfg, name="pre_cross_attention_norm"),
        lambda h: cross_attention(h, encoded, None, cross_mask, positions, self.deterministic),
        mods[1])
    mlp = GatedGeluMlp(cfg, name="mlp")
    x = _modulated_residual(x, RMSNorm(cfg, name="pre_mlp_norm"),
                            lambda h: mlp(h, self.deterministic), mods[2])
    return constrain(x, ("activation_batch", "activation_length", "activation_embed"))


def maybe_remat(layer_cls: type[nn.Module], policy: str) -> type[nn.Module]:
  if policy == "none":
    return layer_cls
  checkpoint_policy = (jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
                       if policy == "dots" else None)
  return nn.remat(layer_cls, policy=checkpoint_policy)
