"""Checkpoints with orbax: periodic (async) saves, keep-last-N, exact resume.

A checkpoint step holds three items:

- ``state``: the sharded ``TrainState`` (step, params, optimizer state);
- ``data``: the data iterator's position (JSON), so a resumed run sees the same batches;
- ``metadata``: JSON the model family wants kept with the weights (for the Glauber model, its
  permutations), plus the run's settings.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous steps intact; the partial directory is ignored on restart.

Integrity: on save, the ``metadata`` item records a CRC-32 of every array of the state (over
its bytes, for arrays this process holds whole: all of them on one host), one of the data
position, and one of the metadata itself. Every restore (resume, ``infer``, ``eval``,
``initial_checkpoint``) verifies them. A step that fails verification, or whose restore
raises, gets one warning line with the step and the reason, and the newest earlier step that
verifies is used; a resuming trainer moves the failed steps aside to
``MODEL_DIR/corrupt_checkpoints/`` (nothing is ever deleted), but only once an earlier step
has verified. If no step verifies, nothing is moved and the error says what to do.
Checkpoints written before checksums existed are restored with a warning, unverified.
"""

from __future__ import annotations

import json
import logging
import zlib
from typing import Any, Callable, Optional, Sequence, TypeVar

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from glauber_jax import errors, paths

STATE_ITEM = "state"
DATA_ITEM = "data"
METADATA_ITEM = "metadata"
#: Keys of the ``metadata`` item that hold the integrity checksums.
CHECKSUMS_KEY = "checksums"
METADATA_CHECKSUM_KEY = "metadata_crc32"
CORRUPT_DIR = "corrupt_checkpoints"

