"""The reference network shape of HDLM (``hybrid.md`` section 6): a DDiT (diffusion DiT).

The shape of the reference's ``DDIT`` / ``HDLM`` (epsilon, no time input) and ``HDLM_Gamma``
(per-token sigma conditioning), written anew for flax:

- an untied token embedding ``[V, d]`` (kaiming-uniform, i.e. uniform in ``±1/sqrt(d)``);
- ``num_blocks`` pre-LN blocks: LayerNorm with a weight and no bias (float32 statistics),
  fused no-bias QKV projection, RoPE on queries and keys (positions passed explicitly), softmax
  attention scaled by ``1/sqrt(head_dim)``, no-bias output projection, then LayerNorm and an
  MLP with biases (``d -> mlp_ratio d``, tanh-GELU, ``-> d``); dropout on both branch outputs;
- a final LayerNorm (weight only) and a zero-initialised ``Linear(d, V)`` with bias (no adaLN);
- with ``time_conditioning``: a ``TimestepEmbedder`` (sinusoid of ``frequency_dim``, Linear to
  ``cond_dim``, SiLU, Linear ``cond_dim -> cond_dim``), ``c = SiLU(embedding)``, and in every
  block a zero-initialised adaLN ``Linear(cond_dim, 6 d)`` giving shift, scale and gate of both
  sublayers per token (``x + gate * sublayer(norm(x) * (1 + scale) + shift)``).

With the reference configuration (``DDiTConfig`` defaults: V = 50258, d = 768, 12 blocks of 12
heads) this has 162,246,482 parameters without and 169,429,074 with time conditioning, the
counts of the reference configs (``tests/test_ddit.py``). Kernels start from a uniform
``±1/sqrt(fan_in)`` (torch's Linear default) and biases at zero. The time input is ``[B]`` (one
per sequence) or ``[B, L]`` (per token).

``DDiTDenoiser`` puts the network behind the interface of
``denoiser_networks.SingleStackDenoiser`` for the hybrid processes (``logits``,
``masked_logits`` and the KV-cached ``block_logits`` of block hyperschedules). For the
gamma-hybrid it feeds the network the total noise ``sigma(t)`` of the log-linear schedule, as
the reference does, not ``t``, and optionally mixes the MASK embedding into every token's
(eq. 12's weighted embedding, parameter-free).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from glauber_jax import denoisers, errors, network, vocabularies
from glauber_jax.processes import hybrid

Array = jax.Array
Params = Any

#: torch's Linear / kaiming-uniform(a = sqrt 5) default: uniform in ``±1/sqrt(fan_in)``.
_TORCH_UNIFORM = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DDiTConfig:
  """Shape and numerics of ``DDiT``; the defaults are the reference's (``hybrid.md`` 6).

  Attributes:
    vocab_size: rows of the embedding and columns of the output layer (GPT-2's 50257 + MASK).
    hidden_size: width ``d`` of the residual stream.
    num_blocks: transformer blocks.
    num_heads: attention heads (``head_dim = hidden_size / num_heads``).
    mlp_ratio: MLP hidden width over ``hidden_size``.
    cond_dim: width of the time vector ``c`` (time conditioning only).
    frequency_dim: width of the time sinusoid.
    time_conditioning: the gamma-hybrid's per-token sigma conditioning (adaLN).
    dropout_rate: dropout on the attention and MLP branch outputs.
    rope_max_wavelength: RoPE base.
    max_length: longest input accepted.
    layer_norm_epsilon: LayerNorm epsilon (torch's default).
    dtype: activation / matmul dtype name.
    param_dtype: parameter dtype name.
  """

  vocab_size: int = 50258
  hidden_size: int = 768
  num_blocks: int = 12
  num_heads: int = 12
  mlp_ratio: int = 4
  cond_dim: int = 128
  frequency_dim: int = 256
  time_conditioning: bool = False
  dropout_rate: float = 0.1
  rope_max_wavelength: float = 10_000.0
  max_length: int = 1024
  layer_norm_epsilon: float = 1e-5
  dtype: str = "bfloat16"
  param_dtype: str = "float32"

  def __post_init__(self) -> None:
    for name in ("vocab_size", "hidden_size", "num_blocks", "num_heads", "mlp_ratio",
                 "cond_dim", "frequency_dim", "max_length"):
      if getattr(self, name) <= 0:
        raise ValueError(f"DDiTConfig.{name} must be positive, got {getattr(self, name)}.")
    if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
      raise ValueError(f"hidden_size {self.hidden_size} must split into {self.num_heads} heads "
                       "of even width (RoPE).")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def time_per_token(self) -> bool:
    """The conditioned DDiT reads one time per token (the gamma-hybrid's block and slide
    schedules need it; ``NetworkConfig.time_per_token`` is the single stack's switch)."""
    return self.time_conditioning

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def check_vocabulary(self, vocabulary: vocabularies.Vocabulary) -> None:
    """ValueError unless ``vocab_size`` is the task vocabulary's size."""
    if self.vocab_size != vocabulary.vocab_size:
      raise ValueError(f"DDiTConfig.vocab_size={self.vocab_size} but the task's vocabulary has "
                       f"{vocabulary.vocab_size} ids.")


class LayerNorm(nn.Module):
  """LayerNorm with a weight and no bias; statistics in float32."""

  config: DDiTConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    scale = self.param("scale", network.param_init(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), cfg.weight_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    normed = (x32 - mean) * jax.lax.rsqrt(variance + cfg.layer_norm_epsilon)
    return normed * scale.astype(jnp.float32)


def _dense(cfg: DDiTConfig, features: int, axes: tuple[Optional[str], str], name: str,
           use_bias: bool = True, zero: bool = False, dtype: Optional[jnp.dtype] = None
           ) -> nn.Dense:
  """A Linear with torch's default kernel init (zero with ``zero``) and zero bias."""
  kernel_init = nn.initializers.zeros if zero else _TORCH_UNIFORM
  return nn.Dense(features, use_bias=use_bias, name=name,
                  dtype=cfg.compute_dtype if dtype is None else dtype,
                  param_dtype=cfg.weight_dtype,
                  kernel_init=network.param_init(kernel_init, axes),
                  bias_init=network.param_init(nn.initializers.zeros, (axes[1],)))


class TimestepEmbedder(nn.Module):
  """``c = SiLU(Linear(SiLU(Linear(sinusoid(time)))))``: ``[...] -> [..., cond_dim]``."""

  config: DDiTConfig

  @nn.compact
  def __call__(self, time: Array) -> Array:
    cfg = self.config
    sinusoid = network.timestep_embedding(time.reshape(-1), cfg.frequency_dim)
    hidden = _dense(cfg, cfg.cond_dim, ("time_embed", "time_mlp"), "dense_0",
                    dtype=jnp.float32)(sinusoid.reshape(*time.shape, cfg.frequency_dim))
    hidden = _dense(cfg, cfg.cond_dim, ("time_embed", "time_mlp"), "dense_1",
                    dtype=jnp.float32)(nn.silu(hidden))
    return nn.silu(hidden)


class DDiTBlock(nn.Module):
  """Pre-LN attention and MLP, each residual, adaLN-modulated per token when ``cond`` is
  given."""

  config: DDiTConfig
  deterministic: bool
  decode: bool = False

  def _cache_append(self, key: Array, value: Array, start: Array) -> tuple[Array, Array]:
    """Writes ``key/value [B, w, H, D]`` at ``start`` of the ``max_length`` KV cache; returns
    the whole cache."""
    shape = (key.shape[0], self.config.max_length) + key.shape[2:]
    cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, value.dtype)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, start, 0, 0))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value,
                                                      (0, start, 0, 0))
    return cached_key.value, cached_value.value

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Optional[Array],
               cond: Optional[Array]) -> Array:
    cfg = self.config
    batch, length, _ = x.shape
    if cond is None:
      mods = (0.0, 0.0, 1.0, 0.0, 0.0, 1.0)
    else:
      out = _dense(cfg, 6 * cfg.hidden_size, ("time_embed", "modulation"), "adaln",
                   zero=True, dtype=jnp.float32)(cond)
      mods = tuple(jnp.split(out, 6, axis=-1))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods

    h = LayerNorm(cfg, name="norm_1")(x) * (1 + scale_msa) + shift_msa
    qkv = self.param("qkv", network.param_init(_TORCH_UNIFORM, ("embed", None, "heads", "kv")),
                     (cfg.hidden_size, 3, cfg.num_heads, cfg.head_dim), cfg.weight_dtype)
    qkv = jnp.einsum("btd,dshk->sbthk", h.astype(cfg.compute_dtype),
                     qkv.astype(cfg.compute_dtype))
    query = network.apply_rope(qkv[0], positions, cfg.rope_max_wavelength)
    key = network.apply_rope(qkv[1], positions, cfg.rope_max_wavelength)
    value = qkv[2]
    if self.decode:
      key, value = self._cache_append(key, value, positions[0])
    attended = jax.nn.dot_product_attention(query, key, value, mask=mask)
    attended = attended.reshape(batch, length, cfg.hidden_size)
    attended = _dense(cfg, cfg.hidden_size, ("heads", "embed"), "attention_out",
                      use_bias=False)(attended)
    attended = nn.Dropout(cfg.dropout_rate)(attended, deterministic=self.deterministic)
    x = x + gate_msa * attended.astype(jnp.float32)

    h = LayerNorm(cfg, name="norm_2")(x) * (1 + scale_mlp) + shift_mlp
    h = _dense(cfg, cfg.mlp_ratio * cfg.hidden_size, ("embed", "mlp"), "mlp_in")(h)
    h = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), "mlp_out")(
        jax.nn.gelu(h, approximate=True))
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
    return x + gate_mlp * h.astype(jnp.float32)


