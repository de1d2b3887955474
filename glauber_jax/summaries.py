"""Training metrics to the console and to TensorBoard event files, without TensorFlow.

Event files are written with the ``tensorboard`` package's own writer and protos, so the GPU
machines (which have no TensorFlow) write the same logs as a CPU workstation. Only process 0
writes.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Mapping, Sequence

import jax

from glauber_jax import errors, paths


def configure_logging() -> None:
  """INFO-level, timestamped console logs for the CLIs (replacing handlers that libraries such
  as absl installed on import, which would hide them)."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                      datefmt="%H:%M:%S", force=True)
  for chatty in ("absl", "orbax", "jax"):  # Orbax logs every save step at INFO through absl.
    logging.getLogger(chatty).setLevel(logging.WARNING)


def write_jsonl(path: str, records: Sequence[Mapping[str, Any]], append: bool = False) -> None:
  """Writes (or appends) one JSON object per line, creating the directory."""
  paths.write_text(path, "".join(json.dumps(record) + "\n" for record in records), append)
  logging.info("%s %d records to %s", "Appended" if append else "Wrote", len(records), path)


def read_utf8(path: str) -> str:
  """The text of a user's file; ``errors.DataError`` naming the file and byte offset if it is
  not UTF-8 (user files are refused; corpora replace bad bytes instead, see ``corpora``)."""
  try:
    raw = paths.resolve(path).read_bytes()
  except OSError as error:
    raise errors.DataError(f"cannot read {path}: {error.strerror or error}.") from error
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as error:
    line = raw.count(b"\n", 0, error.start) + 1
    raise errors.DataError(f"{path}: line {line}, byte offset {error.start} is not UTF-8 "
                           f"({error.reason}).") from error


def read_jsonl(path: str, required: Sequence[str], what: str) -> list[dict[str, Any]]:
  """The JSON objects of a file, one per non-empty line, each holding the ``required`` fields;
  at least one. Anything else is an ``errors.DataError`` (a ``ValueError``) naming the file,
  the line and ``what`` the file should be."""
  records = []
  for number, line in enumerate(read_utf8(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise errors.DataError(f"{path}:{number}: not JSON ({error.msg}, column {error.colno}): "
                             f"not {what}.") from error
    if not isinstance(record, dict):
      raise errors.DataError(f"{path}:{number} is a JSON {type(record).__name__}, not an "
                             f"object: not {what}.")
    missing = [field for field in required if field not in record]
    if missing:
      raise errors.DataError(f"{path}:{number} lacks {missing}: not {what}.")
    records.append(record)
  if not records:
    raise errors.DataError(f"{path} holds no record: not {what}.")
  return records


class SummaryWriter:
  """Scalar summaries for one run directory (``model_dir/train`` by convention)."""

  def __init__(self, log_dir: str) -> None:
    self._writer = None
    if jax.process_index() != 0:
      return
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    directory = paths.resolve(log_dir)
    directory.mkdir(parents=True, exist_ok=True)
    self._writer = EventFileWriter(str(directory))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2

    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=name, simple_value=float(value))
        for name, value in values.items()
    ])
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def format_metrics(step: int, values: Mapping[str, float]) -> str:
  """One console line: ``step 100 | loss 3.21 | accuracy 0.312 | ...``."""
  parts = [f"step {step}"]
  for name, value in values.items():
    parts.append(f"{name} {value:.4g}" if abs(value) < 1e5 else f"{name} {value:.3e}")
  return " | ".join(parts)


def log_metrics(step: int, values: Mapping[str, float]) -> None:
  if jax.process_index() == 0:
    logging.info("%s", format_metrics(step, values))
