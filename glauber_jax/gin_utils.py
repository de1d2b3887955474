"""Gin wiring the T5X way: ``--gin_file`` (repeatable), ``--gin.NAME=value`` overrides.

Gin files live in the repository's top-level ``gin/`` directory, which is on the search path,
so ``--gin_file=gin/ul2_tiny.gin`` and ``include 'models/ul2.gin'`` both resolve. Errors gin
reports deep inside its parser (unknown configurable, missing ``%gin.REQUIRED`` macro) are
re-raised as ``GinConfigError`` naming the file, the binding and, for typos, the closest names.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
from typing import Any, Callable, Iterator, Sequence

import gin
from gin import resource_reader

from glauber_jax import errors, paths

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")

#: T5X's run-level macros, required by ``gin/runs/*.gin``.
REQUIRED_MACROS = ("MODEL_DIR", "TRAIN_STEPS", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS",
                   "BATCH_SIZE")


class GinConfigError(errors.ConfigError):
  """A gin file or binding is wrong; the message says which and how."""

  kind = "gin configuration"


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
  """Splits ``argv`` into ``(gin_files, gin_bindings, other_args)``.

  ``--gin.train.batch_size=8`` becomes the binding ``train.batch_size=8``; ``--gin_bindings``
  (T5X's long form) is accepted too.
  """
  gin_files: list[str] = []
  bindings: list[str] = []
  rest: list[str] = []
  args = list(argv)
  while args:
    arg = args.pop(0)
    for flag, target in (("--gin_file", gin_files), ("--gin_bindings", bindings)):
      if arg == flag:
        if not args:
          raise GinConfigError(f"{flag} needs a value.")
        target.append(args.pop(0))
        break
      if arg.startswith(flag + "="):
        target.append(arg[len(flag) + 1:])
        break
    else:
      if arg.startswith("--gin."):
        name, sep, value = arg[len("--gin."):].partition("=")
        if not sep:
          raise GinConfigError(f"{arg}: expected --gin.NAME=VALUE.")
        bindings.append(f"{name}={value}")
      else:
        rest.append(arg)
  return gin_files, bindings, rest


def _all_configurable_names() -> list[str]:
  names = []
  registry = gin.config._REGISTRY  # pylint: disable=protected-access
  for selector, configurable in registry.items():
    short = registry.minimal_selector(selector)
    names.append(short)
    names.extend(f"{short}.{p}" for p in _parameter_names(configurable))
  return names


def _parameter_names(configurable: object) -> list[str]:
  import inspect

  try:
    return list(inspect.signature(configurable.wrapped).parameters)  # type: ignore[attr-defined]
  except (TypeError, ValueError):
    return []


def _explain(error: Exception, where: str) -> GinConfigError:
  message = str(error)
  match = re.search(r"No configurable matching '([^']+)'", message)
  if match is None:
    match = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'",
                      message)
    if match is not None:
      missing = f"{match.group(1)}.{match.group(2)}"
    else:
      missing = None
  else:
    missing = match.group(1)
  hint = ""
  if missing is not None:
    close = difflib.get_close_matches(missing, _all_configurable_names(), n=3, cutoff=0.6)
    hint = f"\nUnknown gin name '{missing}'."
    if close:
      hint += f" Did you mean: {', '.join(close)}?"
  return GinConfigError(f"{where}: {message.splitlines()[0]}{hint}")


def _system_path_file_exists(config_path: str) -> bool:
  """gin's probe for ``include 'a/b.gin'`` as a file of a Python package ``a``, except that a
  plain directory ``a`` on ``sys.path`` (a namespace package, such as the ``runs/`` of model
  directories in the working directory) means "no" instead of gin's ``TypeError``."""
  try:
    return resource_reader.system_path_file_exists(config_path)
  except TypeError:
    return False


def _guard_gin_path_probe() -> None:
  """Swaps gin's package-path probe for ``_system_path_file_exists`` (gin 0.5 keeps its file
  readers in ``gin.config._FILE_READERS``; nothing happens if that changes)."""
  readers = getattr(gin.config, "_FILE_READERS", [])
  for index, (reader, exists) in enumerate(readers):
    if exists is resource_reader.system_path_file_exists:
      readers[index] = (reader, _system_path_file_exists)


_guard_gin_path_probe()


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str],
              skip_unknown: bool = False) -> None:
  """Parses files then bindings (later wins), with the repository's ``gin/`` on the path.

  Raises ``GinConfigError`` for missing files, unknown names and unset required macros.
  """
  for path in (GIN_DIR, os.getcwd()):
    gin.add_config_file_search_path(path)
  for gin_file in gin_files:
    if not (os.path.exists(gin_file) or os.path.exists(os.path.join(GIN_DIR, gin_file))):
      raise GinConfigError(f"gin file {gin_file!r} not found (looked in the current directory "
                           f"and {GIN_DIR}).")
  with _quiet_gin_path_probes():
    try:
      gin.parse_config_files_and_bindings(list(gin_files), None, skip_unknown=skip_unknown,
                                          finalize_config=False)
    except (ValueError, KeyError, SyntaxError, IOError) as error:
      raise _explain(error, f"in gin files {list(gin_files)}") from error
  for binding in bindings:
    try:
      gin.parse_config(binding, skip_unknown=skip_unknown)
    except (ValueError, KeyError, SyntaxError) as error:
      raise _explain(error, f"in binding --gin.{binding}") from error
  missing = missing_required_macros()
  if missing:
    raise GinConfigError(
        "these required gin macros are unset: " + ", ".join(missing) + " (set them in a gin "
        "file or with " + " ".join(f"--gin.{m}=..." for m in missing) + ").")
  gin.finalize()


class _DropPathProbe(logging.Filter):
  """Gin logs 'Path not found' at ERROR while it probes a relative include on sys.path
  before trying the search paths; the include then resolves, so the line only misleads."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


@contextlib.contextmanager
def _quiet_gin_path_probes() -> Iterator[None]:
  probe_filter = _DropPathProbe()
  root = logging.getLogger()
  root.addFilter(probe_filter)
  try:
    yield
  finally:
    root.removeFilter(probe_filter)


def missing_required_macros() -> list[str]:
  """The T5X run macros this configuration uses but leaves at ``%gin.REQUIRED``."""
  missing = []
  for macro in REQUIRED_MACROS:
    try:
      value = gin.query_parameter(f"%{macro}")
    except ValueError:
      continue  # This configuration does not use the macro.
    if str(value) == "%gin.REQUIRED":
      missing.append(macro)
  return missing


def write_operative_config(model_dir: str, filename: str = "config.gin") -> str:
  """Writes the resolved configuration next to the checkpoints (process 0 only)."""
  import jax

  path = paths.resolve(model_dir) / filename
  if jax.process_index() == 0:
    paths.write_text(path, gin.config_str())
  return str(path)


def run_configured(gin_files: Sequence[str], bindings: Sequence[str],
                   entry_point: Callable[[], Any]) -> Any:
  """What every CLI does after reading its flags and importing ``tasks`` (the task
  registrations gin files name, which the library never imports): parse gin, run.

  User errors (``errors.UserError``: configuration, data, checkpoints) end the program with
  one line instead of a traceback (``$GLAUBER_JAX_DEBUG=1`` shows it).
  """
  with errors.one_line_errors():
    parse_gin(gin_files, bindings)
    return entry_point()
