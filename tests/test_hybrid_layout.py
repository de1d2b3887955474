"""The epsilon-hybrid's masked training (``/work/shared/design/hybrid.md`` sec. 5 and test 8 of
sec. 7): the efficient ``[y; x]`` layout's mask, its loss equal to the sum of the per-chunk
losses of separate standard-mask forwards under the same noise (block and slide schedules,
float32), and the standard layout's masked training forward equal to what the sampler computes
(``attention = "schedule"``) for the same state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import denoiser_networks, network
from glauber_jax.processes import hybrid, hybrid_process, hyperschedules
from test_glauber_end_to_end import VOCAB

SEQ_LEN = 8
MASK = VOCAB.sentinel_id(0)


def denoiser_and_params(position_scheme: str = "rope"
                        ) -> tuple[denoiser_networks.SingleStackDenoiser, dict]:
  config = network.NetworkConfig(
      vocab_size=VOCAB.vocab_size, d_model=32, num_heads=2, head_dim=16, d_ff=64,
      num_encoder_layers=2, max_encoder_length=SEQ_LEN, dtype="float32",
      position_scheme=position_scheme, time_conditioning=False)
  denoiser = denoiser_networks.SingleStackDenoiser(config, VOCAB)
  return denoiser, denoiser.init_variables(jax.random.PRNGKey(0), 2, SEQ_LEN)["params"]


def process(kind: str, width: int, levels: int, layout: str = "efficient"
            ) -> hybrid_process.EpsilonHybridProcess:
  return hybrid_process.EpsilonHybridProcess(
      SEQ_LEN, epsilon=0.3, balance=0.7, annealed=True, train_schedule=kind, train_width=width,
      train_levels=levels, train_attention="schedule", train_layout=layout)


def data(batch: int) -> jax.Array:
  return jnp.asarray(np.random.default_rng(0).integers(3, VOCAB.vocab_size, (batch, SEQ_LEN)),
                     jnp.int32)


def test_efficient_mask_golden() -> None:
  """d = 4, blocks of 2, block-causal clean context (rows: queries)."""
  mask = hyperschedules.efficient_attention_mask(np.array([0, 0, 2, 2]), "block_causal", 2)
  golden = ["##......",
            "##......",
            "####....",
            "####....",
            "....##..",
            "....##..",
            "##....##",
            "##....##"]
  np.testing.assert_array_equal(mask, np.array([[c == "#" for c in row] for row in golden]))
  with pytest.raises(ValueError, match="causal"):
    hyperschedules.efficient_attention_mask(np.zeros(4, int), "full", 2)


def test_partition_mask_equals_the_schedule_masks() -> None:
  """The traced-call mask of masked training is the schedule's, call by call."""
  schedule = hyperschedules.make("slide", SEQ_LEN, 4, width=3)
  tables = schedule.tables()
  masks = hyperschedules.partition_attention_mask(jnp.asarray(tables["settled"]),
                                                  jnp.asarray(tables["active"]), "causal", 3,
                                                  xp=jnp)
  for call in range(1, schedule.num_calls + 1):
    np.testing.assert_array_equal(np.asarray(masks[call - 1]),
                                  schedule.attention_mask(call, "causal"))


def _call_of_chunk(schedule: hyperschedules.Hyperschedule, start: int, end: int,
                   times: np.ndarray) -> int:
  """The call whose active positions are ``[start, end)`` at the times ``times``."""
  matches = [c for c in range(1, schedule.num_calls + 1)
             if (schedule.partition(c)[1] == (np.arange(SEQ_LEN) >= start)
                 & (np.arange(SEQ_LEN) < end)).all()
             and np.allclose(schedule.times(c)[start:end], times, rtol=0, atol=1e-6)]
  assert len(matches) == 1, (start, end, matches)
  return matches[0]


@pytest.mark.parametrize("kind, width, levels, position_scheme", [
    ("block", 2, 3, "rope"), ("block", 3, 4, "relative"), ("slide", 3, 4, "rope"),
    ("flat", None, 5, "rope")])
