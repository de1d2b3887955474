"""Training that survives what clusters do to it: non-finite steps are skipped and counted,
corrupt checkpoints are set aside for the newest one that verifies, one writer per model
directory, and user mistakes end in one line."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import pytest

from glauber_jax import checkpoints, errors, models, optimizers, partitioning, train, trainer
from helpers import TINY_NETWORK, SyntheticBatches

BATCH = 8


@pytest.fixture(scope="module")
def tr() -> trainer.Trainer:
  """One trainer for the module, so its step compiles once."""
  return trainer.Trainer(
      models.EncoderDecoderModel(TINY_NETWORK), partitioning.Partitioner(mesh_shape=(-1, 1, 1)),
      learning_rate_fn=optimizers.learning_rate_schedule(3e-3, warmup_steps=2, total_steps=50),
      max_consecutive_nonfinite_steps=3)


def _as_numpy(tree: Any) -> Any:
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_trees_equal(a: Any, b: Any) -> None:
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


class PoisonedBatches(SyntheticBatches):
  """``SyntheticBatches`` whose loss weights are NaN for the batch indices in ``poisoned``."""

  def __init__(self, poisoned: set[int], **kwargs: Any) -> None:
    super().__init__(BATCH, **kwargs)
    self.poisoned = poisoned

  def __next__(self) -> dict[str, np.ndarray]:
    index = self.index
    batch = super().__next__()
    if index in self.poisoned:
      batch["decoder_loss_weights"] = np.full_like(batch["decoder_loss_weights"], np.nan)
    return batch


# ---- Non-finite guard ---------------------------------------------------------------------------


def test_a_nan_batch_is_skipped_inside_the_step_and_counted(tr: trainer.Trainer) -> None:
  data = PoisonedBatches({2})
  state = tr.initialize(data.input_shapes())
  flags = []
  for index in range(4):
    if index == 2:
      before = _as_numpy((state.params, state.opt_state))
    state, metrics = tr.train_step(state, next(data))
    flags.append(float(metrics["skipped_step"]))
    if index == 2:
      assert not np.isfinite(float(metrics["loss"]))
      _assert_trees_equal(before, _as_numpy((state.params, state.opt_state)))
  assert flags == [0.0, 0.0, 1.0, 0.0]
  assert int(state.step) == 4  # The step counter (and the data) moved on.
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(_as_numpy(state.params)))


def test_a_nan_parameter_stops_training_after_k_skips_and_nothing_non_finite_is_saved(
    tr: trainer.Trainer, tmp_path: pathlib.Path) -> None:
  data = SyntheticBatches(BATCH)
  shapes = data.input_shapes()
  checkpointer = checkpoints.Checkpointer(str(tmp_path), period=1, async_save=False)
  result = train.train_loop(tr, checkpointer, data, shapes, train_steps=2, show_progress=False)
  state = result.state
  kernel = state.params["decoder"]["logits_dense"]["kernel"]
  poisoned = state.replace(params={**state.params, "decoder": {
      **state.params["decoder"], "logits_dense": {"kernel": kernel.at[0, 0].set(np.nan)}}})
  for index in range(2):
    poisoned, metrics = tr.train_step(poisoned, next(data))
    assert float(metrics["skipped_step"]) == 1.0
  # Through the loop: restoring step 2 and poisoning the data stops the run after 3 skips.
  data = PoisonedBatches(set(range(2, 100)))
  data.set_state({"index": 2})
  with pytest.raises(errors.TrainingStopped, match="3 consecutive steps had a non-finite"):
    train.train_loop(tr, checkpointer, data, shapes, train_steps=10, show_progress=False)
  checkpointer.wait()
  assert checkpointer.all_steps() == [1, 2]  # Steps 3-5 were skipped, so not saved.
  checkpointer.close()


def test_isolated_nan_batches_are_skipped_and_training_goes_on(
    tr: trainer.Trainer, tmp_path: pathlib.Path) -> None:
  data = PoisonedBatches({3, 6})
  checkpointer = checkpoints.Checkpointer(str(tmp_path), period=4, async_save=False)
  result = train.train_loop(tr, checkpointer, data, data.input_shapes(), train_steps=8,
                            log_every=8, show_progress=False)
  checkpointer.close()
  assert result.last_metrics["skipped_steps"] == 2.0
  assert np.isfinite(result.last_metrics["loss"])
