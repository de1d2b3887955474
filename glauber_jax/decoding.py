"""Compiled autoregressive decoding with a KV cache.

``sample_with_cache`` is the one sampling loop over a cached ``tokens_to_logits`` step (as in
T5X's decoding), shared by the encoder-decoder (``decode``) and the causal LM
(``baselines.CausalLMModel.generate``): after the start token, a ``lax.fori_loop`` with a static
trip count (no data-dependent ``while_loop``, which on GPU copies its predicate to the host every
step). Each step picks the token at one position, forced from the prefix or sampled, and feeds it
back through the cache. ``decode`` is one jitted program: encode once, one prefill call of the
decoder that feeds the start token and fills the cross-attention cache, then that loop. Rows
that emit EOS are not stopped but masked: every later position holds the pad id 0. The loop
state is built inside the program, so XLA updates the KV cache in place; there is nothing to
donate at the jit boundary.

Token conventions (T5): ``vocabularies.PAD_ID`` (0) is the pad id and also the decoder start
token.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from glauber_jax import encoder_decoder, sampling, vocabularies

Array = jax.Array
Params = Any

#: ``(cache, tokens [B]) -> (next-token logits [B, V], cache)``: one step of a network with a
#: KV cache, feeding the token at the cache position.
TokensToLogits = Callable[[Any, Array], tuple[Array, Any]]


@flax.struct.dataclass
class DecodeState:
  """Loop state after the token at ``position - 1`` is chosen.

  Attributes:
    position: index of the next output token to choose (scalar int32).
    tokens: ``[B, L]`` output buffer; holds the forced prefix before the loop writes samples.
    logits: ``[B, V]`` float32 logits for the token at ``position``.
    cache: the network's ``cache`` collection.
    done: ``[B]`` True once a row has sampled EOS.
  """

  position: Array
  tokens: Array
  logits: Array
  cache: Any
  done: Array


def _choose_token(state: DecodeState, rng: Array, prefix_lengths: Array,
                  allowed_tokens: Optional[Array], temperature: float, top_k: int,
                  top_p: float, eos_id: Optional[int]) -> DecodeState:
  """Writes the token at ``state.position``: the prefix token if forced, else a sample or pad.

  Only sampled EOS ends a row; an EOS inside a forced prefix does not.
  """
  position = state.position
  logits = state.logits
  if allowed_tokens is not None:
    logits = jnp.where(allowed_tokens, logits, -jnp.inf)
  sampled = sampling.sample_categorical(jax.random.fold_in(rng, position), logits, temperature,
                                        top_k, top_p)
  forced = position < prefix_lengths
  current = jax.lax.dynamic_index_in_dim(state.tokens, position, axis=1, keepdims=False)
  token = jnp.where(forced, current, jnp.where(state.done, vocabularies.PAD_ID, sampled))
  done = state.done
  if eos_id is not None:
    done = done | (~forced & (token == eos_id))
  tokens = jax.lax.dynamic_update_index_in_dim(state.tokens, token, position, axis=1)
  return state.replace(position=position + 1, tokens=tokens, done=done)


def sample_with_cache(tokens_to_logits: TokensToLogits, logits: Array, cache: Any,
                      tokens: Array, prefix_lengths: Array, rng: Array, *,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      eos_id: Optional[int] = None,
                      allowed_tokens: Optional[Array] = None) -> Array:
  """The KV-cache sampling loop every autoregressive sampler shares (traced, not jitted).

  Args:
    tokens_to_logits: one cached network step (``TokensToLogits``).
    logits: ``[B, V]`` logits of the first output position (after the start token).
    cache: the cache after the start token.
    tokens: ``[B, L]`` output buffer holding each row's forced prefix.
    prefix_lengths: ``[B]`` forced length of each row.
    rng: PRNG key; position ``i`` samples with ``fold_in(rng, i)``.
    temperature, top_k, top_p: see ``sampling.sample_categorical``; temperature 0 is greedy.
    eos_id: after a row samples it, the row's later outputs are 0; None: no early stop.
    allowed_tokens: ``[V]`` bool; sampled tokens are restricted to the True ids.

  Returns:
    ``[B, L]`` tokens; position ``i`` was generated from positions ``< i``.
  """
  batch, length = tokens.shape
  state = DecodeState(position=jnp.array(0, jnp.int32), tokens=tokens, logits=logits,
                      cache=cache, done=jnp.zeros((batch,), jnp.bool_))
  choose = functools.partial(_choose_token, rng=rng, prefix_lengths=prefix_lengths,
                             allowed_tokens=allowed_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p, eos_id=eos_id)

  def step(_: Array, state: DecodeState) -> DecodeState:
    state = choose(state)
    chosen = jax.lax.dynamic_index_in_dim(state.tokens, state.position - 1, axis=1,
                                          keepdims=False)
    logits, cache = tokens_to_logits(state.cache, chosen)
    return state.replace(logits=logits, cache=cache)

  state = jax.lax.fori_loop(0, length - 1, step, state)
  return choose(state).tokens


def _initial_tokens(batch: int, length: int, prefix: Optional[Array],
                    prefix_lengths: Optional[Array]) -> tuple[Array, Array]:
  """The ``[B, L]`` output buffer holding the prefix, and the prefix lengths ``[B]``."""
  if prefix is None:
    if prefix_lengths is not None:
      raise ValueError("decoder_prefix_lengths needs decoder_prefix.")
    return jnp.zeros((batch, length), jnp.int32), jnp.zeros((batch,), jnp.int32)
  if prefix.ndim != 2 or prefix.shape[0] != batch or prefix.shape[1] > length:
    raise ValueError(f"decoder_prefix must be [batch={batch}, <= {length}], got {prefix.shape}.")
  if prefix_lengths is None:
    prefix_lengths = jnp.sum(prefix != vocabularies.PAD_ID, axis=1)
  prefix_lengths = jnp.clip(prefix_lengths, 0, prefix.shape[1])
  positions = jnp.arange(prefix.shape[1])
  prefix = jnp.where(positions[None, :] < prefix_lengths[:, None], prefix,
                     vocabularies.PAD_ID)
  tokens = jnp.pad(prefix.astype(jnp.int32), ((0, 0), (0, length - prefix.shape[1])))
  return tokens, prefix_lengths.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("module", "max_decode_length", "temperature",
                                             "top_k", "top_p", "eos_id"))
def decode(module: encoder_decoder.Transformer, params: Params, encoder_input_tokens: Array,
           rng: Array,
           max_decode_length: Optional[int] = None, time: Optional[Array] = None,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           decoder_prefix: Optional[Array] = None,
           decoder_prefix_lengths: Optional[Array] = None, eos_id: Optional[int] = 1,
           allowed_tokens: Optional[Array] = None) -> Array:
  """Samples decoder outputs ``[B, max_decode_length]`` (int32) for a batch of encoder inputs.

  Args:
    module: the ``encoder_decoder.Transformer`` (static: its config keys the compilation cache).
    params: its parameters (the ``params`` collection, boxed or plain).
    encoder_input_tokens: ``[B, S]`` int32, 0-padded.
    rng: PRNG key; step ``i`` samples with ``fold_in(rng, i)``.
    max_decode_length: output length, at most ``config.max_decoder_length`` (the default).
    time: ``[B]`` (or scalar) diffusion times for a time-conditioned network, else None.
    temperature, top_k, top_p: see ``sampling.sample_categorical``; temperature 0 is greedy.
    decoder_prefix: ``[B, P]`` tokens to force at the first positions of each row (prefix-
      conditioned generation), ``P <= max_decode_length``. They are copied to the output as is.
    decoder_prefix_lengths: ``[B]`` forced length of each row, at most ``P``; by default the
      number of non-pad tokens of the prefix row (the prefix is right-padded with 0).
    eos_id: end-of-sequence id; after a row samples it, the row's later outputs are 0. None
      disables early stopping.
    allowed_tokens: ``[V]`` bool; sampled tokens are restricted to the True ids (the Glauber
      sampler excludes pad, EOS, sentinels and mode tokens). None: every id.

  Returns:
    The decoded tokens; position ``i`` was generated from positions ``< i``.
  """
  length = module.config.max_decoder_length if max_decode_length is None else max_decode_length
  if not 0 < length <= module.config.max_decoder_length:
    raise ValueError(f"max_decode_length={length} must be in [1, "
                     f"{module.config.max_decoder_length}] (the network's KV-cache length).")
  params = nn.meta.unbox(params)
  batch = encoder_input_tokens.shape[0]
  tokens, prefix_lengths = _initial_tokens(batch, length, decoder_prefix, decoder_prefix_lengths)
  encoded = module.apply({"params": params}, encoder_input_tokens, time,
                         method=encoder_decoder.Transformer.encode)

  def decoder_step(cache: Any, step_tokens: Array) -> tuple[Array, Any]:
    variables = ({"params": params} if cache is None
                 else {"params": params, "cache": cache})
    logits, updated = module.apply(
        variables, encoded, encoder_input_tokens, step_tokens[:, None], time, decode=True,
        prefill=cache is None, mutable=["cache"], method=encoder_decoder.Transformer.decode)
    return logits[:, 0], updated["cache"]

  logits, cache = decoder_step(None, jnp.full((batch,), vocabularies.PAD_ID, jnp.int32))
  return sample_with_cache(decoder_step, logits, cache, tokens, prefix_lengths, rng,
                           temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                           allowed_tokens=allowed_tokens)
