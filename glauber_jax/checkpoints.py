"""Checkpoints with orbax: periodic (async) saves, keep-last-N, exact resume.

A checkpoint step holds three items:

- ``state``: the sharded ``TrainState`` (step, params, optimizer state);
- ``data``: the data iterator's position (JSON), so a resumed run sees the same batches;
- ``metadata``: JSON the model family wants kept with the weights (for the Glauber model, its
  permutations), plus the run's settings.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous steps intact; the partial directory is ignored on restart.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from glauber_jax import errors, paths

STATE_ITEM = "state"
DATA_ITEM = "data"
METADATA_ITEM = "metadata"


class CheckpointError(errors.UserError, RuntimeError):
  """A checkpoint is missing, unreadable or does not match the model."""

  kind = "checkpoint"


@gin.configurable
class Checkpointer:
  """Saves and restores training state under ``directory/checkpoints``.

  Attributes:
    directory: the run's model directory (local, or a URI such as ``gs://bucket/run``).
    period: save every this many steps (the final step is always saved).
    keep: number of most recent checkpoints kept.
    async_save: write in a background thread while training continues.
  """

  def __init__(self, directory: str, period: int = 1000, keep: int = 3,
               async_save: bool = True) -> None:
    if period <= 0:
      raise ValueError(f"Checkpointer.period must be positive, got {period}.")
    self.directory = paths.resolve(directory) / "checkpoints"
    self.period = period
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=period, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Whether ``step`` is on the save period (and not saved yet)."""
    return self._manager.should_save(step)

  def save(self, step: int, state: Any, data_state: dict[str, Any],
           metadata: dict[str, Any], force: bool = False) -> bool:
    """Saves when ``step`` is on the period (or ``force``); returns whether it saved."""
    return self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state),
            DATA_ITEM: ocp.args.JsonSave(data_state),
            METADATA_ITEM: ocp.args.JsonSave(metadata),
        }),
        force=force)

  def restore(self, abstract_state: Any, step: Optional[int] = None
              ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Restores ``(state, data_state, metadata)`` at ``step`` (default: latest).

    ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with shardings: arrays come back
    placed on the current mesh, whatever mesh wrote them.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint to restore in {self.directory}.")
    if step not in self.all_steps():
      raise CheckpointError(
          f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}.")
    try:
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(**{
              STATE_ITEM: ocp.args.StandardRestore(abstract_state),
              DATA_ITEM: ocp.args.JsonRestore(),
              METADATA_ITEM: ocp.args.JsonRestore(),
          }))
    except Exception as error:  # orbax raises many types for unreadable or mismatched data.
      raise CheckpointError(
          f"could not restore step {step} from {self.directory}: {type(error).__name__}: "
          f"{error}\nThe checkpoint may be corrupt or written by a different model "
          "configuration. Nothing was deleted; restore another step with "
          "--gin.train.restore_step=N, or move the directory aside.") from error
    return restored[STATE_ITEM], restored[DATA_ITEM], restored[METADATA_ITEM]

  def wait(self) -> None:
    """Blocks until async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def load_params(path: str, abstract_params: Any, key: Sequence[str] = ("params",)) -> Any:
  """Loads one subtree of a saved ``TrainState``: by default the parameters.

  ``path`` is either a run's model directory (latest step is used), its ``checkpoints``
  directory, or a directory holding ``{"params": ...}`` written by ``hf_import``. ``key`` names
  the subtree (``("model_state", "teacher")`` is the Glauber teacher copy). The result is placed
  with ``abstract_params``' shardings; leaves missing from the checkpoint raise CheckpointError.
  """
  path = paths.resolve(path)
  if not path.is_dir():
    raise CheckpointError(f"initial checkpoint {str(path)!r} does not exist or is not a "
                          "directory.")
  target: Any = abstract_params
  for name in reversed(key):
    target = {name: target}

  def subtree(restored: Any) -> Any:
    for name in key:
      restored = restored[name]
    missing = [jax.tree_util.keystr(p) for p, leaf in jax.tree_util.tree_leaves_with_path(
        restored) if isinstance(leaf, jax.ShapeDtypeStruct)]
    if missing:  # Orbax's partial restore hands back the abstract leaf it could not find.
      raise CheckpointError(f"{path} lacks {len(missing)} {'/'.join(key)} leaves, e.g. "
                            f"{missing[:3]}.")
    return restored

  try:
    latest = _latest_checkpoint(path)
    if latest is not None:
      root, manager, step = latest
      restored = manager.restore(step, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.PyTreeRestore(
              item=target, restore_args=_restore_args(target), partial_restore=True)}))
      logging.info("Loaded %s from %s step %d", "/".join(key), root, step)
      return subtree(restored[STATE_ITEM])
    item_dir = path / STATE_ITEM
    item_dir = item_dir if item_dir.is_dir() else path
    restored = ocp.PyTreeCheckpointer().restore(
        item_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=_restore_args(target),
                                              partial_restore=True))
  except CheckpointError:
    raise
  except Exception as error:  # Orbax raises many types; name the path and the subtree.
    raise CheckpointError(f"could not read {'/'.join(key)} from {path}: {error}") from error
  return subtree(restored)


def load_metadata(path: str) -> dict[str, Any]:
  """The ``metadata`` item of the latest step of a run's checkpoints (``path``: the model
  directory or its ``checkpoints`` directory); ``{}`` for a directory that holds no training
  checkpoint (an ``hf_import`` conversion)."""
  latest = _latest_checkpoint(paths.resolve(path))
  if latest is None:
    return {}
  root, manager, step = latest
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        METADATA_ITEM: ocp.args.JsonRestore()}))
  except Exception as error:  # Orbax raises many types; name the checkpoint.
    raise CheckpointError(f"could not read the metadata of step {step} in {root}: "
                          f"{error}") from error
  return dict(restored[METADATA_ITEM] or {})


def _latest_checkpoint(path: Any) -> Optional[tuple[Any, ocp.CheckpointManager, int]]:
  """``(root, read-only manager, latest step)`` of the training checkpoints under a run's
  model directory ``path`` (or ``path`` itself as the ``checkpoints`` directory); None when
  neither holds a step."""
  for root in (path / "checkpoints", path):
    if not root.is_dir():
      continue
    manager = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step()
    if step is not None:
      return root, manager, step
  return None


def load_source_params(path: str, abstract_params: Any,
                       is_added_param: Callable[[tuple[str, ...]], bool]) -> Any:
  """The checkpoint's parameters for every leaf that ``is_added_param`` does not claim.

  This is how a DiT starts from a UL2 or converted Flan-T5 checkpoint: the time parameters are
  absent there and keep their initial values (which leave the source function unchanged). The
  result holds only the loaded leaves; the trainer merges it over a fresh initialisation.
  """
  flat = traverse_util.flatten_dict(abstract_params)
  source = {name: leaf for name, leaf in flat.items() if not is_added_param(name)}
  params = load_params(path, traverse_util.unflatten_dict(source))
  added = sum(int(np.prod(leaf.shape)) for name, leaf in flat.items() if name not in source)
  total = sum(int(np.prod(leaf.shape)) for leaf in flat.values())
  logging.info("Parameters from %s; %s parameters are new (%.1f%% of %s) and start fresh.",
               path, f"{added:,}", 100.0 * added / max(total, 1), f"{total:,}")
  return params


def merge_params(fresh: Any, loaded: Any) -> Any:
  """``fresh`` with every leaf that ``loaded`` (a subtree of the same nesting) also has
  replaced by the loaded value."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(fresh),
                                       **traverse_util.flatten_dict(loaded)})


def _restore_args(target: Any) -> Any:
  return jax.tree.map(
      lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
      target)
