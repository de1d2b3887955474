"""Tokenised chunks and text pairs, cached on disk and memory-mapped.

Tokenised chunks are cached under ``cache_directory()`` (gin, else ``$GLAUBER_JAX_CACHE``, else
``~/.cache/glauber_jax``), one directory per (task, split, vocabulary fingerprint, chunk length,
source identity) of memory-mapped ``.npy`` shards. They are written while the corpus streams
past, so a corpus larger than memory is fine, and the directory appears atomically when done.
Text pairs (``text_pair`` tasks) are cached the same way.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Mapping, Optional

import gin
import numpy as np

from glauber_jax import vocabularies
from glauber_jax.data import registry

#: Tokens per cached chunk shard (256 MiB of int32, 128 MiB of uint16).
TOKENS_PER_SHARD = 1 << 26


@gin.configurable(module="glauber_jax.data")  # Bound as data.cache_directory.
def cache_directory(path: Optional[str] = None) -> str:
  """Where tokenizers and chunks are cached: ``path`` (gin), else ``$GLAUBER_JAX_CACHE``, else
  ``~/.cache/glauber_jax``."""
  return (path or os.environ.get("GLAUBER_JAX_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "glauber_jax"))


_INDEX = "index.json"


def _cache_path(task: registry.Task, split: str, vocab: vocabularies.Vocabulary, kind: str
                ) -> str:
  """The cache directory of a task's tokenised split (``kind`` says what was built)."""
  if split not in task.splits:
    raise ValueError(f"task {task.name} has no split {split!r}; it has {task.splits}.")
  key = f"{task.name}-{split}-{vocab.fingerprint()}-{kind}"
  if task.source_id is not None:
    key += "-" + hashlib.sha256(task.source_id().encode()).hexdigest()[:12]
  return os.path.join(cache_directory(), "tokens", key)


