"""Tasks and a TensorFlow-free batch loader: deterministic, exactly resumable, host-sharded.

A ``Task`` names a document source, a vocabulary and a preprocessor:

- ``ul2``: documents are tokenised, joined with EOS (none for a task with
  ``append_eos=False``), wrapped into chunks (``tokenized_chunks``)
  and each chunk becomes one mixture-of-denoisers example (``denoisers.ul2_example``) with
  features ``encoder_input_tokens``, ``decoder_input_tokens``, ``decoder_target_tokens`` and
  ``decoder_loss_weights``. The chunk length is the longest every denoiser fits into
  ``TASK_FEATURE_LENGTHS`` (``denoisers.largest_chunk_length``), so no example is dropped.
- ``lm``: the chunks themselves, ``{"targets": [L]}``: what the Glauber model trains on.
- ``text_pair``: ``(inputs, targets)`` texts (the puzzle tasks) as encoder-decoder features;
  pairs that do not fit are skipped and counted.

Example ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: the order is a per-epoch
permutation and each example's randomness is seeded by ``(seed, e, chunk index)``. Host ``h`` of
``n`` reads positions ``h, h + n, ...`` of that order, so the hosts together see exactly the
single-host stream. ``get_state``/``set_state`` capture the position (JSON), and a restored
iterator yields the same batches.

Tokenised chunks are cached under ``cache_directory()`` (gin, else ``$GLAUBER_JAX_CACHE``, else
``~/.cache/glauber_jax``), one directory per (task, split, vocabulary fingerprint, chunk length,
source identity) of memory-mapped ``.npy`` shards. They are written while the corpus streams
past, so a corpus larger than memory is fine, and the directory appears atomically when done.

``export_task`` materialises preprocessed examples to NumPy shards and ``ExportedBatchIterator``
reads them back with the same batches and state: the path for machines without the tokenizer
or the raw corpus. CLI: ``python -m glauber_jax.data list`` and
``python -m glauber_jax.data export --task=... --split=... --lengths=targets:64 --output_dir=...``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # Run as glauber_jax.data, so gin and the registries see one module.
  from glauber_jax import data as _entry_point
  sys.exit(_entry_point.main(sys.argv[1:]))

import argparse
import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import gin
import numpy as np

from glauber_jax import denoisers, gin_utils, summaries, vocabularies

PREPROCESSORS = ("ul2", "lm", "text_pair")
Example = dict[str, np.ndarray]

#: Tokens per cached chunk shard (256 MiB of int32, 128 MiB of uint16).
TOKENS_PER_SHARD = 1 << 26


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


def get_mixture(name: str) -> Mixture:
  if name not in _MIXTURES:
    raise _unknown("mixture", name)
  return _MIXTURES[name]


@gin.configurable
def task_vocabulary(task_name: str = gin.REQUIRED) -> vocabularies.Vocabulary:
  """The vocabulary of a registered task or mixture (gin: ``@data.task_vocabulary()``)."""
  if task_name in _MIXTURES:
    task_name = _MIXTURES[task_name].tasks[0][0]
  return get_task(task_name).vocabulary()


@gin.configurable
def task_text_includes_eos(task_name: str = gin.REQUIRED) -> bool:
  """Whether EOS is part of the text a model of this task or mixture writes: True when the
  documents are joined with EOS (``Task.append_eos``), False for fixed-length sequences with no
  end (gin: ``@data.task_text_includes_eos()``)."""
  names = ([name for name, _ in _MIXTURES[task_name].tasks] if task_name in _MIXTURES
           else [task_name])
  return any(get_task(name).append_eos for name in names)


@gin.configurable
def cache_directory(path: Optional[str] = None) -> str:
  """Where tokenizers and chunks are cached: ``path`` (gin), else ``$GLAUBER_JAX_CACHE``, else
  ``~/.cache/glauber_jax``."""
  return (path or os.environ.get("GLAUBER_JAX_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "glauber_jax"))


# ---- Tokenised chunks and pairs (cached) -----------------------------------------------------

_INDEX = "index.json"


def _cache_path(task: Task, split: str, vocab: vocabularies.Vocabulary, kind: str) -> str:
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


def _write_chunks(task: Task, split: str, vocab: vocabularies.Vocabulary, chunk_length: int,
                  tokens_per_shard: int, scratch: str) -> dict[str, Any]:
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


def tokenized_chunks(task: Task, split: str, chunk_length: int,
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


def _write_pairs(task: Task, split: str, vocab: vocabularies.Vocabulary, scratch: str
                 ) -> dict[str, Any]:
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


def tokenized_pairs(task: Task, split: str) -> PairStore:
  """The split's ``(inputs, targets)`` texts tokenised; built once, then read from the cache."""
  vocab = task.vocabulary()
  directory = _cache_path(task, split, vocab, "pairs")
  _build_once(directory, functools.partial(_write_pairs, task, split, vocab))
  return PairStore(directory)


