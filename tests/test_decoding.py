"""KV-cache decoding against full recomputation; EOS masking, prefix forcing, compilation."""

import dataclasses
import logging
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import decoding, encoder_decoder
from helpers import TINY_NETWORK

BATCH, ENCODER_LENGTH = 3, 10


def _random_params(module: encoder_decoder.Transformer, encoder_tokens: jax.Array,
                   time: Optional[jax.Array]):
  """Initial params, with the (zero-initialised) time modulation randomised so time matters."""
  params = nn.meta.unbox(module.init(jax.random.key(0), encoder_tokens, encoder_tokens[:, :2],
                                     time)["params"])
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.05 * jax.random.normal(jax.random.key(len(path)), x.shape)
      if "modulation" in jax.tree_util.keystr(path) else x, params)


def _setup(position_scheme: str = "relative", time_conditioning: bool = False):
  """A random tiny float32 network, its params, encoder tokens (row 1 padded) and times."""
  config = dataclasses.replace(TINY_NETWORK, position_scheme=position_scheme,
                               time_conditioning=time_conditioning)
  module = encoder_decoder.Transformer(config)
  rng = np.random.RandomState(0)
  encoder_tokens = rng.randint(3, config.vocab_size, (BATCH, ENCODER_LENGTH))
  encoder_tokens[1, 6:] = 0
  encoder_tokens = jnp.asarray(encoder_tokens, jnp.int32)
  time = jnp.asarray([0.1, 0.5, 0.9], jnp.float32) if time_conditioning else None
  params = jax.jit(_random_params, static_argnums=0)(module, encoder_tokens, time)
  return module, params, encoder_tokens, time


def _greedy_reference(module: encoder_decoder.Transformer, params, encoder_tokens, length: int,
                      time,
                      prefix: Optional[np.ndarray] = None,
                      prefix_lengths: Optional[np.ndarray] = None,
                      eos_id: Optional[int] = None) -> np.ndarray:
  """Greedy decoding in a Python loop that re-runs the full decoder (no cache) at every step.

  Each step feeds the whole ``[start, outputs...]`` sequence, zero-filled beyond the tokens
  chosen so far (the decoder is causal, so that filling cannot reach position ``i``), which keeps
  one input shape and one compilation.
  """
  batch = encoder_tokens.shape[0]
  full_logits = jax.jit(module.apply)
  outputs = np.zeros((batch, length), np.int32)
  done = np.zeros(batch, bool)
  if prefix_lengths is None:
    prefix, prefix_lengths = np.zeros((batch, length), np.int32), np.zeros(batch, np.int32)
  for i in range(length):
    decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), outputs[:, :-1]], axis=1)
    logits = full_logits({"params": params}, encoder_tokens, jnp.asarray(decoder_inputs), time)
    choice = np.where(done, 0, np.argmax(np.asarray(logits[:, i]), axis=-1))
    forced = i < prefix_lengths
    outputs[:, i] = np.where(forced, prefix[:, min(i, prefix.shape[1] - 1)], choice)
    if eos_id is not None:
      done |= ~forced & (outputs[:, i] == eos_id)
  return outputs


@pytest.mark.parametrize("position_scheme, time_conditioning",
                         [("relative", False), ("rope", False), ("rope", True)])
def test_cached_greedy_equals_full_recomputation(position_scheme, time_conditioning):
  module, params, encoder_tokens, time = _setup(position_scheme, time_conditioning)
  length = module.config.max_decoder_length
  decoded = decoding.decode(module, params, encoder_tokens, jax.random.key(1), time=time,
                            temperature=0.0, eos_id=None)
  assert decoded.shape == (BATCH, length) and decoded.dtype == jnp.int32
  np.testing.assert_array_equal(decoded,
                                _greedy_reference(module, params, encoder_tokens, length, time))


def test_eos_masks_later_positions():
  module, params, encoder_tokens, _ = _setup("relative", True)
  time = jnp.asarray([0.1, 0.5, 0.9], jnp.float32)
  length = module.config.max_decoder_length
  unmasked = _greedy_reference(module, params, encoder_tokens, length, time)
  eos_id = int(unmasked[0, 2])
  expected = _greedy_reference(module, params, encoder_tokens, length, time, eos_id=eos_id)
  assert np.all(expected[0, 3:] == 0)  # the test exercises masking.
  decoded = decoding.decode(module, params, encoder_tokens, jax.random.key(1), time=time,
                            temperature=0.0, eos_id=eos_id)
  np.testing.assert_array_equal(decoded, expected)