class DDiT(nn.Module):
  """Embedding, ``num_blocks`` blocks, final LayerNorm and zero-initialised Linear: float32
  logits ``[B, L, V]`` of ``tokens [B, L]``.

  ``time`` (time conditioning only, None otherwise): ``[B]`` or ``[B, L]`` noise levels.
  ``attention_mask``: optional bool ``[L, L]`` or ``[B, L, L]``, True where a query may attend
  to a key (a hyperschedule's mask); full bidirectional attention without. ``decode=True`` (the
  ``cache`` collection mutable) decodes blocks with a KV cache: ``tokens [B, w]`` are placed
  after the cached positions and attend to them and to each other (the block-causal mask of a
  block hyperschedule); keep the mutated cache to commit the block. ``mask_weight`` (``[B]`` or
  ``[B, L]``, optional): eq. 12's weighted embedding, ``(1 - w) f(x) + w f(mask_id)`` at every
  position.
  """

  config: DDiTConfig

  @nn.compact
  def __call__(self, tokens: Array, time: Optional[Array] = None, enable_dropout: bool = False,
               attention_mask: Optional[Array] = None, decode: bool = False,
               mask_weight: Optional[Array] = None, mask_id: int = 0) -> Array:
    cfg = self.config
    batch, length = tokens.shape
    if length > cfg.max_length or (decode and attention_mask is not None):
      raise errors.ConfigError(f"tokens have length {length} (at most DDiTConfig.max_length = "
                               f"{cfg.max_length}); decoding takes no attention_mask.")
    if (time is None) == cfg.time_conditioning:
      raise ValueError(f"DDiTConfig.time_conditioning={cfg.time_conditioning}: pass time "
                       "[B] or [B, L] exactly when it is set.")
    cond = None
    if time is not None:
      time = jnp.asarray(time, jnp.float32)
      time = jnp.broadcast_to(time[:, None] if time.ndim == 1 else time, (batch, length))
      cond = TimestepEmbedder(cfg, name="time_embedding")(time)
    if decode:
      index = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      start = index.value
      index.value = start + length
      positions = start + jnp.arange(length)
      mask = (jnp.arange(cfg.max_length) < start + length)[None, None, None, :]
    else:
      positions = jnp.arange(length)
      mask = (None if attention_mask is None
              else jnp.broadcast_to(attention_mask, (batch, length, length))[:, None])
    embedding = self.param(
        "token_embedder", network.param_init(
            nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=-1,
                                             out_axis=-2), ("vocab", "embed")),
        (cfg.vocab_size, cfg.hidden_size), cfg.weight_dtype)
    x = jnp.take(embedding, tokens, axis=0).astype(jnp.float32)
    if mask_weight is not None:
      weight = jnp.asarray(mask_weight, jnp.float32)
      weight = jnp.broadcast_to(weight[:, None] if weight.ndim == 1 else weight,
                                (batch, length))[..., None]
      x = (1 - weight) * x + weight * embedding[mask_id].astype(jnp.float32)
    for i in range(cfg.num_blocks):
      x = DDiTBlock(cfg, not enable_dropout, decode, name=f"blocks_{i}")(x, positions, mask,
                                                                          cond)
    x = LayerNorm(cfg, name="final_norm")(x)
    logits = _dense(cfg, cfg.vocab_size, ("embed", "vocab"), "output", zero=True)(x)
    return network.constrain(logits.astype(jnp.float32),
                             ("activation_batch", "activation_length", "activation_vocab"))


