"""Training that survives what clusters do to it: non-finite steps are skipped and counted,
corrupt checkpoints are set aside for the newest one that verifies, one writer per model
directory, and user mistakes end in one line."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Any

import gin
import jax
import numpy as np
import pytest

from glauber_jax import (checkpoints, errors, eval as eval_cli, lease, models, optimizers,
                         partitioning, train, trainer)
from helpers import TINY_NETWORK, SyntheticBatches

BATCH = 8
REPO = pathlib.Path(__file__).resolve().parents[1]


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


# ---- Checkpoint integrity -----------------------------------------------------------------------


def _largest_file(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_middle(path: pathlib.Path, size: int = 4096) -> None:
  """Flips ``size`` bytes in the middle of ``path`` (the corruption a bad disk or copy makes)."""
  data = bytearray(path.read_bytes())
  start = max(0, len(data) // 2 - size // 2)
  for index in range(start, min(len(data), start + size)):
    data[index] ^= 0xFF
  path.write_bytes(bytes(data))


def _loop(tr: trainer.Trainer, model_dir: pathlib.Path, steps: int, keep: int = 3
          ) -> train.LoopResult:
  checkpointer = checkpoints.Checkpointer(str(model_dir), period=2, keep=keep, async_save=False)
  try:
    return train.train_loop(tr, checkpointer, SyntheticBatches(BATCH),
                            SyntheticBatches(BATCH).input_shapes(), train_steps=steps,
                            show_progress=False)
  finally:
    checkpointer.close()


def test_corrupt_checkpoints_are_set_aside_and_training_resumes_exactly(
    tr: trainer.Trainer, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
  reference_dir = tmp_path / "reference"
  reference = _as_numpy(_loop(tr, reference_dir, 8, keep=10).state.params)
  run = tmp_path / "run"
  _loop(tr, run, 6)
  ckpts = run / "checkpoints"
  assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [2, 4, 6]
  (ckpts / "6" / "metadata" / "metadata").write_text('{"model": "overwritten"')

  # Inference, evaluation and initial_checkpoint loads: the newest step that verifies.
  abstract, _ = tr.state_shardings(SyntheticBatches(BATCH).input_shapes())
  with caplog.at_level("WARNING"):
    loaded = checkpoints.load_params(str(run), abstract.params)
  reader = checkpoints.Checkpointer(str(reference_dir))
  _assert_trees_equal(_as_numpy(loaded), _as_numpy(reader.restore(abstract, step=4)[0].params))
  reader.close()
  assert "step 6" in caplog.text and "using step 4" in caplog.text
  assert (ckpts / "6").exists()  # A reader moves nothing.

  _flip_middle(_largest_file(ckpts / "4" / "state"))
  caplog.clear()
  with caplog.at_level("WARNING"):
    resumed = _loop(tr, run, 8)
  assert resumed.restored_step == 2
  warnings = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
  assert len(warnings) == 2, warnings
  assert "step 6 is corrupt" in warnings[0] and "JSONDecodeError" in warnings[0]
  assert "step 4 is corrupt" in warnings[1] and "array" in warnings[1]
  assert not [r for r in caplog.records if "not usable" in r.getMessage()]  # One line each.
  assert (run / "corrupt_checkpoints" / "6" / "metadata").is_dir()  # Moved, not deleted.
  assert (run / "corrupt_checkpoints" / "4" / "state").is_dir()
  _assert_trees_equal(_as_numpy(resumed.state.params), reference)


def test_a_silently_changed_array_fails_its_checksum() -> None:
  state = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  data_state = {"index": 4}
  metadata = checkpoints.with_checksums({"model": "m", "step": 4}, state, data_state)
  assert checkpoints.verification_failure(metadata, state, data_state) is None
  changed = {"params": {"w": state["params"]["w"].copy()}}
  changed["params"]["w"][1, 2] = np.nan
  assert "array params/w" in checkpoints.verification_failure(metadata, changed, data_state)
  assert "data position" in checkpoints.verification_failure(metadata, state, {"index": 5})
  edited = {**metadata, "model": "other"}
  assert "metadata's checksum" in checkpoints.verification_failure(edited, state, data_state)
  assert checkpoints.without_checksums(metadata) == {"model": "m", "step": 4}


def test_no_verifying_checkpoint_stops_with_one_line_and_moves_nothing(
    tr: trainer.Trainer, tmp_path: pathlib.Path) -> None:
  _loop(tr, tmp_path, 2)
  saved = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  for step_dir in saved:  # Orbax saves the first step too.
    (step_dir / "metadata" / "metadata").write_text("not JSON")
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint in .* verifies") as error:
    _loop(tr, tmp_path, 4)
  assert "Nothing was moved" in errors.one_line(error.value)
  assert "\n" not in errors.one_line(error.value)
  assert all(step_dir.is_dir() for step_dir in saved) and saved


# ---- One writer per model directory -------------------------------------------------------------


def _write_lease(model_dir: pathlib.Path, host: str, pid: int, age_seconds: float) -> None:
  model_dir.mkdir(parents=True, exist_ok=True)
  (model_dir / lease.LEASE_FILE).write_text(json.dumps(
      {"host": host, "pid": pid, "heartbeat": time.time() - age_seconds, "token": "other"}))


def test_a_second_trainer_on_a_held_directory_fails_naming_the_holder(
    tmp_path: pathlib.Path) -> None:
  first = lease.ModelDirLease(str(tmp_path), stale_after_seconds=60)
  with first:
    with pytest.raises(errors.DirectoryLeased,
                       match=f"pid {os.getpid()} on host {socket.gethostname()}"):
      lease.ModelDirLease(str(tmp_path), stale_after_seconds=60).acquire()
    assert first.read()["token"] == first.token
  assert not (tmp_path / lease.LEASE_FILE).exists()  # Released.
  _write_lease(tmp_path, "other-host", 12345, age_seconds=5)
  with pytest.raises(errors.DirectoryLeased, match="pid 12345 on host other-host"):
    lease.ModelDirLease(str(tmp_path), stale_after_seconds=60).acquire()


def test_a_stale_lease_is_taken_over_and_its_old_holder_stops(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
  _write_lease(tmp_path, "other-host", 12345, age_seconds=100)
  with caplog.at_level("WARNING"):
    with lease.ModelDirLease(str(tmp_path), stale_after_seconds=60) as taken:
      assert taken.read()["token"] == taken.token
  assert "Taking over the lease of pid 12345 on host other-host" in caplog.text
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  _write_lease(tmp_path, socket.gethostname(), int(dead.stdout), age_seconds=0)
  holder = lease.ModelDirLease(str(tmp_path), stale_after_seconds=60, heartbeat_seconds=0.05)
  holder.acquire()  # The holder's process is gone: taken over at once.
  first_beat = holder.read()["heartbeat"]
  time.sleep(0.3)
  assert holder.read()["heartbeat"] > first_beat  # The heartbeat thread rewrites it.
  holder.check()
  _write_lease(tmp_path, "other-host", 999, age_seconds=0)  # Another trainer took over.
  time.sleep(0.3)
  with pytest.raises(errors.DirectoryLeased, match="taken over by pid 999 on host other-host"):
    holder.check()
  holder.release()
  assert (tmp_path / lease.LEASE_FILE).exists()  # Not ours any more: left alone.


# ---- One-line errors for user mistakes ----------------------------------------------------------

TINY_RUN = ["--gin_file=gin/ul2_tiny.gin", "--gin.MIXTURE_OR_TASK_NAME='shakespeare_bytes_ul2'",
            "--gin.network.NetworkConfig.vocab_size=384", "--gin.train.show_progress=False"]


@pytest.fixture()
def fresh_gin() -> Any:
  gin.clear_config()
  yield
  gin.clear_config()


def _one_line_exit(function: Any, *args: Any) -> str:
  with pytest.raises(SystemExit) as exit_info:
    function(*args)
  message = str(exit_info.value.code)
  assert "\n" not in message and "Traceback" not in message, message
  return message


@pytest.mark.parametrize("binding, expected", [
    ("--gin.TRAIN_STEPS=-5", "configuration error: TRAIN_STEPS must be a positive integer, got -5"),
    ("--gin.BATCH_SIZE=0", "configuration error: BATCH_SIZE must be a positive integer, got 0"),
    ("--gin.train.log_every=0", "train.log_every must be a positive integer, got 0"),
    ("--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 8}",
     "TASK_FEATURE_LENGTHS['inputs'] must be a positive integer"),
    ("--gin.train.num_stepz=3", "gin configuration error: in binding --gin.train.num_stepz=3"),
    ("--gin.TASK_FEATURE_LENGTHS={'inputs': 200, 'targets': 8}",
     "configuration error: encoder_input_tokens has length 200, longer than the model's maximum"),
])
def test_bad_run_settings_end_in_one_line(fresh_gin: Any, tmp_path: pathlib.Path, binding: str,
                                          expected: str) -> None:
  message = _one_line_exit(train.main, [*TINY_RUN, f"--gin.MODEL_DIR='{tmp_path}'",
                                        "--gin.BATCH_SIZE=2", binding])
  assert expected in message, message


def test_a_held_model_dir_ends_in_one_line_naming_the_holder(fresh_gin: Any,
                                                             tmp_path: pathlib.Path) -> None:
  _write_lease(tmp_path, "other-host", 4321, age_seconds=1)
  message = _one_line_exit(train.main, [*TINY_RUN, f"--gin.MODEL_DIR='{tmp_path}'",
                                        "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2"])
  assert message.startswith("model directory error:") and "pid 4321 on host other-host" in message


def test_the_debug_variable_shows_the_traceback(fresh_gin: Any, tmp_path: pathlib.Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setenv(errors.DEBUG_VARIABLE, "1")
  with pytest.raises(errors.ConfigError, match="TRAIN_STEPS must be a positive integer"):
    train.main([*TINY_RUN, f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=-5"])


def test_unset_data_dirs_and_bad_files_are_named(tmp_path: pathlib.Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
  from tasks import puzzles, registry  # pylint: disable=import-outside-toplevel
  monkeypatch.delenv("OPENWEBTEXT_DIR", raising=False)
  with pytest.raises(errors.DataError) as unset:
    registry.openwebtext_path()
  assert "OPENWEBTEXT_DIR" in errors.one_line(unset.value)
  truncated = tmp_path / "samples.jsonl"
  truncated.write_text('{"text": "a", "token_ids": [1]}\n{"text": "b", "tok')
  message = _one_line_exit(eval_cli.main, [f"--samples={truncated}"])
  assert f"{truncated}:2: not JSON" in message, message
  latin1 = tmp_path / "references.txt"
  latin1.write_bytes("first document\n\nsecond, caf\xe9\n".encode("latin-1"))
  with pytest.raises(errors.DataError, match=r"references.txt: line 3, byte offset 27 is not"):
    eval_cli.read_references(str(latin1))
  puzzle_file = tmp_path / "puzzles.jsonl"
  puzzle_file.write_text('{"kind": "sudoku", "prompt": "x"}\n')
  with pytest.raises(errors.DataError, match=r"puzzles.jsonl:1 lacks \['solution'\]"):
    puzzles.read_prompt_file(str(puzzle_file))


def test_the_command_line_exits_non_zero_with_one_line(tmp_path: pathlib.Path) -> None:
  result = subprocess.run(
      [sys.executable, "-m", "glauber_jax.train", *TINY_RUN, f"--gin.MODEL_DIR='{tmp_path}'",
       "--gin.TRAIN_STEPS=-5"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if "TRAIN_STEPS" in line]
  assert lines == ["configuration error: TRAIN_STEPS must be a positive integer, got -5."]
