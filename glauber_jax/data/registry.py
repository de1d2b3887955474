"""The registry of tasks and mixtures that ``MIXTURE_OR_TASK_NAME`` names.

A ``Task`` names a document source, a vocabulary and a preprocessor (``PREPROCESSORS``; the
``examples`` module formats each); a ``Mixture`` draws from tasks that share a vocabulary and a
preprocessor by rate. ``import tasks`` registers the repository's tasks (the command lines do
it; the library never imports ``tasks``). The gin configurables of the package are registered
under the module ``glauber_jax.data``, so gin files keep binding ``data.task_vocabulary``,
``data.task_text_includes_eos``, ``cache_directory`` and ``get_batch_iterator``.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Iterable, Optional, Sequence

import gin

from glauber_jax import denoisers, vocabularies

PREPROCESSORS = ("ul2", "lm", "text_pair")


@dataclasses.dataclass(frozen=True)
class Task:
  """A named dataset: where documents come from, how they are tokenised and formatted.

  Attributes:
    name: the registry key (``MIXTURE_OR_TASK_NAME``).
    source: ``split -> documents`` (``ul2``, ``lm``) or ``split -> (inputs, targets)`` texts
      (``text_pair``).
    vocabulary: builds the vocabulary (may train and cache a tokenizer on first use).
    preprocessor: one of ``PREPROCESSORS``.
    description: one line for ``python -m glauber_jax.data list``.
    splits: the splits the source provides.
    ul2_denoisers: the ``ul2`` mixture of denoisers (default: gin's ``ul2_denoisers()``).
    source_id: names what ``source`` currently reads (a path and its files' sizes, say), so
      the chunk cache of a reconfigured source is not reused; ``None`` for fixed sources.
    append_eos: whether ``ul2`` and ``lm`` documents are followed by EOS before they are
      joined into chunks. False for documents that are fixed-length sequences with no end
      (the synthetic languages: with ``lm`` chunks of that length, each chunk is exactly one
      document).
  """

  name: str
  source: Callable[[str], Iterable[Any]]
  vocabulary: Callable[[], vocabularies.Vocabulary]
  preprocessor: str = "ul2"
  description: str = ""
  splits: tuple[str, ...] = ("train", "validation", "test")
  ul2_denoisers: Optional[Callable[[], Sequence[denoisers.DenoiserConfig]]] = None
  source_id: Optional[Callable[[], str]] = None
  append_eos: bool = True

  def __post_init__(self) -> None:
    if self.preprocessor not in PREPROCESSORS:
      raise ValueError(f"task {self.name}: preprocessor {self.preprocessor!r} not in "
                       f"{PREPROCESSORS}.")


_TASKS: dict[str, Task] = {}


def register_task(task: Task, replace: bool = False) -> Task:
  """Adds ``task`` to the registry; a taken name is an error unless ``replace``."""
  if (task.name in _TASKS or task.name in _MIXTURES) and not replace:
    raise ValueError(f"task {task.name!r} is already registered.")
  _TASKS[task.name] = task
  return task


def registered_task_names() -> list[str]:
  return sorted(_TASKS)


def _unknown(kind: str, name: str) -> ValueError:
  names = registered_task_names() + registered_mixture_names()
  close = difflib.get_close_matches(name, names, n=3)
  hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  return ValueError(f"unknown {kind} {name!r}.{hint} Registered: "
                    f"{', '.join(names) or 'none (import tasks)'}.")


def get_task(name: str) -> Task:
  """The registered task ``name``; ValueError with the closest names if there is none."""
  if name not in _TASKS:
    raise _unknown("task", name)
  return _TASKS[name]


@dataclasses.dataclass(frozen=True)
class Mixture:
  """Tasks sharing one vocabulary and preprocessor, drawn by rate (``MIXTURE_OR_TASK_NAME``)."""

  name: str
  tasks: tuple[tuple[str, float], ...]

  def __post_init__(self) -> None:
    if not self.tasks or any(rate <= 0 for _, rate in self.tasks):
      raise ValueError(f"mixture {self.name}: needs tasks with positive rates.")


_MIXTURES: dict[str, Mixture] = {}


def register_mixture(name: str, tasks: Sequence[tuple[str, float]]) -> Mixture:
  """Registers a mixture of already registered tasks with positive rates."""
  if name in _MIXTURES or name in _TASKS:
    raise ValueError(f"{name!r} is already registered.")
  for task, _ in tasks:
    get_task(task)
  _MIXTURES[name] = Mixture(name, tuple((task, float(rate)) for task, rate in tasks))
  return _MIXTURES[name]


def registered_mixture_names() -> list[str]:
  return sorted(_MIXTURES)


def is_mixture(name: str) -> bool:
  """Whether ``name`` is a registered mixture (else it is a task's name, or no name)."""
  return name in _MIXTURES


def get_mixture(name: str) -> Mixture:
  if name not in _MIXTURES:
    raise _unknown("mixture", name)
  return _MIXTURES[name]


@gin.configurable(module="glauber_jax.data")
def task_vocabulary(task_name: str = gin.REQUIRED) -> vocabularies.Vocabulary:
  """The vocabulary of a registered task or mixture (gin: ``@data.task_vocabulary()``)."""
  if task_name in _MIXTURES:
    task_name = _MIXTURES[task_name].tasks[0][0]
  return get_task(task_name).vocabulary()


@gin.configurable(module="glauber_jax.data")
def task_text_includes_eos(task_name: str = gin.REQUIRED) -> bool:
  """Whether EOS is part of the text a model of this task or mixture writes: True when the
  documents are joined with EOS (``Task.append_eos``), False for fixed-length sequences with no
  end (gin: ``@data.task_text_includes_eos()``)."""
  names = ([name for name, _ in _MIXTURES[task_name].tasks] if task_name in _MIXTURES
           else [task_name])
  return any(get_task(name).append_eos for name in names)