def _build_once(directory: str, build: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
  """The ``index.json`` of ``directory``, after ``build(scratch)`` filled a scratch directory
  (returning the index) and it was renamed to ``directory``, if it did not exist yet. A
  concurrent builder's finished copy wins; readers never see a partial directory."""
  path = os.path.join(directory, _INDEX)
  if not os.path.exists(path):
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(directory) + ".tmp-")
    try:
      index = build(scratch)
      with open(os.path.join(scratch, _INDEX), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
      try:
        os.rename(scratch, directory)
      except OSError:
        if not os.path.exists(path):
          raise
    finally:
      if os.path.isdir(scratch):
        shutil.rmtree(scratch)
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _token_dtype(vocab: vocabularies.Vocabulary) -> type:
  return np.uint16 if vocab.vocab_size <= 1 << 16 else np.int32


class ChunkStore:
  """``[num_chunks, chunk_length]`` tokens over memory-mapped shards; rows come back int32."""

  def __init__(self, directory: str, index: Mapping[str, Any]) -> None:
    self.directory = directory
    self.chunk_length = int(index["chunk_length"])
    self.num_documents, self.num_tokens = int(index["documents"]), int(index["tokens"])
    self._shards = [np.load(os.path.join(directory, name), mmap_mode="r")
                    for name in index["shards"]]
    self._offsets = np.cumsum([0] + [len(shard) for shard in self._shards])

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def __getitem__(self, index: int) -> np.ndarray:
    if not 0 <= index < len(self):
      raise IndexError(f"chunk {index} of {len(self)}.")
    shard = int(np.searchsorted(self._offsets, index, side="right")) - 1
    return np.asarray(self._shards[shard][index - self._offsets[shard]], np.int32)


def _write_chunks(task: registry.Task, split: str, vocab: vocabularies.Vocabulary,
                  chunk_length: int, tokens_per_shard: int, scratch: str) -> dict[str, Any]:
  """Streams the split's documents into chunk shards in ``scratch``; returns the index."""
  dtype = _token_dtype(vocab)
  shard_tokens = max(1, tokens_per_shard // chunk_length) * chunk_length
  pending: list[np.ndarray] = []
  pending_tokens = documents = total_tokens = 0
  shards: list[str] = []
  started = time.perf_counter()

  def write(tokens: np.ndarray) -> None:
    shards.append(f"shard-{len(shards):05d}.npy")
    np.save(os.path.join(scratch, shards[-1]), tokens.reshape(-1, chunk_length))

  for document in task.source(split):
    ids = vocab.encode(document)
    if task.append_eos:
      ids = np.append(ids, vocab.eos_id)
    ids = ids.astype(dtype)
    pending.append(ids)
    pending_tokens += len(ids)
    documents += 1
    total_tokens += len(ids)
    if pending_tokens >= shard_tokens:
      buffer = np.concatenate(pending)
      while len(buffer) >= shard_tokens:
        write(buffer[:shard_tokens])
        buffer = buffer[shard_tokens:]
      pending, pending_tokens = [buffer], len(buffer)
    if documents % 100_000 == 0:
      logging.info("Tokenising %s/%s: %d documents, %d tokens (%.0f tokens/s)", task.name,
                   split, documents, total_tokens, total_tokens / (time.perf_counter() - started))
  if documents == 0:
    raise ValueError(f"task {task.name} split {split} has no documents (empty corpus?).")
  buffer = np.concatenate(pending)
  if len(buffer) >= chunk_length:
    write(buffer[: len(buffer) // chunk_length * chunk_length])
  if not shards:
    raise ValueError(f"task {task.name} split {split}: {documents} documents, {total_tokens} "
                     f"tokens: not one chunk of {chunk_length}.")
  logging.info("Tokenised %s/%s in %.1fs: %d documents, %d tokens, %d chunks of %d", task.name,
               split, time.perf_counter() - started, documents, total_tokens,
               total_tokens // chunk_length, chunk_length)
  return {"task": task.name, "split": split, "vocabulary": vocab.fingerprint(),
          "chunk_length": chunk_length, "documents": documents, "tokens": total_tokens,
          "shards": shards}


def tokenized_chunks(task: registry.Task, split: str, chunk_length: int,
                     tokens_per_shard: int = TOKENS_PER_SHARD) -> ChunkStore:
  """The split's documents tokenised, each followed by EOS (unless ``task.append_eos`` is
  False), concatenated and wrapped into ``chunk_length``-token chunks (the remainder is
  dropped); built once (streaming, in shards of about ``tokens_per_shard`` tokens), then
  memory-mapped from the cache."""
  if chunk_length < 1:
    raise ValueError(f"chunk length must be positive, got {chunk_length}.")
  vocab = task.vocabulary()
  kind = f"chunks{chunk_length}" + ("" if task.append_eos else "-noeos")
  directory = _cache_path(task, split, vocab, kind)
  index = _build_once(directory, functools.partial(_write_chunks, task, split, vocab,
                                                   chunk_length, tokens_per_shard))
  return ChunkStore(directory, index)


class PairStore:
  """Tokenised ``(inputs, targets)`` pairs (no EOS), memory-mapped; items come back int32."""

  def __init__(self, directory: str) -> None:
    self._arrays = {name: np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r")
                    for name in ("inputs", "targets", "inputs_offsets", "targets_offsets")}

  def __len__(self) -> int:
    return len(self._arrays["inputs_offsets"]) - 1

  def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 <= index < len(self):
      raise IndexError(f"pair {index} of {len(self)}.")
    return tuple(  # type: ignore[return-value]
        np.asarray(self._arrays[name][self._arrays[f"{name}_offsets"][index]:
                                      self._arrays[f"{name}_offsets"][index + 1]], np.int32)
        for name in ("inputs", "targets"))


def _write_pairs(task: registry.Task, split: str, vocab: vocabularies.Vocabulary,
                 scratch: str) -> dict[str, Any]:
  tokens: dict[str, list[np.ndarray]] = {"inputs": [], "targets": []}
  for inputs, targets in task.source(split):
    tokens["inputs"].append(vocab.encode(inputs).astype(_token_dtype(vocab)))
    tokens["targets"].append(vocab.encode(targets).astype(_token_dtype(vocab)))
  if not tokens["inputs"]:
    raise ValueError(f"task {task.name} split {split} has no examples.")
  for name, arrays in tokens.items():
    np.save(os.path.join(scratch, f"{name}.npy"), np.concatenate(arrays))
    np.save(os.path.join(scratch, f"{name}_offsets.npy"),
            np.cumsum([0] + [len(a) for a in arrays]))
  return {"task": task.name, "split": split, "vocabulary": vocab.fingerprint(),
          "pairs": len(tokens["inputs"])}


def tokenized_pairs(task: registry.Task, split: str) -> PairStore:
  """The split's ``(inputs, targets)`` texts tokenised; built once, then read from the cache."""
  vocab = task.vocabulary()
  directory = _cache_path(task, split, vocab, "pairs")
  _build_once(directory, functools.partial(_write_pairs, task, split, vocab))
  return PairStore(directory)
