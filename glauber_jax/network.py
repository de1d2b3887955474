"""The T5 v1.1 / UL2 encoder-decoder in flax.linen, with optional time conditioning.

One network serves every model family in the library:

- ``time_conditioning=False``: the T5 v1.1 / Flan-T5 architecture (RMSNorm, gated-GELU MLP,
  no biases, untied output head, attention logits unscaled as in T5). With
  ``position_scheme="relative"`` the parameters load from Flan-T5 checkpoints
  (``glauber_jax.hf_import``).
- ``time_conditioning=True``: the "DiT UL2" of the Glauber paper. A sinusoidal embedding of the
  diffusion time feeds a small MLP, and every sublayer of every block is modulated as
  ``x + (1 + gate(t)) * sublayer(norm(x) * (1 + scale(t)) + shift(t))``. The modulation
  projections start at zero, so a freshly converted DiT computes exactly its source UL2 at every
  ``t`` (plain adaLN-Zero would zero the residual branches and destroy the pretrained model).

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

import dataclasses
import math
from typing import Callable, Optional

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
  """Shape and numerics of the encoder-decoder.

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
  infill_readout: str = "decoder"

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
  and attends to everything written so far; a cross-attention layer projects the encoder output
  once (``prefill``) and reads the projected keys and values from the cache afterwards.
  """

  config: NetworkConfig
  self_attention: bool
  decode: bool = False
  prefill: bool = False

  def _project(self, name: str, x: Array, stddev: float) -> Array:
    cfg = self.config
    return EinsumDense(cfg, "btd,dhk->bthk", (cfg.d_model, cfg.num_heads, cfg.head_dim),
                       ("embed", "heads", "kv"), stddev, name=name)(x)

  def _cache_append(self, key: Array, value: Array) -> tuple[Array, Array, Array]:
    """Writes ``key/value [B, T, H, D]`` at the cache index; returns full caches and index."""
    cfg = self.config
    batch, steps = key.shape[0], key.shape[1]
    shape = (batch, cfg.max_decoder_length, cfg.num_heads, cfg.head_dim)
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
      key_positions = jnp.arange(cfg.max_decoder_length)
      query_positions = index + jnp.arange(steps)
      causal = key_positions[None, :] <= query_positions[:, None]
      mask = causal[None, None] if mask is None else jnp.logical_and(mask, causal[None, None])
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
  """Sinusoidal embedding of (possibly fractional) diffusion times ``[B] -> [B, dim]``."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = time.astype(jnp.float32)[:, None] * freqs[None, :]
  embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
  return embedding


class TimeEmbedding(nn.Module):
  """Sinusoid of ``t`` followed by a two-layer SiLU MLP: the DiT's conditioning vector."""

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
  """Zero-initialised projection of the time vector to (shift, scale, gate) per sublayer."""

  config: NetworkConfig
  num_sublayers: int

  @nn.compact
  def __call__(self, time_vector: Array) -> tuple[tuple[Array, Array, Array], ...]:
    cfg = self.config
    out = nn.Dense(3 * self.num_sublayers * cfg.d_model, name="adaln", dtype=jnp.float32,
                   param_dtype=cfg.weight_dtype,
                   kernel_init=param_init(nn.initializers.zeros, ("time_embed", "modulation")),
                   bias_init=param_init(nn.initializers.zeros, ("modulation",)))(time_vector)
    chunks = jnp.split(out[:, None, :].astype(cfg.compute_dtype), 3 * self.num_sublayers,
                       axis=-1)
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
                                   name="attention")
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
                                        prefill=self.prefill, name="self_attention")
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


