r"""Training entry point: ``python -m glauber_jax.train --gin_file=gin/ul2_tiny.gin``.

Flags:
  --gin_file=PATH        gin file (repeatable; relative paths also resolve under gin/).
  --gin.NAME=VALUE       a gin binding, e.g. --gin.TRAIN_STEPS=100 --gin.MODEL_DIR=\"/tmp/run\".
  --multihost / --nomultihost  force ``jax.distributed.initialize()`` on or off (default:
                         detected from SLURM / Kubernetes / Cloud TPU / coordinator variables).

A run with checkpoints in ``MODEL_DIR`` resumes from the latest one, data position included,
and says which step it restored; the resolved configuration is written to
``MODEL_DIR/config.gin``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # Run as glauber_jax.train, so gin and the registries see one module.
  from glauber_jax import train as _entry_point
  sys.exit(_entry_point.main(sys.argv[1:]))

import dataclasses
import logging
import os
import time
from typing import Any, Mapping, Optional, Protocol, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import (checkpoints, data, errors, gin_utils, lease, models, partitioning,
                         summaries, throughput)
from glauber_jax import trainer as trainer_lib


class BatchIterator(Protocol):
  """What the loop needs from a data source (``glauber_jax.data`` provides it)."""

  def __next__(self) -> dict[str, np.ndarray]: ...

  def get_state(self) -> dict[str, Any]: ...

  def set_state(self, state: dict[str, Any]) -> None: ...


@dataclasses.dataclass
class LoopResult:
  """What a finished (or already finished) run reports back."""

  state: trainer_lib.TrainState
  restored_step: Optional[int]
  last_metrics: dict[str, float]


def _check_batch(batch: Mapping[str, np.ndarray], feature_names: Sequence[str],
                 shapes: Mapping[str, tuple[int, ...]]) -> None:
  for name in feature_names:
    if name not in batch:
      raise ValueError(f"batch lacks feature {name!r}; it has {sorted(batch)}.")
    if tuple(batch[name].shape) != tuple(shapes[name]):
      raise ValueError(f"batch feature {name!r} has shape {batch[name].shape}, expected "
                       f"{shapes[name]} (this host's batch x feature length).")


class NonFiniteCounter:
  """Counts the steps the trainer skipped (``skipped_step`` metric) on the device, so no step
  waits for the host; ``check`` (at log and save steps) reads the counts and stops the run once
  ``limit`` steps in a row were skipped. A skipped step leaves the state as it was, so stopping
  at the next check rather than at once costs only compute."""

  def __init__(self, limit: int) -> None:
    self.limit = limit
    self.total = self.consecutive = self.longest = jnp.zeros((), jnp.int32)

  def add(self, skipped_flag: Any) -> None:
    """Counts one step's flag (device arithmetic only)."""
    skipped = jnp.asarray(skipped_flag > 0, jnp.int32)
    self.total = self.total + skipped
    self.consecutive = (self.consecutive + 1) * skipped
    self.longest = jnp.maximum(self.longest, self.consecutive)

  def check(self, step: int) -> bool:
    """Reads the counts; raises ``TrainingStopped`` after ``limit`` consecutive skips, returns
    whether the latest step was skipped."""
    total, consecutive, longest = (int(x) for x in jax.device_get(
        (self.total, self.consecutive, self.longest)))
    if longest >= self.limit:
      raise errors.TrainingStopped(
          f"stopped at step {step}: {longest} consecutive steps had a non-finite loss "
          "or gradient norm (their updates were skipped and nothing non-finite was saved). "
          "Lower the learning rate or check the data, then rerun to resume from the last "
          "checkpoint (limit: Trainer.max_consecutive_nonfinite_steps).")
    if consecutive:
      logging.warning("Step %d: loss or gradient norm not finite; update skipped (%d in a row, "
                      "%d in all).", step, consecutive, total)
    return consecutive > 0