# ---- Examples --------------------------------------------------------------------------------------


def _check_lengths(task: Task, lengths: Mapping[str, int]) -> None:
  wanted = {"targets"} if task.preprocessor == "lm" else {"inputs", "targets"}
  if set(lengths) != wanted:
    shape = "{'targets': L}" if wanted == {"targets"} else "{'inputs': Li, 'targets': Lt}"
    raise ValueError(f"task {task.name} ({task.preprocessor}) needs TASK_FEATURE_LENGTHS = "
                     f"{shape}, got {dict(lengths)}.")
  for name, value in lengths.items():
    if int(value) < 1:
      raise ValueError(f"task {task.name}: feature length {name}={value} must be positive.")


class ExampleSource:
  """Example ``index`` of epoch ``epoch`` for a task, split and feature lengths."""

  def __init__(self, task: Task, split: str, lengths: Mapping[str, int], seed: int) -> None:
    _check_lengths(task, lengths)
    if split not in task.splits:
      raise ValueError(f"task {task.name} has no split {split!r}; it has {task.splits}.")
    self.task, self.seed = task, seed
    self.vocab = task.vocabulary()
    self.chunk_length = 0
    if task.preprocessor == "lm":
      self.chunk_length = int(lengths["targets"])
    else:
      self.inputs_length, self.targets_length = int(lengths["inputs"]), int(lengths["targets"])
    if task.preprocessor == "ul2":
      self.denoisers = tuple((task.ul2_denoisers or denoisers.ul2_denoisers)())
      self.chunk_length = denoisers.largest_chunk_length(self.denoisers, self.inputs_length,
                                                         self.targets_length)
    if self.chunk_length:
      self.chunks = tokenized_chunks(task, split, self.chunk_length)
      self.size = len(self.chunks)
    else:
      self.pairs = tokenized_pairs(task, split)
      self.size = len(self.pairs)

  @property
  def name(self) -> str:
    return self.task.name

  def example(self, epoch: int, index: int) -> Example:
    """Raises ValueError for a pair that does not fit (the caller skips and counts it)."""
    if self.task.preprocessor == "lm":
      return {"targets": self.chunks[index]}
    if self.task.preprocessor == "ul2":
      rng = np.random.default_rng((self.seed, epoch, index))
      return denoisers.ul2_example(self.chunks[index], rng, self.denoisers, self.vocab,
                                   self.inputs_length, self.targets_length)
    inputs, targets = self.pairs[index]
    return denoisers.encoder_decoder_features(inputs, targets, self.inputs_length,
                                              self.targets_length)


