"""One writer per model directory: a lease file with a heartbeat.

``train`` holds ``MODEL_DIR/lease.json`` while it runs: ``{"host", "pid", "heartbeat",
"token"}``, rewritten every ``heartbeat_seconds`` by a background thread. Locks are advisory on
object stores, so this is a lease, written and read through ``etils.epath`` like everything
else in a run directory:

- a second trainer that finds a live lease fails at once, naming the holder's host and pid;
- a lease whose heartbeat is older than ``stale_after_seconds`` (a killed run), or whose holder
  is a process of this host that no longer exists, is taken over with a warning;
- after writing its lease a trainer reads it back, so of two that start together only the one
  whose write landed last goes on; a holder whose lease was taken over (it stalled longer than
  ``stale_after_seconds``) sees a foreign token at its next heartbeat, and ``check`` stops it
  before it saves again.

Multi-host runs: only process 0 holds the lease (the others write through process 0's
coordination anyway).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Optional

import gin
import jax

from glauber_jax import errors, paths

LEASE_FILE = "lease.json"


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: it exists.
    return True
  return True


@gin.configurable
class ModelDirLease:
  """The lease on one model directory; use as a context manager around training.

  Attributes:
    model_dir: the run's model directory (local or a URI).
    stale_after_seconds: a lease whose heartbeat is older than this is taken over.
    heartbeat_seconds: how often the holder rewrites its heartbeat (default: a quarter of
      ``stale_after_seconds``).
  """

  def __init__(self, model_dir: str, stale_after_seconds: float = 120.0,
               heartbeat_seconds: Optional[float] = None) -> None:
    if stale_after_seconds <= 0:
      raise errors.ConfigError(
          f"ModelDirLease.stale_after_seconds must be positive, got {stale_after_seconds}.")
    self.path = paths.resolve(model_dir) / LEASE_FILE
    self.stale_after_seconds = stale_after_seconds
    self.heartbeat_seconds = heartbeat_seconds or stale_after_seconds / 4
    self.token = uuid.uuid4().hex
    self.host, self.pid = socket.gethostname(), os.getpid()
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._lost_to: Optional[dict[str, Any]] = None

  # ---- Reading and writing ---------------------------------------------------------------

  def read(self) -> Optional[dict[str, Any]]:
    """The lease as written, or None when there is none (or it is unreadable)."""
    try:
      return json.loads(self.path.read_text())
    except (FileNotFoundError, ValueError):
      return None

  def _write(self) -> None:
    record = {"host": self.host, "pid": self.pid, "heartbeat": time.time(),
              "token": self.token}
    paths.write_text(self.path, json.dumps(record))

  def _is_stale(self, lease: dict[str, Any]) -> Optional[str]:
    """Why ``lease`` may be taken over, or None while its holder counts as alive."""
    age = time.time() - float(lease.get("heartbeat", 0.0))
    if age > self.stale_after_seconds:
      return f"its last heartbeat was {age:.0f} s ago"
    if lease.get("host") == self.host and not _process_exists(int(lease.get("pid", -1))):
      return f"process {lease.get('pid')} no longer exists on this host"
    return None

  @staticmethod
  def describe(lease: dict[str, Any]) -> str:
    """``pid P on host H`` for messages."""
    return f"pid {lease.get('pid')} on host {lease.get('host')}"

  # ---- Acquire, keep, release ------------------------------------------------------------

  def acquire(self) -> None:
    """Takes the lease or raises ``errors.DirectoryLeased`` naming the live holder."""
    if jax.process_index() != 0:
      return
    held = self.read()
    if held is not None and held.get("token") != self.token:
      reason = self._is_stale(held)
      if reason is None:
        age = time.time() - float(held.get("heartbeat", 0.0))
        raise errors.DirectoryLeased(
            f"{self.path.parent} is in use by another trainer ({self.describe(held)}, last "
            f"heartbeat {age:.0f} s ago). Stop that run, or use another MODEL_DIR; a lease "
            f"whose heartbeat is older than {self.stale_after_seconds:.0f} s "
            "(ModelDirLease.stale_after_seconds) is taken over.")
      logging.warning("Taking over the lease of %s on %s: %s.", self.describe(held),
                      self.path.parent, reason)
    self._write()
    written = self.read()
    if written is None or written.get("token") != self.token:  # Another writer won the race.
      holder = self.describe(written) if written else "another trainer"
      raise errors.DirectoryLeased(f"{self.path.parent} was taken by {holder} while this "
                                   "trainer started; use another MODEL_DIR or stop that run.")
    self._thread = threading.Thread(target=self._heartbeat, name="model-dir-lease",
                                    daemon=True)
    self._thread.start()

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      held = self.read()
      if held is not None and held.get("token") != self.token:
        self._lost_to = held
        logging.error("The lease on %s was taken over by %s.", self.path.parent,
                      self.describe(held))
        return
      self._write()

  def check(self) -> None:
    """Raises ``errors.DirectoryLeased`` if another trainer took the lease over."""
    if self._lost_to is not None:
      raise errors.DirectoryLeased(
          f"{self.path.parent} was taken over by {self.describe(self._lost_to)} (this trainer's "
          f"heartbeat stalled for over {self.stale_after_seconds:.0f} s); stopping before "
          "writing anything more.")

  def release(self) -> None:
    """Stops the heartbeat and removes the lease if it is still this trainer's."""
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = None
    held = self.read()
    if held is not None and held.get("token") == self.token:
      self.path.unlink()

  def __enter__(self) -> "ModelDirLease":
    self.acquire()
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.release()