def test_prefix_is_forced_and_conditions_the_continuation():
  """Per-row prefix lengths 3, 0, 5 (with EOS inside a prefix, which does not end the row)."""
  module, params, encoder_tokens, _ = _setup("rope")
  length = 6
  prefix = np.random.RandomState(1).randint(3, module.config.vocab_size, (BATCH, 5))
  prefix_lengths = np.array([3, 0, 5])
  eos_id = int(prefix[2, 1])
  expected = _greedy_reference(module, params, encoder_tokens, length, None, prefix,
                               prefix_lengths, eos_id)
  decoded = decoding.decode(module, params, encoder_tokens, jax.random.key(1), length,
                            temperature=0.0, decoder_prefix=jnp.asarray(prefix),
                            decoder_prefix_lengths=jnp.asarray(prefix_lengths), eos_id=eos_id)
  np.testing.assert_array_equal(decoded, expected)
  assert decoded[2, 5] != 0


def test_sampler_never_overwrites_the_prefix():
  """Sampling at temperature 2, prefix lengths from the padding, 0 to the full length.

  Row 3's prefix ends in EOS, which does not stop the row: its later positions are sampled.
  """
  module, params, _, _ = _setup("relative")
  length = module.config.max_decoder_length
  rng = np.random.RandomState(2)
  encoder_tokens = jnp.asarray(rng.randint(3, module.config.vocab_size, (8, 7)), jnp.int32)
  prefix_lengths = np.array([0, 1, 2, 3, 4, 6, 7, 8])
  prefix = rng.randint(2, module.config.vocab_size, (8, length))
  prefix[3, 2] = 1
  prefix[np.arange(length)[None, :] >= prefix_lengths[:, None]] = 0
  decoded = np.asarray(decoding.decode(module, params, encoder_tokens, jax.random.key(3),
                                       temperature=2.0, decoder_prefix=jnp.asarray(prefix)))
  for row, prefix_length in enumerate(prefix_lengths):
    np.testing.assert_array_equal(decoded[row, :prefix_length], prefix[row, :prefix_length])
  assert np.any(decoded[3, 3:] != 0)


def test_deterministic_under_a_key():
  module, params, encoder_tokens, _ = _setup("relative")
  sample = lambda seed: np.asarray(decoding.decode(  # noqa: E731
      module, params, encoder_tokens, jax.random.key(seed), top_k=20, top_p=0.95))
  np.testing.assert_array_equal(sample(4), sample(4))
  assert np.any(sample(4) != sample(5))


def _primitive_names(jaxpr: jax.extend.core.Jaxpr) -> list[str]:
  names = []
  for equation in jaxpr.eqns:
    names.append(equation.primitive.name)
    for value in equation.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          names += _primitive_names(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          names += _primitive_names(sub)
  return names


def test_one_static_loop_and_one_compilation(caplog):
  """The program holds one scan and no while_loop; a same-shape batch does not recompile."""
  module, params, encoder_tokens, _ = _setup("rope")
  batch_a = jnp.concatenate([encoder_tokens, encoder_tokens], axis=0)  # an unused batch size
  batch_b = jnp.flip(batch_a, axis=1)
  run = lambda tokens, seed: decoding.decode(  # noqa: E731
      module, params, tokens, jax.random.key(seed), top_k=10)
  names = _primitive_names(jax.make_jaxpr(run)(batch_a, 0).jaxpr)
  assert names.count("scan") == 1 and "while" not in names, sorted(set(names))
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    run(batch_a, 0).block_until_ready()
    first = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    caplog.clear()
    run(batch_b, 1).block_until_ready()
    second = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
  assert any("decode" in message for message in first), first
  assert not second, second


def test_rejects_too_long_decodes():
  module, params, encoder_tokens, _ = _setup("relative")
  with pytest.raises(ValueError, match="max_decode_length"):
    decoding.decode(module, params, encoder_tokens, jax.random.key(0),
                    module.config.max_decoder_length + 1)
