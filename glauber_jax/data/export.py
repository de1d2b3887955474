"""Exported shards: a task's examples materialised as NumPy files, and read back.

``export_task`` writes the single-host example stream to NumPy shards and
``ExportedBatchIterator`` reads them back with the same batches and state as the live loader
(``batches.get_batch_iterator``): the path for machines without the tokenizer or the raw corpus.
On the command line: ``python -m glauber_jax.data export ...``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Mapping, Optional

import numpy as np

from glauber_jax.data import examples

MANIFEST = "manifest.json"
EXPORT_FORMAT = "glauber_jax.export/1"


def export_task(task_name: str, split: str, task_feature_lengths: Mapping[str, int],
                output_dir: str, seed: int = 0, num_epochs: int = 1,
                num_examples: Optional[int] = None, shuffle: bool = True,
                examples_per_shard: int = 50_000) -> str:
  """Writes the single-host example stream (``num_epochs`` epochs, or its first
  ``num_examples`` examples) as NumPy shards, one ``.npy`` per feature and shard, then
  ``manifest.json``.

  ``ExportedBatchIterator`` over the result yields the batches ``batches.get_batch_iterator``
  would
  for any host sharding, without the corpus or the tokenizer (when no example was skipped).
  """
  if os.path.exists(os.path.join(output_dir, MANIFEST)):
    raise FileExistsError(f"{output_dir} already holds an export; remove it or pick another "
                          "directory.")
  if num_epochs < 1 or (num_examples is not None and num_examples < 1):
    raise ValueError(f"num_epochs ({num_epochs}) and num_examples ({num_examples}) must be "
                     "positive.")
  source = examples.example_source(task_name, split, task_feature_lengths, seed)
  os.makedirs(output_dir, exist_ok=True)
  shards: list[dict[str, Any]] = []
  epochs: list[int] = []
  pending: list[examples.Example] = []
  features: dict[str, dict[str, Any]] = {}
  skipped = written = 0

  def flush() -> None:
    name = f"shard-{len(shards):05d}"
    for feature in pending[0]:
      _atomic_save(os.path.join(output_dir, f"{name}.{feature}.npy"),
                   np.stack([e[feature] for e in pending]))
    shards.append({"name": name, "examples": len(pending)})
    pending.clear()

  limit = num_examples if num_examples is not None else num_epochs * source.size
  epoch = 0
  while written < limit and (num_examples is not None or epoch < num_epochs):
    epochs.append(0)
    for index in examples.epoch_order(source.size, seed, epoch, shuffle):
      if written == limit:
        break
      try:
        example = source.example(epoch, int(index))
      except ValueError:
        skipped += 1
        continue
      features = {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in example.items()}
      pending.append(example)
      written += 1
      epochs[-1] += 1
      if len(pending) == examples_per_shard:
        flush()
    if not epochs[-1]:
      break  # Every example of the epoch was skipped.
    epoch += 1
  if pending:
    flush()
  if not written:
    raise ValueError(f"{task_name}/{split}: every example was skipped; nothing to export.")
  manifest = {"format": EXPORT_FORMAT, "task": task_name, "split": split,
              "lengths": dict(task_feature_lengths), "seed": seed, "shuffle": shuffle,
              "vocabulary": source.vocab.fingerprint(), "vocab_size": source.vocab.vocab_size,
              "features": features, "epochs": epochs, "skipped": skipped, "shards": shards}
  _atomic_write_text(os.path.join(output_dir, MANIFEST), json.dumps(manifest, indent=1))
  logging.info("Exported %d examples (%d epochs, %d skipped) of %s/%s to %s", written,
               len(epochs), skipped, task_name, split, output_dir)
  return output_dir


def _atomic_save(path: str, array: np.ndarray) -> None:
  with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".npy",
                                   delete=False) as tmp:
    np.save(tmp, array)
  os.replace(tmp.name, path)


def _atomic_write_text(path: str, text: str) -> None:
  with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), suffix=".tmp",
                                   delete=False, encoding="utf-8") as tmp:
    tmp.write(text)
  os.replace(tmp.name, path)


class ExportedBatchIterator:
  """Batches from ``export_task`` shards, split over hosts as ``batches.BatchIterator`` splits
  them.

  Within each exported epoch of ``c`` examples, host ``h`` of ``n`` reads rows ``h, h + n, ...``
  of the first ``c - c % n``. With ``repeat`` the export is read again from its start.
  """

  def __init__(self, directory: str, batch_size: int, shard_index: int = 0,
               num_shards: int = 1, repeat: bool = True) -> None:
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{directory} has no {MANIFEST}; write one with "
                              "`python -m glauber_jax.data export ...`.")
    with open(path, encoding="utf-8") as f:
      self.manifest = json.load(f)
    if self.manifest.get("format") != EXPORT_FORMAT:
      raise ValueError(f"{path}: format {self.manifest.get('format')!r}, expected "
                       f"{EXPORT_FORMAT!r}; export again.")
    if batch_size < 1 or not 0 <= shard_index < num_shards:
      raise ValueError(f"need batch_size >= 1 and 0 <= shard_index < num_shards, got "
                       f"{batch_size}, {shard_index}, {num_shards}.")
    shards = self.manifest["shards"]
    self._features = {name: [np.load(os.path.join(directory, f"{s['name']}.{name}.npy"),
                                     mmap_mode="r") for s in shards]
                      for name in self.manifest["features"]}
    self._shard_offsets = np.cumsum([0] + [s["examples"] for s in shards])
    counts = np.asarray(self.manifest["epochs"], np.int64)
    self._epoch_starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    self._host_offsets = np.concatenate([[0], np.cumsum(counts // num_shards)])
    self.size = int(self._host_offsets[-1])  # Examples per host.
    if self.size < (1 if repeat else batch_size):
      raise ValueError(f"{directory}: {self.size} examples per host for {num_shards} hosts, "
                       f"fewer than a batch of {batch_size}.")
    self.batch_size, self.shard_index, self.num_shards = batch_size, shard_index, num_shards
    self.repeat = repeat
    self.position = 0

  def __iter__(self) -> "ExportedBatchIterator":
    return self

  def _rows(self, local: np.ndarray) -> np.ndarray:
    epoch = np.searchsorted(self._host_offsets, local, side="right") - 1
    within = local - self._host_offsets[epoch]
    return self._epoch_starts[epoch] + self.shard_index + self.num_shards * within

  def __next__(self) -> examples.Example:
    if not self.repeat and self.position + self.batch_size > self.size:
      raise StopIteration
    rows = self._rows((self.position + np.arange(self.batch_size)) % self.size)
    self.position += self.batch_size
    shard = np.searchsorted(self._shard_offsets, rows, side="right") - 1
    batch = {}
    for name, arrays in self._features.items():
      batch[name] = np.stack([arrays[s][r - self._shard_offsets[s]]
                              for s, r in zip(shard, rows)])
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"position": self.position, "export": self.manifest["task"],
            "num_shards": self.num_shards}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if state.get("num_shards", self.num_shards) != self.num_shards:
      raise ValueError(f"data state was saved with num_shards={state['num_shards']}, but this "
                       f"iterator has {self.num_shards}; the saved position does not apply.")
    self.position = int(state["position"])