def epoch_order(size: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  """The single-host order of an epoch's example indices."""
  if not shuffle:
    return np.arange(size)
  return np.random.default_rng((seed, epoch)).permutation(size)


class MixtureSource:
  """Example ``index`` of epoch ``epoch`` of a mixture, as a pure function of both.

  The task is drawn by rate with ``(seed, epoch, index)``; it supplies the example at position
  ``index`` (wrapping) of its own per-epoch permutation. An epoch is as long as the tasks'
  sizes summed.
  """

  def __init__(self, mixture: Mixture, split: str, lengths: Mapping[str, int], seed: int
               ) -> None:
    self.name, self.seed = mixture.name, seed
    self.sources = [ExampleSource(get_task(task), split, lengths, seed)
                    for task, _ in mixture.tasks]
    fingerprints = {s.vocab.fingerprint() for s in self.sources}
    preprocessors = {s.task.preprocessor for s in self.sources}
    if len(fingerprints) > 1 or len(preprocessors) > 1:
      raise ValueError(f"mixture {mixture.name}: its tasks must share one vocabulary and one "
                       f"preprocessor; got {len(fingerprints)} and {sorted(preprocessors)}.")
    self.vocab = self.sources[0].vocab
    rates = np.asarray([rate for _, rate in mixture.tasks], np.float64)
    self.rates = rates / rates.sum()
    self.size = sum(source.size for source in self.sources)
    self._orders: dict[tuple[int, int], np.ndarray] = {}

  def example(self, epoch: int, index: int) -> Example:
    choice = int(np.random.default_rng((self.seed, epoch, index, 1)).choice(
        len(self.sources), p=self.rates))
    source = self.sources[choice]
    if (epoch, choice) not in self._orders:
      if any(key[0] != epoch for key in self._orders):
        self._orders.clear()  # Keep one epoch's permutations.
      self._orders[epoch, choice] = np.random.default_rng(
          (self.seed, epoch, choice)).permutation(source.size)
    return source.example(epoch, int(self._orders[epoch, choice][index % source.size]))


def example_source(mixture_or_task_name: str, split: str, lengths: Mapping[str, int],
                   seed: int) -> ExampleSource | MixtureSource:
  """The examples of a registered task or mixture."""
  if mixture_or_task_name in _MIXTURES:
    return MixtureSource(_MIXTURES[mixture_or_task_name], split, lengths, seed)
  return ExampleSource(get_task(mixture_or_task_name), split, lengths, seed)


class BatchIterator:
  """Batches of one host, in a deterministic order, with a JSON position (see the module doc).

  An example that does not fit (a too-long text pair) is skipped and counted (``skipped``);
  the batch is filled from the next positions of this host's order.
  """

  def __init__(self, source: ExampleSource | MixtureSource, batch_size: int, seed: int,
               shard_index: int = 0, num_shards: int = 1, shuffle: bool = True,
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
      order = epoch_order(self.source.size, self.seed, self.epoch, self.shuffle)
      usable = self.source.size - self.source.size % self.num_shards  # Hosts stay in step.
      self._order = order[:usable][self.shard_index::self.num_shards]
      self._order_epoch = self.epoch
    return self._order

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> Example:
    examples: list[Example] = []
    while len(examples) < self.batch_size:
      order = self._host_order()
      if self.position >= len(order):
        if not self.repeat:
          raise StopIteration
        self.epoch, self.position = self.epoch + 1, 0
        continue
      index = int(order[self.position])
      self.position += 1
      try:
        examples.append(self.source.example(self.epoch, index))
      except ValueError as error:
        self.skipped += 1
        if self.skipped <= 10 or self.skipped % 1000 == 0:
          logging.warning("skipped example %d of %s (%d so far): %s", index,
                          self.source.name, self.skipped, error)
    return {name: np.stack([e[name] for e in examples]) for name in examples[0]}

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


# ---- Exported shards -----------------------------------------------------------------------------

MANIFEST = "manifest.json"
EXPORT_FORMAT = "glauber_jax.export/1"


def export_task(task_name: str, split: str, task_feature_lengths: Mapping[str, int],
                output_dir: str, seed: int = 0, num_epochs: int = 1,
                num_examples: Optional[int] = None, shuffle: bool = True,
                examples_per_shard: int = 50_000) -> str:
  """Writes the single-host example stream (``num_epochs`` epochs, or its first
  ``num_examples`` examples) as NumPy shards, one ``.npy`` per feature and shard, then
  ``manifest.json``.

  ``ExportedBatchIterator`` over the result yields the batches ``get_batch_iterator`` would
  for any host sharding, without the corpus or the tokenizer (when no example was skipped).
  """
  if os.path.exists(os.path.join(output_dir, MANIFEST)):
    raise FileExistsError(f"{output_dir} already holds an export; remove it or pick another "
                          "directory.")
  if num_epochs < 1 or (num_examples is not None and num_examples < 1):
    raise ValueError(f"num_epochs ({num_epochs}) and num_examples ({num_examples}) must be "
                     "positive.")
  source = example_source(task_name, split, task_feature_lengths, seed)
  os.makedirs(output_dir, exist_ok=True)
  shards: list[dict[str, Any]] = []
  epochs: list[int] = []
  pending: list[Example] = []
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
    for index in epoch_order(source.size, seed, epoch, shuffle):
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
  """Batches from ``export_task`` shards, split over hosts as ``BatchIterator`` splits them.

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

  def __next__(self) -> Example:
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


@gin.configurable(denylist=["mixture_or_task_name", "split", "task_feature_lengths",
                            "batch_size", "seed", "shard_index", "num_shards"])
def get_batch_iterator(mixture_or_task_name: str, split: str,
                       task_feature_lengths: Mapping[str, int], batch_size: int, seed: int = 0,
                       shard_index: int = 0, num_shards: int = 1, shuffle: bool = True,
                       repeat: bool = True, exported_dir: Optional[str] = None
                       ) -> BatchIterator | ExportedBatchIterator:
  """This host's batches of a task or mixture (or of an export, when ``exported_dir`` is
  given, e.g. by gin's ``get_batch_iterator.exported_dir``)."""
  if exported_dir:
    iterator = ExportedBatchIterator(exported_dir, batch_size, shard_index, num_shards, repeat)
    expected = {"task": mixture_or_task_name, "split": split,
                "lengths": dict(task_feature_lengths), "seed": seed, "shuffle": shuffle}
    found = {key: iterator.manifest[key] for key in expected}
    if found != expected:
      raise ValueError(f"export {exported_dir} holds {found}, but the run asks for {expected}.")
    return iterator
  source = example_source(mixture_or_task_name, split, task_feature_lengths, seed)
  return BatchIterator(source, batch_size, seed, shard_index, num_shards, shuffle, repeat)


# ---- Command line --------------------------------------------------------------------------------


def _parse_lengths(text: str) -> dict[str, int]:
  try:
    return {name: int(value) for name, value in (part.split(":") for part in text.split(","))}
  except ValueError:
    raise SystemExit(f"--lengths must look like inputs:512,targets:128, got {text!r}.") from None


def describe() -> str:
  """One line per registered task and mixture."""
  lines = [f"{name:28s} {get_task(name).preprocessor:10s} {get_task(name).description}"
           for name in registered_task_names()]
  for name in registered_mixture_names():
    parts = ", ".join(f"{task} ({rate:g})" for task, rate in _MIXTURES[name].tasks)
    lines.append(f"{name:28s} {'mixture':10s} {parts}")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """``list`` the registered tasks, or ``export`` one (``--gin.NAME=VALUE`` bindings allowed,
  e.g. ``--gin.openwebtext_path.path="'/data/owt'"``)."""
  import tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  gin_files, bindings, rest = gin_utils.split_gin_args(list(argv or ()))
  parser = argparse.ArgumentParser(prog="python -m glauber_jax.data",
                                   description="List tasks or export one to NumPy shards.")
  commands = parser.add_subparsers(dest="command", required=True)
  commands.add_parser("list", help="registered tasks and mixtures")
  export = commands.add_parser("export", help="materialise a task's examples")
  export.add_argument("--task", required=True)
  export.add_argument("--split", default="train")
  export.add_argument("--lengths", required=True, help="e.g. inputs:512,targets:128")
  export.add_argument("--output_dir", required=True)
  export.add_argument("--seed", type=int, default=0)
  export.add_argument("--num_epochs", type=int, default=1)
  export.add_argument("--num_examples", type=int, default=None,
                      help="stop after this many examples (instead of whole epochs)")
  export.add_argument("--noshuffle", dest="shuffle", action="store_false")
  args = parser.parse_args(rest)
  summaries.configure_logging()
  if args.command == "list":
    print(describe())
    return
  lengths = _parse_lengths(args.lengths)
  try:
    gin_utils.parse_gin(gin_files, bindings)
  except gin_utils.GinConfigError as error:
    raise SystemExit(f"gin configuration error {error}") from None
  export_task(args.task, args.split, lengths, args.output_dir,
              seed=args.seed, num_epochs=args.num_epochs, num_examples=args.num_examples,
              shuffle=args.shuffle)
