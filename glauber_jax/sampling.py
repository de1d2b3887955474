"""Categorical sampling shared by autoregressive decoding and the diffusion samplers.

Precision. Gumbel-max sampling draws ``argmax(logits + g)`` with ``g`` standard Gumbel noise. The
usual float32 noise ``-log(-log(u))`` has ``u`` on a ``2**-23`` grid, so ``g`` never exceeds about
16 and a token whose probability is below ~1e-7 of the favourite's is drawn too rarely or never: the
effective temperature drops (Zheng et al. 2024). Low-precision logits (bfloat16, float16) make it
far worse, because ``jax.random.categorical`` draws its noise in the logits' dtype.

Here the logits are cast to float32 (at least) and each Gumbel variate is built from 64 random
bits so that both of its tails keep full float32 relative precision down to probabilities of
``2**-64``: the noise reaches ``g ~ 45``, and no token with a probability ratio above ~1e-19 is
truncated. What remains is float32 rounding of ``logit + g`` (a relative error ~1e-6 in each
token's probability, the resolution of the float32 logits themselves). Gumbel-max needs no
cumulative sum, whose float32 rounding (ulp(1) ~ 6e-8) would truncate the tail again, and no sort
unless top-k / top-p filtering asks for one. ``jax_enable_x64`` is not needed.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
  """Settings of a sampler (hashable: one compiled program per distinct value).

  Each sampler subclasses this with its own settings; ``models.BaseModel.sampler_options``
  builds it from a mapping (for example ``infer.sampler_options`` in gin) and rejects names the
  sampler does not have.

  Attributes:
    temperature: temperature of the sampler's draws (0: greedy).
    top_k: keep the ``k`` most likely tokens (0: all).
    top_p: nucleus mass kept (1.0: all).
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0


class Samples(NamedTuple):
  """What a sampler returns.

  Attributes:
    draft: ``[B, L]`` a first draft the sampler then refined (the Glauber process's CAUSAL-GEN
      draft before its rounds); None for samplers without one.
    final: ``[B, L]`` the samples.
  """

  draft: Optional[Array]
  final: Array


def checked_prefix(prefix: Optional[Array], batch_size: int, seq_len: int) -> Array:
  """``prefix [B, P]`` as int32 (``[B, 0]`` when None), checked against the batch and ``L``."""
  if prefix is None:
    return jnp.zeros((batch_size, 0), jnp.int32)
  if prefix.ndim != 2 or prefix.shape[0] != batch_size:
    raise ValueError(f"prefix must be [batch_size={batch_size}, P], got {prefix.shape}.")
  if prefix.shape[1] >= seq_len:
    raise ValueError(f"prefix length {prefix.shape[1]} leaves nothing to generate (L = "
                     f"{seq_len}).")
  return prefix.astype(jnp.int32)


def gumbel_from_bits(high: Array, low: Array) -> Array:
  """Standard Gumbel variates from two uint32 words each, in float32, accurate in both tails.

  The 64 bits encode a uniform ``U`` on the midpoints of a ``2**-64`` grid of (0, 1): the top bit
  of ``high`` says which half ``U`` lies in, the other 63 bits the distance ``r`` in (0, 1/2) from
  ``U`` to the nearer end of the interval, computed in float32 with full relative precision. The
  Gumbel variate is ``-log(E)`` with ``E = -log(U)`` exponential: ``E = -log(r)`` when ``U = r``
  and ``E = -log1p(-r)`` when ``U = 1 - r``, so neither a tiny ``U`` (very negative ``g``) nor a
  ``U`` close to one (large ``g``, the tail that lets improbable tokens win) loses resolution.
  """
  upper_half = high >= jnp.uint32(1 << 31)
  distance = ((high & jnp.uint32((1 << 31) - 1)).astype(jnp.float32) * 2.0 ** -32
              + low.astype(jnp.float32) * 2.0 ** -64 + 2.0 ** -65)
  exponential = jnp.where(upper_half, -jnp.log1p(-distance), -jnp.log(distance))
  return -jnp.log(exponential)


def gumbel_noise(rng: Array, shape: tuple[int, ...]) -> Array:
  """Float32 standard Gumbel noise of ``shape``, 64 random bits per variate."""
  bits = jax.random.bits(rng, (2, *shape), jnp.uint32)
  return gumbel_from_bits(bits[0], bits[1])


def _gumbel_argmax(rng: Array, logits: Array) -> Array:
  """One draw from ``softmax(logits)`` along the last axis (``-inf`` logits are never drawn)."""
  return jnp.argmax(logits + gumbel_noise(rng, logits.shape), axis=-1).astype(jnp.int32)


def _mask_top_p(sorted_logits: Array, top_p: float) -> Array:
  """Sets to ``-inf`` all but the smallest prefix of descending logits whose mass reaches top_p.

  Token ``j`` stays when the mass of the tokens ranked before it is below ``top_p``; the first
  (most probable) token always stays.
  """
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = (mass_before < top_p).at[..., 0].set(True)
  return jnp.where(keep, sorted_logits, -jnp.inf)


def sample_categorical(rng: Array, logits: Array, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0) -> Array:
  """Draws token ids ``[...]`` from ``softmax(logits / temperature)`` over the last axis.

  Args:
    rng: PRNG key (raw or typed).
    logits: ``[..., vocab]`` unnormalised log-probabilities, any float dtype; computed in float32
      or wider. ``-inf`` entries are never drawn.
    temperature: a Python number; 0 means greedy (argmax, filters irrelevant).
    top_k: keep only the ``top_k`` most probable tokens (0: no limit). Ties at the boundary go to
      the lower token id, so exactly ``min(top_k, vocab)`` tokens remain.
    top_p: nucleus filtering after temperature and top-k: keep the smallest set of most probable
      tokens whose probability mass reaches ``top_p`` (the most probable token always stays).
      1.0 disables it.

  Returns:
    int32 ids with the shape of ``logits`` minus its last axis.
  """
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}.")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0, got {top_k}.")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k == 0 and top_p == 1.0:
    return _gumbel_argmax(rng, logits)
  vocab = logits.shape[-1]
  candidates, candidate_ids = jax.lax.top_k(logits, min(top_k, vocab) if top_k else vocab)
  if top_p < 1.0:
    candidates = _mask_top_p(candidates, top_p)
  choice = _gumbel_argmax(rng, candidates)
  return jnp.take_along_axis(candidate_ids, choice[..., None], axis=-1)[..., 0]


def coin_flips(rng: Array, prob: Array, shape: tuple[int, ...]) -> Array:
  """Bernoulli(``prob``) draws of ``shape`` (bool), as two-way ``sample_categorical`` draws."""
  prob = jnp.broadcast_to(jnp.asarray(prob, jnp.float32), shape)
  logits = jnp.stack([jnp.log1p(-prob), jnp.log(prob)], axis=-1)
  return sample_categorical(rng, logits) == 1
