"""User errors: mistakes in a run's configuration, data or directory, reported in one line.

Every command line (``train``, ``infer``, ``eval``, ``data``, ``hf_import``) runs its work in
``one_line_errors``: an error of the classes below (gin's ``GinConfigError`` and
``checkpoints.CheckpointError`` are among them) ends the program with exit status 1 and one
line on stderr, ``<kind> error: <message>``, instead of a traceback. Set
``GLAUBER_JAX_DEBUG=1`` to get the full traceback instead (for developers). Anything else (a
bug) still raises with its traceback.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


class UserError(Exception):
  """A mistake the user can fix; the message says what and how."""

  #: The word before "error:" in the one-line report.
  kind = "run"


class ConfigError(UserError, ValueError):
  """A run setting (a gin macro or binding) has a value that cannot work."""

  kind = "configuration"


class DataError(UserError, ValueError):
  """Input data is missing, unreadable or malformed; the message names the file (and line)."""

  kind = "data"


class TrainingStopped(UserError, RuntimeError):
  """Training cannot go on (e.g. too many consecutive non-finite steps)."""

  kind = "training"


class DirectoryLeased(UserError, RuntimeError):
  """Another live process holds the model directory's lease."""

  kind = "model directory"


DEBUG_VARIABLE = "GLAUBER_JAX_DEBUG"


def debug_enabled() -> bool:
  """Whether ``$GLAUBER_JAX_DEBUG`` asks for tracebacks (any value but '', '0', 'false')."""
  return os.environ.get(DEBUG_VARIABLE, "").lower() not in ("", "0", "false")


def one_line(error: BaseException) -> str:
  """``<kind> error: <message>`` on one line (a multi-line message is joined with '; ', and
  gin's "In call to configurable ..." context is left out)."""
  kind = getattr(error, "kind", "run")
  message = "; ".join(line.strip() for line in str(error).splitlines()
                      if line.strip() and not line.strip().startswith("In call to configurable"))
  return f"{kind} error: {message}"


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
  """Turns a ``UserError`` into ``SystemExit`` with one line, unless ``$GLAUBER_JAX_DEBUG``
  is set."""
  try:
    yield
  except UserError as error:
    if debug_enabled():
      raise
    raise SystemExit(one_line(error)) from None