def train_loop(trainer: trainer_lib.Trainer, checkpointer: checkpoints.Checkpointer,
               iterator: BatchIterator, input_shapes: Mapping[str, tuple[int, ...]],
               train_steps: int, log_every: int = 50, restore_step: Optional[int] = None,
               initial_params_path: Optional[str] = None,
               summary_writer: Optional[summaries.SummaryWriter] = None,
               peak_flops_per_device: Optional[float] = None,
               flops_per_example: float = 0.0, show_progress: bool = True,
               model_dir_lease: Optional[lease.ModelDirLease] = None) -> LoopResult:
  """Restores or initialises the state, then trains to ``train_steps`` with checkpoints.

  ``input_shapes`` are the *global* batch shapes; the iterator yields this host's slice.
  ``model_dir_lease``, when given, is checked before every save (a trainer whose lease was
  taken over stops).
  """
  abstract_state, _ = trainer.state_shardings(input_shapes)
  restored_step = None
  if checkpointer.all_steps() or restore_step is not None:  # Default: newest that verifies.
    state, data_state, saved_metadata = checkpointer.restore(abstract_state, restore_step)
    restored_step = int(state.step)
    trainer.model.check_checkpoint_metadata(saved_metadata)
    iterator.set_state(data_state)
    logging.info("Restored step %d from %s", restored_step, checkpointer.directory)
  else:
    params = None
    if initial_params_path:
      params = checkpoints.load_source_params(initial_params_path, abstract_state.params,
                                              trainer.model.is_added_param)
    first_batch = None
    if abstract_state.model_state is not None:  # Model state that starts from data.
      first_batch = trainer.partitioner.host_batch_to_global(next(iterator))
    state = trainer.initialize(input_shapes, first_batch, params)
    if first_batch is not None:
      report = trainer.model.training_start_report(state.params, state.model_state, first_batch,
                                                   jax.random.PRNGKey(trainer.seed))
      if report:
        logging.info("Before training: %s", ", ".join(f"{k} {v:.4g}" for k, v in report.items()))
  start = int(state.step)
  logging.info("Parameters: %s", f"{models.count_params(state.params):,}")
  if start >= train_steps:
    logging.info("Step %d already reached TRAIN_STEPS=%d; nothing to do.", start, train_steps)
    return LoopResult(state, restored_step, {})

  process_count = jax.process_count()
  host_shapes = {k: (v[0] // process_count,) + tuple(v[1:]) for k, v in input_shapes.items()}
  metadata = {"model": type(trainer.model).__name__, **trainer.model.checkpoint_metadata()}
  global_batch = next(iter(input_shapes.values()))[0]
  peak = peak_flops_per_device or throughput.peak_flops_per_device()
  progress = _progress_bar(start, train_steps, show_progress)
  last_metrics: dict[str, float] = {}
  window_start, window_steps = time.perf_counter(), 0
  nonfinite = NonFiniteCounter(trainer.max_consecutive_nonfinite_steps)
  for step in range(start + 1, train_steps + 1):
    batch = next(iterator)
    _check_batch(batch, trainer.model.feature_names, host_shapes)
    state, metrics = trainer.train_step(state, trainer.partitioner.host_batch_to_global(batch))
    window_steps += 1
    nonfinite.add(metrics["skipped_step"])
    if checkpointer.should_save(step) or step == train_steps:
      if model_dir_lease is not None:
        model_dir_lease.check()
      if nonfinite.check(step):  # The state may be the non-finite one it started from: not saved.
        logging.warning("Step %d not saved: its update was skipped.", step)
      else:
        checkpointer.save(step, state, iterator.get_state(), {**metadata, "step": step},
                          force=True)
    if step % log_every == 0 or step == train_steps:
      nonfinite.check(step)
      last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      last_metrics["skipped_steps"] = float(nonfinite.total)
      elapsed = time.perf_counter() - window_start
      steps_per_second = window_steps / elapsed
      tokens = sum(int(np.prod(s)) for k, s in input_shapes.items()
                   if k in ("encoder_input_tokens", "decoder_target_tokens", "targets"))
      last_metrics["steps_per_second"] = steps_per_second
      last_metrics["tokens_per_second"] = tokens * steps_per_second
      utilisation = throughput.mfu(flops_per_example * global_batch * steps_per_second, peak,
                                   jax.device_count())
      if utilisation is not None:
        last_metrics["mfu"] = utilisation
      summaries.log_metrics(step, last_metrics)
      if summary_writer is not None:
        summary_writer.scalars(step, last_metrics)
      progress.set_postfix(loss=f"{last_metrics['loss']:.3f}")
      window_start, window_steps = time.perf_counter(), 0
    progress.update(1)
  progress.close()
  checkpointer.wait()
  return LoopResult(state, restored_step, last_metrics)


def _progress_bar(start: int, total: int, enabled: bool) -> Any:
  from tqdm import tqdm

  return tqdm(total=total, initial=start, disable=not enabled or jax.process_index() != 0,
              unit="step", dynamic_ncols=True, mininterval=2.0, file=sys.stderr)


@gin.configurable
def train(*, model: models.BaseModel = gin.REQUIRED, model_dir: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED, batch_size: int = gin.REQUIRED,
          partitioner: Optional[partitioning.Partitioner] = None, log_every: int = 50,
          data_seed: int = 0, initial_checkpoint: Optional[str] = None,
          restore_step: Optional[int] = None, peak_flops_per_device: Optional[float] = None,
          show_progress: bool = True) -> LoopResult:
  """Trains ``model`` on a task the T5X way; all arguments come from gin.

  Args:
    model: a ``models.BaseModel`` (e.g. ``@models.EncoderDecoderModel()``).
    model_dir: where checkpoints, ``config.gin`` and TensorBoard logs go (``%MODEL_DIR``).
    train_steps: total optimizer steps, counting restored ones (``%TRAIN_STEPS``).
    mixture_or_task_name: a registered task (``%MIXTURE_OR_TASK_NAME``; see ``tasks/``).
    task_feature_lengths: ``{"inputs": Li, "targets": Lt}`` (``%TASK_FEATURE_LENGTHS``).
    batch_size: global batch size (``%BATCH_SIZE``), split over hosts and data-parallel devices.
    partitioner: mesh and rules (default: all devices data-parallel).
    log_every: steps between console / TensorBoard metric lines.
    data_seed: seed of the data order.
    initial_checkpoint: parameters to start from (a model dir, or an ``hf_import`` output).
    restore_step: restore this step instead of the latest.
    peak_flops_per_device: MFU denominator (default: the device's data-sheet bf16 peak).
    show_progress: draw a progress bar.
  """
  check_run_settings(train_steps=train_steps, batch_size=batch_size, log_every=log_every,
                     task_feature_lengths=task_feature_lengths, restore_step=restore_step)
  partitioner = partitioner if partitioner is not None else partitioning.Partitioner()
  partitioner.check_batch_size(batch_size)
  if batch_size % jax.process_count():
    raise errors.ConfigError(
        f"BATCH_SIZE={batch_size} is not divisible by the {jax.process_count()} hosts.")
  trainer = trainer_lib.Trainer(model=model, partitioner=partitioner)
  with lease.ModelDirLease(model_dir) as model_dir_lease:
    checkpointer = checkpoints.Checkpointer(model_dir)
    iterator = data.get_batch_iterator(
        mixture_or_task_name, "train", task_feature_lengths,
        batch_size=batch_size // jax.process_count(), seed=data_seed,
        shard_index=jax.process_index(), num_shards=jax.process_count())
    input_shapes = model.input_shapes(batch_size, task_feature_lengths)
    config_path = gin_utils.write_operative_config(model_dir)
    logging.info("Model dir %s (config written to %s)", model_dir, config_path)
    writer = summaries.SummaryWriter(os.path.join(model_dir, "train"))
    try:
      return train_loop(
          trainer, checkpointer, iterator, input_shapes, train_steps, log_every=log_every,
          restore_step=restore_step, initial_params_path=initial_checkpoint,
          summary_writer=writer, peak_flops_per_device=peak_flops_per_device,
          flops_per_example=model.num_flops_per_example(task_feature_lengths),
          show_progress=show_progress, model_dir_lease=model_dir_lease)
    finally:
      writer.close()
      checkpointer.close()


def check_run_settings(*, train_steps: int, batch_size: int, log_every: int,
                       task_feature_lengths: Mapping[str, int],
                       restore_step: Optional[int]) -> None:
  """Raises ``errors.ConfigError`` naming the macro or binding whose value cannot work."""
  for name, value in (("TRAIN_STEPS", train_steps), ("BATCH_SIZE", batch_size),
                      ("train.log_every", log_every)):
    if not isinstance(value, int) or value <= 0:
      raise errors.ConfigError(f"{name} must be a positive integer, got {value!r}.")
  for feature, length in dict(task_feature_lengths).items():
    if not isinstance(length, int) or length <= 0:
      raise errors.ConfigError(f"TASK_FEATURE_LENGTHS[{feature!r}] must be a positive integer, "
                               f"got {length!r}.")
  if restore_step is not None and (not isinstance(restore_step, int) or restore_step < 0):
    raise errors.ConfigError(f"train.restore_step must be a step number, got {restore_step!r}.")


def main(argv: Sequence[str]) -> None:
  gin_files, bindings, rest = gin_utils.split_gin_args(argv)
  multihost = None
  for arg in rest:
    if arg in ("--multihost", "--nomultihost"):
      multihost = arg == "--multihost"
    else:
      raise SystemExit(f"unknown flag {arg!r}; see `python -m glauber_jax.train --help`."
                       if arg not in ("-h", "--help") else __doc__)
  if not gin_files:
    raise SystemExit("give at least one --gin_file (e.g. --gin_file=gin/ul2_tiny.gin).")
  summaries.configure_logging()
  partitioning.maybe_initialize_distributed(multihost)
  # The tasks gin names (MIXTURE_OR_TASK_NAME) register on import; the command line imports
  # them, the library never does.
  import tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  gin_utils.run_configured(gin_files, bindings, train)