def test_efficient_loss_equals_per_chunk_standard_losses(kind: str, width: int, levels: int,
                                                         position_scheme: str) -> None:
  """Test 8: one ``2L`` forward's HDCE sum equals, chunk by chunk, the standard-mask forwards of
  the chunks' own calls (clean context before the chunk, the same noisy tokens in it, idle
  after it) under the same noise."""
  denoiser, params = denoiser_and_params(position_scheme)
  training = process(kind, width, levels)
  schedule = training.train_schedule
  batch, _ = training.forward(denoiser, params, None, data(3), jnp.array(0),
                              jax.random.PRNGKey(5))
  loss, metrics = training.loss(denoiser, params, batch, None)
  assert float(metrics["weight_sum"]) == 3 * SEQ_LEN
  batch = {name: np.asarray(value) for name, value in batch.items()}
  expected = 0.0
  chunks = 0
  for row in range(3):
    starts = batch["chunk_start"][row]
    for start in np.unique(starts):
      end = start + int((starts == start).sum())
      call = _call_of_chunk(schedule, start, end, batch["levels"][row, start:end])
      settled, active, _ = schedule.partition(call)
      tokens = np.where(settled, batch["targets"][row],
                        np.where(active, batch["noisy"][row], MASK))[None]
      logits = denoiser.masked_logits(params, jnp.asarray(tokens),
                                      jnp.asarray(schedule.attention_mask(
                                          call, schedule.sampling_context())))
      log_probs = jax.nn.log_softmax(jnp.where(
          jnp.asarray(denoiser.allowed_tokens) & (jnp.arange(VOCAB.vocab_size) != MASK),
          logits, -jnp.inf))
      weights = hybrid.hdce_weights(batch["masked"][row], batch["shuffled"][row],
                                    batch["levels"][row], 0.3, 0.7, annealed=True)
      entropy = hybrid.token_cross_entropy(log_probs[0], jnp.asarray(batch["targets"][row]))
      expected += float(jnp.sum(jnp.where(active, weights * entropy, 0.0)))
      chunks += 1
  assert chunks >= 3  # One chunk per row for flat, several otherwise.
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_efficient_slide_chunks_cover_the_calls_of_one_residue() -> None:
  """A slide row with shift ``r`` trains every call ``c = r (mod w)``: chunks ``[0, r)``,
  ``[r, r + w)``, ... at the window levels."""
  training = process("slide", 3, 4)
  schedule = training.train_schedule
  chunk_start, times = training._efficient_levels(jax.random.PRNGKey(0), 16)
  for row in range(16):
    starts = np.asarray(chunk_start[row])
    calls = {_call_of_chunk(schedule, s, s + int((starts == s).sum()),
                            np.asarray(times[row])[starts == s]) for s in np.unique(starts)}
    (residue,) = {c % 3 for c in calls}
    assert calls == {c for c in range(1, schedule.num_calls + 1) if c % 3 == residue}


@pytest.mark.parametrize("kind, width, levels", [("block", 4, 3), ("slide", 3, 4)])
def test_schedule_training_logits_equal_the_samplers(kind: str, width: int, levels: int) -> None:
  """``train_attention = "schedule"``: at the active positions, the training forward's logits
  are the sampler's (``masked_logits`` under the call's mask, ``attention = "schedule"``) for
  the same tokens; idle positions do not matter."""
  denoiser, params = denoiser_and_params()
  training = process(kind, width, levels, layout="standard")
  schedule = training.train_schedule
  batch, _ = training.forward(denoiser, params, None, data(6), jnp.array(0),
                              jax.random.PRNGKey(2))
  logits = np.asarray(training.training_logits(denoiser, params, batch))
  sampler_options = training.sampler_options(hybrid_process.HybridSamplerOptions(
      schedule=kind, width=width, num_levels=levels, attention="schedule"))
  assert training.hyperschedule(sampler_options) == schedule
  noisy = np.asarray(batch["noisy"])
  for row in range(6):
    call = int(batch["times"][row]) + 1
    _, active, idle = schedule.partition(call)
    np.testing.assert_array_equal(np.asarray(batch["active"][row]), active)
    scrambled = np.where(idle, 5, noisy[row])[None]  # Idle tokens are hidden.
    sampled = denoiser.masked_logits(params, jnp.asarray(scrambled), jnp.asarray(
        schedule.attention_mask(call, schedule.sampling_context())))
    np.testing.assert_allclose(np.asarray(sampled)[0, active], logits[row, active], atol=1e-5,
                               rtol=0)


def test_masked_training_options_are_checked() -> None:
  with pytest.raises(ValueError, match="annealed"):
    hybrid_process.EpsilonHybridProcess(SEQ_LEN, train_attention="schedule")
  with pytest.raises(ValueError, match="masked"):
    hybrid_process.EpsilonHybridProcess(SEQ_LEN, annealed=True, train_layout="efficient")
  with pytest.raises(ValueError, match="train_layout"):
    hybrid_process.EpsilonHybridProcess(SEQ_LEN, train_layout="shifted")