Restored = TypeVar("Restored")


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
    """Saves when ``step`` is on the period (or ``force``); returns whether it saved.

    ``metadata`` is saved with the checksums of ``state`` and ``data_state`` added.
    """
    if not (force or self._manager.should_save(step)):
      return False
    return self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state),
            DATA_ITEM: ocp.args.JsonSave(data_state),
            METADATA_ITEM: ocp.args.JsonSave(with_checksums(metadata, state, data_state)),
        }),
        force=force)

  def restore(self, abstract_state: Any, step: Optional[int] = None
              ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Restores ``(state, data_state, metadata)`` at ``step``, verified against its checksums.

    ``step`` None: the newest step that verifies; newer ones that do not are reported and
    moved aside to ``MODEL_DIR/corrupt_checkpoints/``. A given ``step`` that does not verify
    raises ``CheckpointError``. ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with
    shardings: arrays come back placed on the current mesh, whatever mesh wrote them.
    """
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f"no checkpoint to restore in {self.directory}.")
    if step is not None and step not in steps:
      raise CheckpointError(
          f"no checkpoint for step {step} in {self.directory}; available: {steps}.")

    def restore_step(candidate: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
      restored = self._manager.restore(
          candidate,
          args=ocp.args.Composite(**{
              STATE_ITEM: ocp.args.StandardRestore(abstract_state),
              DATA_ITEM: ocp.args.JsonRestore(),
              METADATA_ITEM: ocp.args.JsonRestore(),
          }))
      state, data_state, metadata = (restored[STATE_ITEM], restored[DATA_ITEM],
                                     restored[METADATA_ITEM])
      reason = verification_failure(metadata, state, data_state)
      if reason is not None:
        raise _VerificationError(reason)
      return state, data_state, without_checksums(metadata)

    found, restored, failures = newest_verified(
        self.directory, [step] if step is not None else steps, restore_step)
    for failed, reason in failures:
      moved = self._move_aside(failed)
      logging.warning("Checkpoint step %d is corrupt (%s); moved to %s; resuming from step %d.",
                      failed, reason, moved, found)
    if failures:
      self._manager.reload()
    return restored

  def _move_aside(self, step: int) -> Any:
    """Renames step ``step`` into ``MODEL_DIR/corrupt_checkpoints/`` (process 0 only)."""
    target = self.directory.parent / CORRUPT_DIR / str(step)
    suffix = 1
    while target.exists():
      target = self.directory.parent / CORRUPT_DIR / f"{step}.{suffix}"
      suffix += 1
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(target)
    return target

  def wait(self) -> None:
    """Blocks until async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


# ---- Integrity -------------------------------------------------------------------------------


class _VerificationError(Exception):
  """A restored step does not match the checksums recorded with it."""


def _leaf_name(path: Sequence[Any]) -> str:
  """``params/encoder/layers_0/...``: a leaf's path, the same for a ``TrainState`` field and a
  dict key of that name."""
  names = []
  for entry in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(entry, attribute):
        names.append(str(getattr(entry, attribute)))
        break
    else:
      names.append(str(entry))
  return "/".join(names)


def array_checksums(tree: Any) -> dict[str, int]:
  """CRC-32 of the bytes of every array in ``tree`` that this process holds whole."""
  leaves = [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if not (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable)]
  values = jax.device_get([leaf for _, leaf in leaves])
  return {_leaf_name(path): zlib.crc32(np.ascontiguousarray(value).tobytes())
          for (path, _), value in zip(leaves, values)}


def _json_checksum(value: Any) -> int:
  """CRC-32 of ``value``'s canonical JSON (as it reads back: tuples as lists, keys as text)."""
  return zlib.crc32(json.dumps(json.loads(json.dumps(value)), sort_keys=True).encode())


def with_checksums(metadata: dict[str, Any], state: Any, data_state: Any) -> dict[str, Any]:
  """``metadata`` plus the checksums of ``state``, ``data_state`` and of itself."""
  checked = {**metadata, CHECKSUMS_KEY: {STATE_ITEM: array_checksums(state),
                                         DATA_ITEM: _json_checksum(data_state)}}
  return {**checked, METADATA_CHECKSUM_KEY: _json_checksum(checked)}


def without_checksums(metadata: Any) -> dict[str, Any]:
  """The metadata as the model saved it."""
  return {k: v for k, v in dict(metadata or {}).items()
          if k not in (CHECKSUMS_KEY, METADATA_CHECKSUM_KEY)}


def verification_failure(metadata: Any, state: Any = None, data_state: Any = None
                         ) -> Optional[str]:
  """Why a restored step does not match its recorded checksums; None when it does.

  ``state`` may be a subtree of the saved ``TrainState`` (e.g. ``{"params": ...}``): its
  arrays are checked by name. None skips the state (or data) check. Metadata without
  checksums (written before they existed) passes, with a warning.
  """
  if not isinstance(metadata, dict):
    return f"the metadata item is a {type(metadata).__name__}, not a JSON object"
  if CHECKSUMS_KEY not in metadata:
    logging.warning("Checkpoint step %s has no checksums (written before they existed); "
                    "restored unverified.", metadata.get("step", "?"))
    return None
  recorded = metadata.get(METADATA_CHECKSUM_KEY)
  body = {k: v for k, v in metadata.items() if k != METADATA_CHECKSUM_KEY}
  if recorded != _json_checksum(body):
    return "the metadata's checksum does not match its contents"
  sums = metadata[CHECKSUMS_KEY]
  if data_state is not None and _json_checksum(data_state) != sums.get(DATA_ITEM):
    return "the data position's checksum does not match"
  if state is not None:
    saved = sums.get(STATE_ITEM, {})
    actual = array_checksums(state)
    if saved and not set(saved) & set(actual):
      return "none of the restored arrays has a recorded checksum"
    for name, checksum in actual.items():
      if name in saved and saved[name] != checksum:
        return f"array {name} does not match its checksum"
  return None


def newest_verified(root: Any, steps: Sequence[int], restore_step: Callable[[int], Restored]
                    ) -> tuple[int, Restored, list[tuple[int, str]]]:
  """``(step, restored, failures)``: the newest of ``steps`` that ``restore_step`` restores
  and verifies, and ``(step, reason)`` of each newer one that failed (the caller reports them,
  one warning line each).

  ``restore_step`` raises ``_VerificationError`` for a checksum mismatch; any other exception
  but ``CheckpointError`` (a mismatch with the model, not corruption) counts as a failure too.
  If no step verifies, raises ``CheckpointError`` listing the reasons.
  """
  failures: list[tuple[int, str]] = []
  for step in sorted(steps, reverse=True):
    try:
      return step, restore_step(step), failures
    except CheckpointError:
      raise
    except _VerificationError as error:
      failures.append((step, str(error)))
    except Exception as error:  # Orbax raises many types for unreadable data.
      first_line = (str(error).strip().splitlines() or [""])[0].split(" See full")[0][:200]
      failures.append((step, f"its restore raised {type(error).__name__}: {first_line}"))
  reasons = "; ".join(f"step {step}: {reason}" for step, reason in failures)
  raise CheckpointError(
      f"no checkpoint in {root} verifies ({reasons}). Nothing was moved or deleted. If the "
      "model configuration changed, use the run's own (config.gin in the model directory); "
      "otherwise train in a new MODEL_DIR (--gin.train.initial_checkpoint can start it from "
      "other weights).")


# ---- Loading parameters for inference, evaluation and fine-tuning ------------------------------


def load_params(path: str, abstract_params: Any, key: Sequence[str] = ("params",)) -> Any:
  """Loads one subtree of a saved ``TrainState``: by default the parameters.

  ``path`` is either a run's model directory (the newest step that verifies is used), its
  ``checkpoints`` directory, or a directory holding ``{"params": ...}`` written by
  ``hf_import`` (not checksummed). ``key`` names the subtree (``("model_state", "teacher")``
  is the Glauber teacher copy). The result is placed with ``abstract_params``' shardings;
  leaves missing from the checkpoint raise CheckpointError.
  """
  path = paths.resolve(path)
  if not path.is_dir():
    raise CheckpointError(f"initial checkpoint {str(path)!r} does not exist or is not a "
                          "directory.")
  target: Any = abstract_params
  for name in reversed(key):
    target = {name: target}

  def check_complete(restored: Any) -> None:
    subtree = restored
    for name in key:
      subtree = subtree[name]
    missing = [jax.tree_util.keystr(p) for p, leaf in jax.tree_util.tree_leaves_with_path(
        subtree) if isinstance(leaf, jax.ShapeDtypeStruct)]
    if missing:  # Orbax's partial restore hands back the abstract leaf it could not find.
      raise CheckpointError(f"{path} lacks {len(missing)} {'/'.join(key)} leaves, e.g. "
                            f"{missing[:3]}.")

  try:
    found = _checkpoint_root(path)
    if found is not None:
      root, manager = found

      def restore_step(step: int) -> Any:
        restored = manager.restore(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.PyTreeRestore(
                item=target, restore_args=_restore_args(target), partial_restore=True),
            METADATA_ITEM: ocp.args.JsonRestore()}))
        check_complete(restored[STATE_ITEM])
        reason = verification_failure(restored[METADATA_ITEM], restored[STATE_ITEM])
        if reason is not None:
          raise _VerificationError(reason)
        return restored[STATE_ITEM]

      step, restored, failures = newest_verified(root, manager.all_steps(), restore_step)
      _report_skipped(root, failures, step)
      logging.info("Loaded %s from %s step %d", "/".join(key), root, step)
    else:
      item_dir = path / STATE_ITEM
      item_dir = item_dir if item_dir.is_dir() else path
      restored = ocp.PyTreeCheckpointer().restore(
          item_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=_restore_args(target),
                                                partial_restore=True))
      check_complete(restored)
  except CheckpointError:
    raise
  except Exception as error:  # Orbax raises many types; name the path and the subtree.
    raise CheckpointError(f"could not read {'/'.join(key)} from {path}: {error}") from error
  for name in key:
    restored = restored[name]
  return restored


