"""Tasks and a TensorFlow-free batch loader: deterministic, exactly resumable, host-sharded.

The modules, each importing only those above it:

- ``registry``: ``Task`` (a document source, a vocabulary and a preprocessor), ``Mixture``
  and their registry, which ``import tasks`` fills (the command lines import ``tasks``; the
  library never does); gin's ``data.task_vocabulary`` and ``data.task_text_includes_eos``.
- ``cache``: tokenised chunks and text pairs, streamed once into memory-mapped ``.npy``
  shards under ``cache_directory()``.
- ``examples``: the ``ul2``, ``lm`` and ``text_pair`` preprocessors; example ``i`` of epoch
  ``e`` of a task or mixture as a pure function of ``(seed, e, i)``.
- ``export``: ``export_task`` materialises the examples as NumPy shards and
  ``ExportedBatchIterator`` reads them back with the same batches and state.
- ``batches``: ``BatchIterator``, one host's batches with a JSON position, and
  ``get_batch_iterator`` (gin: ``get_batch_iterator.exported_dir`` reads an export instead).

The names imported below, the ones used outside the package, are its interface. The command
line (``__main__``): ``python -m glauber_jax.data list`` and
``python -m glauber_jax.data export --task=... --split=... --lengths=targets:64 --output_dir=...``.
"""

from glauber_jax.data.batches import get_batch_iterator
from glauber_jax.data.cache import cache_directory
from glauber_jax.data.export import export_task
from glauber_jax.data.registry import (Task, get_mixture, get_task, register_mixture,
                                       register_task, registered_mixture_names,
                                       registered_task_names, task_text_includes_eos,
                                       task_vocabulary)

__all__ = [
    "Task",
    "cache_directory",
    "export_task",
    "get_batch_iterator",
    "get_mixture",
    "get_task",
    "register_mixture",
    "register_task",
    "registered_mixture_names",
    "registered_task_names",
    "task_text_includes_eos",
    "task_vocabulary",
]
