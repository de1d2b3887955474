"""Batches of one host from a task, a mixture or an export: deterministic, exactly resumable.

Example ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)`` (``examples``). Host ``h`` of
``n`` reads positions ``h, h + n, ...`` of the epoch's order, so the hosts together see exactly
the single-host stream. ``get_state``/``set_state`` capture the position (JSON), and a restored
iterator yields the same batches.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import gin
import numpy as np

from glauber_jax.data import examples, export


class BatchIterator:
  """Batches of one host, in a deterministic order, with a JSON position (see the module doc).

  An example that does not fit (a too-long text pair) is skipped and counted (``skipped``);
  the batch is filled from the next positions of this host's order.
  """

  def __init__(self, source: examples.ExampleSource | examples.MixtureSource, batch_size: int,
               seed: int, shard_index: int = 0, num_shards: int = 1, shuffle: bool = True,
               repeat: bool = True) -> None:
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if not 0 <= shard_index < num_shards:
      raise ValueError(f"shard_index {shard_index} not in [0, {num_shards}).")
    if source.size < num_shards:
      raise ValueError(f"{source.size} examples cannot feed {num_shards} hosts.")
    if not repeat and source.size // num_shards < batch_size:
      raise ValueError(f"batch size {batch_size} exceeds the {source.size // num_shards} "
                       f"examples this host has of {source.name}, and repeat is off.")
    self.source, self.batch_size, self.seed = source, batch_size, seed
    self.shard_index, self.num_shards = shard_index, num_shards
    self.shuffle, self.repeat = shuffle, repeat
    self.epoch, self.position, self.skipped = 0, 0, 0
    self._order_epoch, self._order = -1, np.zeros(0, np.int64)

  def _host_order(self) -> np.ndarray:
    if self._order_epoch != self.epoch:
      order = examples.epoch_order(self.source.size, self.seed, self.epoch, self.shuffle)
      usable = self.source.size - self.source.size % self.num_shards  # Hosts stay in step.
      self._order = order[:usable][self.shard_index::self.num_shards]
      self._order_epoch = self.epoch
    return self._order

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> examples.Example:
    batch: list[examples.Example] = []
    while len(batch) < self.batch_size:
      order = self._host_order()
      if self.position >= len(order):
        if not self.repeat:
          raise StopIteration
        self.epoch, self.position = self.epoch + 1, 0
        continue
      index = int(order[self.position])
      self.position += 1
      try:
        batch.append(self.source.example(self.epoch, index))
      except ValueError as error:
        self.skipped += 1
        if self.skipped <= 10 or self.skipped % 1000 == 0:
          logging.warning("skipped example %d of %s (%d so far): %s", index,
                          self.source.name, self.skipped, error)
    return {name: np.stack([e[name] for e in batch]) for name in batch[0]}

  def get_state(self) -> dict[str, Any]:
    return {"epoch": self.epoch, "position": self.position, "skipped": self.skipped,
            "source": self.source.name, "seed": self.seed, "num_shards": self.num_shards}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Restores a ``get_state`` result; the task, seed and host count must match."""
    for key, value in (("source", self.source.name), ("seed", self.seed),
                       ("num_shards", self.num_shards)):
      if key in state and state[key] != value:
        raise ValueError(f"data state was saved with {key}={state[key]!r}, but this iterator "
                         f"has {key}={value!r}; the saved position does not apply.")
    self.epoch, self.position = int(state["epoch"]), int(state["position"])
    self.skipped = int(state.get("skipped", 0))


# Bound as data.get_batch_iterator, the name gin files and run configurations use.
@gin.configurable(module="glauber_jax.data",
                  denylist=["mixture_or_task_name", "split", "task_feature_lengths", "batch_size",
                            "seed", "shard_index", "num_shards"])
def get_batch_iterator(mixture_or_task_name: str, split: str,
                       task_feature_lengths: Mapping[str, int], batch_size: int, seed: int = 0,
                       shard_index: int = 0, num_shards: int = 1, shuffle: bool = True,
                       repeat: bool = True, exported_dir: Optional[str] = None
                       ) -> BatchIterator | export.ExportedBatchIterator:
  """This host's batches of a task or mixture (or of an export, when ``exported_dir`` is
  given, e.g. by gin's ``get_batch_iterator.exported_dir``)."""
  if exported_dir:
    iterator = export.ExportedBatchIterator(exported_dir, batch_size, shard_index, num_shards,
                                            repeat)
    expected = {"task": mixture_or_task_name, "split": split,
                "lengths": dict(task_feature_lengths), "seed": seed, "shuffle": shuffle}
    found = {key: iterator.manifest[key] for key in expected}
    if found != expected:
      raise ValueError(f"export {exported_dir} holds {found}, but the run asks for {expected}.")
    return iterator
  source = examples.example_source(mixture_or_task_name, split, task_feature_lengths, seed)
  return BatchIterator(source, batch_size, seed, shard_index, num_shards, shuffle, repeat)
