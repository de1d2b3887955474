"""Examples of a task or mixture: example ``i`` of epoch ``e`` as a pure function of both.

Each preprocessor (``registry.PREPROCESSORS``) formats its task's cached data (``cache``):

- ``ul2``: documents are tokenised, joined with EOS (none for a task with
  ``append_eos=False``), wrapped into chunks (``cache.tokenized_chunks``)
  and each chunk becomes one mixture-of-denoisers example (``denoisers.ul2_example``) with
  features ``encoder_input_tokens``, ``decoder_input_tokens``, ``decoder_target_tokens`` and
  ``decoder_loss_weights``. The chunk length is the longest every denoiser fits into
  ``TASK_FEATURE_LENGTHS`` (``denoisers.largest_chunk_length``), so no example is dropped.
- ``lm``: the chunks themselves, ``{"targets": [L]}``: what the Glauber model trains on.
- ``text_pair``: ``(inputs, targets)`` texts (the puzzle tasks) as encoder-decoder features;
  pairs that do not fit raise ``ValueError`` (the iterators skip and count them).

An epoch's order is a permutation (``epoch_order``) and each example's randomness is seeded by
``(seed, epoch, chunk index)``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from glauber_jax import denoisers
from glauber_jax.data import cache, registry

#: One example (or a batch of them): feature name to array.
Example = dict[str, np.ndarray]


def _check_lengths(task: registry.Task, lengths: Mapping[str, int]) -> None:
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

  def __init__(self, task: registry.Task, split: str, lengths: Mapping[str, int], seed: int
               ) -> None:
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
      self.chunks = cache.tokenized_chunks(task, split, self.chunk_length)
      self.size = len(self.chunks)
    else:
      self.pairs = cache.tokenized_pairs(task, split)
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

  def __init__(self, mixture: registry.Mixture, split: str, lengths: Mapping[str, int],
               seed: int) -> None:
    self.name, self.seed = mixture.name, seed
    self.sources = [ExampleSource(registry.get_task(task), split, lengths, seed)
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
  if registry.is_mixture(mixture_or_task_name):
    return MixtureSource(registry.get_mixture(mixture_or_task_name), split, lengths, seed)
  return ExampleSource(registry.get_task(mixture_or_task_name), split, lengths, seed)