class Encoder(nn.Module):
  """Embedding lookup (shared table passed in), encoder blocks, final norm."""

  config: NetworkConfig
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
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    bias = (RelativePositionBias(cfg, bidirectional=True, name="relative_position_bias")(
        positions, positions) if cfg.position_scheme == "relative" else None)
    key_valid = tokens > 0
    mask = jnp.broadcast_to(key_valid[:, None, None, :],
                            (tokens.shape[0], 1, length, length))
    if direction != "both":
      if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be both, forward or backward; got {direction!r}.")
      before = positions[None, :] <= positions[:, None]  # [query, key]: key at or before.
      mask = jnp.logical_and(mask, before if direction == "forward" else before.T)
    layer_cls = maybe_remat(EncoderLayer, cfg.remat_policy)
    for i in range(cfg.num_encoder_layers):
      x = layer_cls(cfg, deterministic, name=f"layers_{i}")(x, bias, mask, positions, time_vector)
    x = RMSNorm(cfg, name="final_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Embedding lookup, decoder blocks (optionally with a KV cache), final norm, output head."""

  config: NetworkConfig
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
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    self_bias = (RelativePositionBias(cfg, bidirectional=False, name="relative_position_bias")(
        positions, key_positions) if cfg.position_scheme == "relative" else None)
    cross_mask = jnp.broadcast_to((encoder_tokens > 0)[:, None, None, :],
                                  (batch, 1, length, encoder_tokens.shape[1]))
    layer_cls = maybe_remat(DecoderLayer, cfg.remat_policy)
    for i in range(cfg.num_decoder_layers):
      x = layer_cls(cfg, deterministic, decode, prefill, name=f"layers_{i}")(
          x, encoded, self_bias, self_mask, cross_mask, positions, time_vector)
    x = RMSNorm(cfg, name="final_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    logits = nn.Dense(cfg.vocab_size, use_bias=False, name="logits_dense",
                      dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                      kernel_init=param_init(_normal(cfg.d_model ** -0.5),
                                              ("embed", "vocab")))(x)
    logits = logits.astype(jnp.float32)
    return constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))


class Transformer(nn.Module):
  """The encoder-decoder: ``__call__`` for teacher forcing, ``encode``/``decode`` for sampling.

  ``time`` is a ``[B]`` array of diffusion times when ``config.time_conditioning`` is set, and
  must be None otherwise.
  """

  config: NetworkConfig

  def setup(self) -> None:
    cfg = self.config
    self.token_embedder = nn.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.d_model, dtype=cfg.compute_dtype,
        param_dtype=cfg.weight_dtype,
        embedding_init=param_init(_normal(1.0), ("vocab", "embed")), name="token_embedder")
    self.encoder = Encoder(cfg, self.token_embedder, name="encoder")
    self.decoder = Decoder(cfg, self.token_embedder, name="decoder")
    if cfg.time_conditioning:
      self.time_embedding = TimeEmbedding(cfg, name="time_embedding")
    if cfg.infill_readout == "cloze":
      self.infill_mix = nn.Dense(
          cfg.d_model, use_bias=False, name="infill_mix", dtype=cfg.compute_dtype,
          param_dtype=cfg.weight_dtype,
          kernel_init=param_init(_normal((2 * cfg.d_model) ** -0.5), ("mlp", "embed")))
    if cfg.infill_readout in ("encoder", "cloze"):
      self.infill_head = nn.Dense(
          cfg.vocab_size, use_bias=False, name="infill_head", dtype=cfg.compute_dtype,
          param_dtype=cfg.weight_dtype,
          kernel_init=param_init(_normal(cfg.d_model ** -0.5), ("embed", "vocab")))

  def _time_vector(self, time: Optional[Array], batch: int) -> Optional[Array]:
    if not self.config.time_conditioning:
      if time is not None:
        raise ValueError("This network has no time conditioning; pass time=None.")
      return None
    if time is None:
      raise ValueError("A time-conditioned network needs `time` ([batch] diffusion times).")
    time = jnp.broadcast_to(jnp.asarray(time, jnp.float32), (batch,))
    return self.time_embedding(time)

  def _check_length(self, name: str, length: int, limit: int) -> None:
    if length > limit:
      raise ValueError(
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
    return constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))

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