def load_metadata(path: str) -> dict[str, Any]:
  """The ``metadata`` item of the newest step whose metadata verifies (``path``: the model
  directory or its ``checkpoints`` directory); ``{}`` for a directory that holds no training
  checkpoint (an ``hf_import`` conversion)."""
  found = _checkpoint_root(paths.resolve(path))
  if found is None:
    return {}
  root, manager = found

  def restore_step(step: int) -> dict[str, Any]:
    metadata = manager.restore(step, args=ocp.args.Composite(**{
        METADATA_ITEM: ocp.args.JsonRestore()}))[METADATA_ITEM]
    reason = verification_failure(metadata)
    if reason is not None:
      raise _VerificationError(reason)
    return without_checksums(metadata)

  step, metadata, failures = newest_verified(root, manager.all_steps(), restore_step)
  _report_skipped(root, failures, step)
  return metadata


def _report_skipped(root: Any, failures: Sequence[tuple[int, str]], used: int) -> None:
  """One warning line per step a reader skipped (readers move nothing)."""
  for step, reason in failures:
    logging.warning("Checkpoint step %d in %s is not usable (%s); using step %d.", step, root,
                    reason, used)


def _checkpoint_root(path: Any) -> Optional[tuple[Any, ocp.CheckpointManager]]:
  """``(root, read-only manager)`` of the training checkpoints under a run's model directory
  ``path`` (or ``path`` itself as the ``checkpoints`` directory); None when neither holds a
  step."""
  for root in (path / "checkpoints", path):
    if not root.is_dir():
      continue
    manager = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True))
    if manager.latest_step() is not None:
      return root, manager
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
