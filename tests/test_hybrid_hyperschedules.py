"""Hyperschedules (``processes.hyperschedules``): the golden level tables of the reference code
(``/work/shared/design/hybrid.md`` sec. 1, tests 4-6 and 15 of sec. 7), their invariants, the
level-to-time map, the attention masks and the eq. 11 block weighting."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from glauber_jax.processes import hyperschedules


def rows(text: str) -> np.ndarray:
  return np.array([int(c) for c in text.replace(" ", "")])


def test_golden_block_levels() -> None:
  schedule = hyperschedules.make("block", 8, 3, width=4)
  assert schedule.num_calls == 6
  np.testing.assert_array_equal(schedule.levels(1), rows("2222 3333"))
  np.testing.assert_array_equal(schedule.levels(2), rows("1111 3333"))
  np.testing.assert_array_equal(schedule.levels(3), rows("0000 3333"))
  np.testing.assert_array_equal(schedule.levels(4), rows("0000 2222"))
  assert schedule.num_settled(3) == 0 and schedule.num_settled(4) == 4
  np.testing.assert_array_equal(schedule.levels(6), np.zeros(8))


def test_golden_slide_levels() -> None:
  schedule = hyperschedules.make("slide", 8, 4, width=4)
  assert schedule.num_calls == 11
  np.testing.assert_array_equal(schedule.levels(1), rows("3444 4444"))
  np.testing.assert_array_equal(schedule.levels(4), rows("0123 4444"))
  np.testing.assert_array_equal(schedule.levels(5), rows("0012 3444"))
  assert schedule.num_settled(4) == 0 and schedule.num_settled(5) == 1
  np.testing.assert_array_equal(schedule.levels(11), np.zeros(8))
  np.testing.assert_array_equal(hyperschedules.make("slide", 8, 8, width=4).window_levels(),
                                [0, 2, 5, 7])


def test_golden_flat_and_quench_levels() -> None:
  flat = hyperschedules.make("flat", 8, 5)
  assert flat.num_calls == 5
  for call in range(1, 6):
    np.testing.assert_array_equal(flat.levels(call), np.full(8, 5 - call))
  quench = hyperschedules.make("quench", 4, 7)
  assert quench.num_calls == 4 and quench.num_levels == 1
  np.testing.assert_array_equal(quench.levels(2), [0, 0, 1, 1])
  settled, active, idle = quench.partition(2)
  np.testing.assert_array_equal(settled, [1, 0, 0, 0])
  np.testing.assert_array_equal(active, [0, 1, 0, 0])
  np.testing.assert_array_equal(idle, [0, 0, 1, 1])


SCHEDULES = [hyperschedules.make(kind, d, levels, width)
             for kind, d, levels, width in itertools.product(
                 ("block", "slide"), (1, 5, 8, 13), (1, 3, 4, 6), (1, 2, 4, 5))
             if width <= d and (kind != "slide" or levels >= width)
                 and (kind, width) != ("slide", 1)]
SCHEDULES += [hyperschedules.make("slide", d, 1, width=1) for d in (1, 5)]
SCHEDULES += [hyperschedules.make("flat", d, levels) for d in (1, 7) for levels in (1, 4)]
SCHEDULES += [hyperschedules.make("quench", d, 1) for d in (1, 6)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=str)
def test_invariants(schedule: hyperschedules.Hyperschedule) -> None:
  d, width = schedule.seq_len, schedule.width
  expected_calls = (d + width - 1 if schedule.kind == "slide"
                    else schedule.num_levels * -(-d // width))
  assert schedule.num_calls == expected_calls
  tables = schedule.tables()
  levels = tables["levels"]
  assert (levels[0] <= schedule.num_levels).all() and (levels[-1] == 0).all()
  assert (np.diff(levels, axis=0) <= 0).all()  # Levels never increase.
  partition = tables["settled"].astype(int) + tables["active"] + ~(tables["settled"]
                                                                    | tables["active"])
  assert (partition == 1).all()
  assert (tables["active"].sum(axis=1) <= width).all()
  assert (tables["final"].sum(axis=0) == 1).all()  # One last call per position.
  assert (levels[tables["settled"]] == 0).all()
  # A position settles right after its final call and stays settled.
  final_call = np.argmax(tables["final"], axis=0)
  for i in range(d):
    assert not tables["settled"][: final_call[i] + 1, i].any()
    assert tables["settled"][final_call[i] + 1:, i].all()


def test_level_to_time_map() -> None:
  schedule = hyperschedules.make("block", 8, 5, width=4)
  times = schedule.times(5)  # Block 0 at level 0 (its last call), block 1 idle.
  np.testing.assert_allclose(times[:4], 1e-3, rtol=1e-6)
  np.testing.assert_allclose(times[4:], 0.9999, rtol=1e-6)
  np.testing.assert_allclose(schedule.times(1)[:4], 0.999, rtol=1e-6)  # Level T - 1.
  np.testing.assert_allclose(schedule.times(6)[:4], 1e-4, rtol=1e-6)  # Settled.
  middle = schedule.times(3)[0]  # Level 2 of 0..4: halfway.
  np.testing.assert_allclose(middle, 0.5, rtol=1e-6)


def test_golden_mask_and_mask_properties() -> None:
  schedule = hyperschedules.make("block", 8, 3, width=4)
  mask = schedule.attention_mask(4, "causal")
  np.testing.assert_array_equal(mask[:4, :4], np.tril(np.ones((4, 4), bool)))
  assert not mask[:4, 4:].any() and mask[4:].all()
  for candidate in SCHEDULES:
    for call in range(1, candidate.num_calls + 1):
      settled, active, idle = candidate.partition(call)
      for context in hyperschedules.CONTEXTS:
        mask = candidate.attention_mask(call, context)
        assert not mask[np.ix_(settled, active)].any()
        assert not mask[:, idle].any() and not mask[idle].any()
        assert mask[np.ix_(active, settled | active)].all()
        assert np.diag(mask)[settled | active].all()


def test_block_weighting() -> None:
  np.testing.assert_array_equal(hyperschedules.block_weighting(8, 4), [0] * 4 + [1] * 4)
  np.testing.assert_array_equal(hyperschedules.block_weighting(12, 4),
                                [0] * 4 + [0.5] * 4 + [1] * 4)
  np.testing.assert_array_equal(hyperschedules.block_weighting(8, 8), np.ones(8))


def test_bad_settings_are_refused() -> None:
  with pytest.raises(ValueError, match="num_levels >= width"):
    hyperschedules.make("slide", 8, 2, width=4)
  with pytest.raises(ValueError, match="width 1"):
    hyperschedules.make("slide", 8, 2, width=1)
  with pytest.raises(ValueError, match="needs a width"):
    hyperschedules.make("block", 8, 2)
  with pytest.raises(ValueError, match="kind"):
    hyperschedules.make("spiral", 8, 2, width=2)
  with pytest.raises(ValueError, match="call"):
    hyperschedules.make("flat", 8, 2).levels(3)