def parameter_count(config: DDiTConfig, seq_len: int = 8) -> int:
  """Parameters of ``DDiT(config)``, from ``jax.eval_shape`` (nothing is allocated)."""
  time = jnp.zeros((1,), jnp.float32) if config.time_conditioning else None
  shapes = jax.eval_shape(lambda: DDiT(config).init(
      jax.random.PRNGKey(0), jnp.zeros((1, seq_len), jnp.int32), time))
  return sum(leaf.size for leaf in jax.tree_util.tree_leaves(nn.unbox(shapes["params"])))


@gin.configurable
class DDiTDenoiser:
  """The DDiT behind ``SingleStackDenoiser``'s interface (the hybrid processes' denoiser).

  Attributes:
    network_config: the DDiT's shape; ``time_conditioning`` for the gamma-hybrid.
    vocabulary: the task's vocabulary.
    sigma_conditioning: feed the network the log-linear total noise ``sigma(t)`` (the
      reference's input) instead of the process's time ``t``.
    weighted_embedding_gamma: the gamma-hybrid's ``gamma`` for eq. 12's weighted embedding
      (``hybrid.mask_embedding_weight`` at each position's ``sigma``); None: plain embedding.
    text_includes_eos: whether EOS is text (``SingleStackDenoiser``'s setting).
  """

  def __init__(self, network_config: DDiTConfig = gin.REQUIRED,
               vocabulary: vocabularies.Vocabulary = gin.REQUIRED,
               sigma_conditioning: bool = True,
               weighted_embedding_gamma: Optional[float] = None,
               text_includes_eos: bool = False) -> None:
    network_config.check_vocabulary(vocabulary)
    if weighted_embedding_gamma is not None and not network_config.time_conditioning:
      raise ValueError("the weighted embedding needs DDiTConfig.time_conditioning (sigma).")
    self.weighted_embedding_gamma = weighted_embedding_gamma
    self.network_config = network_config
    self.module = DDiT(network_config)
    self.vocabulary = vocabulary
    self.sigma_conditioning = sigma_conditioning
    self.special_ids = denoisers.SpecialIds.from_vocabulary(vocabulary)
    self.allowed_tokens = vocabulary.text_token_mask(text_includes_eos)

  @property
  def max_length(self) -> int:
    return self.network_config.max_length

  def _time_inputs(self, times: Array) -> dict[str, Any]:
    """The network's ``time`` (and ``mask_weight``) at the process's ``times``."""
    if not self.network_config.time_conditioning:
      return {"time": None}
    times = jnp.asarray(times, jnp.float32)
    sigma = hybrid.log_linear_sigma(times)
    inputs = {"time": sigma if self.sigma_conditioning else times}
    if self.weighted_embedding_gamma is not None:
      inputs.update(mask_weight=hybrid.mask_embedding_weight(sigma,
                                                             self.weighted_embedding_gamma),
                    mask_id=self.special_ids.mask)
    return inputs

  def init_variables(self, rng: Array, batch_size: int, seq_len: int) -> dict[str, Any]:
    return self.module.init(rng, jnp.ones((batch_size, seq_len), jnp.int32),
                            **self._time_inputs(jnp.ones((batch_size,), jnp.float32)))

  def training_flops(self, input_length: int, output_length: int) -> float:
    """6 x matmul parameters x tokens plus attention (the library's convention)."""
    del output_length  # One stack: the outputs are the inputs' positions.
    cfg = self.network_config
    d = cfg.hidden_size
    per_block = 4 * d * d + 2 * cfg.mlp_ratio * d * d
    if cfg.time_conditioning:
      per_block += 6 * d * cfg.cond_dim
    dense = 6 * (cfg.num_blocks * per_block + d * cfg.vocab_size) * input_length
    return float(dense + 3 * 4 * d * cfg.num_blocks * input_length ** 2)

  def is_added_param(self, path: tuple[str, ...]) -> bool:
    """False: no checkpoint of another shape is converted into a DDiT."""
    del path
    return False

  def logits(self, params: Params, noisy: Array, times: Array,
             dropout_rng: Optional[Array] = None) -> Array:
    """Float32 logits ``[B, L, V]`` of ``noisy [B, L]`` at ``times`` (``[B]`` or ``[B, L]``;
    unused without time conditioning)."""
    return self.module.apply({"params": params}, noisy, **self._time_inputs(times),
                             enable_dropout=dropout_rng is not None,
                             rngs=None if dropout_rng is None else {"dropout": dropout_rng})

  def masked_logits(self, params: Params, noisy: Array, attention_mask: Array) -> Array:
    """Float32 logits ``[B, L, V]`` under ``attention_mask`` (bool ``[L, L]``; no time
    input)."""
    return self.module.apply({"params": params}, noisy, None, attention_mask=attention_mask)

  def block_logits(self, params: Params, cache: Optional[dict[str, Any]], block: Array
                   ) -> tuple[Array, dict[str, Any]]:
    """Block decoding with the KV cache (no time input): float32 logits ``[B, w, V]`` of
    ``block [B, w]`` placed after the cached positions, attending to them and to each other,
    and the cache with the block appended (keep it to commit the block, drop it to evaluate the
    block again). ``cache`` None: an empty one."""
    variables = {"params": params} if cache is None else {"params": params, "cache": cache}
    logits, mutated = self.module.apply(variables, block, None, decode=True, mutable=["cache"])
    return logits, mutated["cache"]
