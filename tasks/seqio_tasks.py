"""The registered tasks as seqio Tasks and Mixtures, for seqio/T5X-style TensorFlow pipelines.

    import seqio
    from tasks import seqio_tasks  # needs TensorFlow and seqio; registers every task
    seqio.get_mixture_or_task("shakespeare_ul2").get_dataset(
        {"inputs": 128, "targets": 64}, split="train", shuffle=False)

Each seqio Task is built from seqio's own parts around the TensorFlow-free code:

- source: ``seqio.FunctionDataSource`` over the task's documents (``{"text"}``) or text pairs
  (``{"inputs", "targets"}``);
- vocabulary: ``VocabularyAdapter``, a ``seqio.Vocabulary`` around ours (same ids; TensorFlow
  ops through ``tf.numpy_function``), built lazily, so registering trains no tokenizer;
- preprocessors: tokenise, append EOS (unless the task's ``append_eos`` is False), join and
  wrap into chunks of the length ``glauber_jax.data`` derives from the feature lengths, then
  the same NumPy formatting:
  ``denoisers.ul2_example`` seeded by ``(SEED, 0, chunk index)``, plain chunks, or
  ``denoisers.encoder_decoder_features`` (pairs that do not fit are filtered out).

So example ``i`` of ``get_dataset(..., shuffle=False)`` equals example ``i`` of epoch 0 of
``data.get_batch_iterator(..., seed=SEED, shuffle=False)`` (``tests/test_seqio_tasks.py``).
Shuffling, repetition and caching are seqio's usual arguments; mixtures are sampled by seqio
with the registered rates (not the TensorFlow-free loader's draw).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

import tasks  # noqa: F401  Registers the TensorFlow-free tasks mirrored here.
from glauber_jax import data, denoisers, vocabularies

#: Seed of the per-example randomness (the UL2 denoiser draws) of the seqio tasks.
SEED = 0

_ENCODER_DECODER = {"encoder_input_tokens": tf.int32, "decoder_input_tokens": tf.int32,
                    "decoder_target_tokens": tf.int32, "decoder_loss_weights": tf.float32}


class VocabularyAdapter(seqio.Vocabulary):
  """A ``glauber_jax`` vocabulary as a ``seqio.Vocabulary``: the same ids, pad 0, EOS 1,
  unknown 2; sentinels and mode tokens are ordinary ids below ``vocab_size``."""

  def __init__(self, build: Callable[[], vocabularies.Vocabulary]) -> None:
    super().__init__(extra_ids=0)
    self._build = build

  @functools.cached_property
  def vocabulary(self) -> vocabularies.Vocabulary:
    return self._build()

  @property
  def eos_id(self) -> int:
    return vocabularies.EOS_ID

  @property
  def unk_id(self) -> int:
    return vocabularies.UNK_ID

  @property
  def _base_vocab_size(self) -> int:
    return self.vocabulary.vocab_size

  def _encode(self, s: str) -> Sequence[int]:
    return self.vocabulary.encode(s).tolist()

  def _decode(self, ids: Sequence[int]) -> str:
    return self.vocabulary.decode(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    ids = tf.numpy_function(
        lambda text: self.vocabulary.encode(np.asarray(text).item().decode("utf-8")), [s],
        tf.int32, stateful=False)
    return tf.ensure_shape(ids, [None])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    def decode(values: np.ndarray) -> np.ndarray:
      rows = values.reshape(-1, values.shape[-1]) if values.ndim else values.reshape(1, 1)
      texts = [self.vocabulary.decode(row).encode("utf-8") for row in rows]
      return np.asarray(texts, object).reshape(values.shape[:-1])

    text = tf.numpy_function(decode, [ids], tf.string, stateful=False)
    return tf.ensure_shape(text, ids.shape[:-1])

  def __eq__(self, other: object) -> bool:
    return isinstance(other, VocabularyAdapter) and self.vocabulary == other.vocabulary

  def __hash__(self) -> int:
    return hash(self.vocabulary)


def _source(task_name: str, split: str, shuffle_files: bool = False,
            seed: Optional[int] = None) -> tf.data.Dataset:
  """The task's documents as ``{"text"}`` or its pairs as ``{"inputs", "targets"}``, in order
  (``shuffle_files`` does not apply: a source is one ordered stream)."""
  del shuffle_files, seed
  task = data.get_task(task_name)
  if task.preprocessor == "text_pair":
    return tf.data.Dataset.from_generator(
        lambda: task.source(split), output_signature=tf.TensorSpec([2], tf.string)
    ).map(lambda pair: {"inputs": pair[0], "targets": pair[1]})
  return tf.data.Dataset.from_generator(
      lambda: task.source(split), output_signature=tf.TensorSpec([], tf.string)
  ).map(lambda text: {"text": text})


def chunk_length(task: data.Task, sequence_length: Mapping[str, int]) -> int:
  """The chunk length the TensorFlow-free loader uses for these feature lengths."""
  if task.preprocessor == "lm":
    return int(sequence_length["targets"])
  return denoisers.largest_chunk_length(_denoisers(task), int(sequence_length["inputs"]),
                                        int(sequence_length["targets"]))


def _denoisers(task: data.Task) -> tuple[denoisers.DenoiserConfig, ...]:
  return tuple((task.ul2_denoisers or denoisers.ul2_denoisers)())


def _pack(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
          output_features: Mapping[str, seqio.Feature], task_name: str) -> tf.data.Dataset:
  """Documents -> ids + EOS (no EOS for a task with ``append_eos=False``), concatenated and
  wrapped into chunks (remainder dropped), each with its index: ``{"index", "chunk"}``."""
  vocab = next(iter(output_features.values())).vocabulary
  task = data.get_task(task_name)
  length = chunk_length(task, sequence_length)
  if task.append_eos:
    tokens = dataset.map(lambda ex: tf.concat([vocab.encode_tf(ex["text"]), [vocab.eos_id]], 0))
  else:
    tokens = dataset.map(lambda ex: vocab.encode_tf(ex["text"]))
  return (tokens.unbatch().batch(length, drop_remainder=True).enumerate()
          .map(lambda index, chunk: {"index": index, "chunk": chunk}))


def _lm_features(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset.map(lambda ex: {"targets": ex["chunk"]})


def _numpy_features(dataset: tf.data.Dataset, make: Callable[..., dict[str, np.ndarray]],
                    inputs: Sequence[str]) -> tf.data.Dataset:
  """Encoder-decoder features from NumPy ``make(*inputs)``; a ValueError drops the example."""
  names = sorted(_ENCODER_DECODER)

  def call(*values: np.ndarray) -> list[Any]:
    try:
      features = make(*values)
    except ValueError:
      return [np.zeros(0, _ENCODER_DECODER[n].as_numpy_dtype) for n in names] + [False]
    return [features[n] for n in names] + [True]

  def to_features(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    *values, valid = tf.numpy_function(call, [example[k] for k in inputs],
                                       [_ENCODER_DECODER[n] for n in names] + [tf.bool],
                                       stateful=False)
    features = {n: tf.ensure_shape(v, [None]) for n, v in zip(names, values)}
    features["valid"] = tf.ensure_shape(valid, [])
    return features

  return (dataset.map(to_features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .filter(lambda ex: ex["valid"])
          .map(lambda ex: {k: v for k, v in ex.items() if k != "valid"}))


def _ul2_features(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                  output_features: Mapping[str, seqio.Feature], task_name: str
                  ) -> tf.data.Dataset:
  """``denoisers.ul2_example`` of chunk ``i`` with ``np.random.default_rng((SEED, 0, i))``."""
  task = data.get_task(task_name)
  vocab = output_features["encoder_input_tokens"].vocabulary.vocabulary
  configs = _denoisers(task)

  def make(index: np.ndarray, chunk: np.ndarray) -> dict[str, np.ndarray]:
    return denoisers.ul2_example(chunk, np.random.default_rng((SEED, 0, int(index))), configs,
                                 vocab, sequence_length["inputs"], sequence_length["targets"])

  return _numpy_features(dataset, make, ["index", "chunk"])


def _pair_features(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                   output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Tokenised pairs as ``denoisers.encoder_decoder_features``; too-long pairs are dropped."""
  vocab = output_features["encoder_input_tokens"].vocabulary
  tokens = dataset.map(lambda ex: {k: vocab.encode_tf(ex[k]) for k in ("inputs", "targets")})
  return _numpy_features(
      tokens, lambda inputs, targets: denoisers.encoder_decoder_features(
          inputs, targets, sequence_length["inputs"], sequence_length["targets"]),
      ["inputs", "targets"])


def _output_features(task: data.Task) -> dict[str, seqio.Feature]:
  vocab = VocabularyAdapter(task.vocabulary)
  if task.preprocessor == "lm":
    return {"targets": seqio.Feature(vocab, add_eos=False)}
  features = {name: seqio.Feature(vocab, add_eos=False)
              for name in ("encoder_input_tokens", "decoder_input_tokens",
                           "decoder_target_tokens")}
  features["decoder_loss_weights"] = seqio.Feature(seqio.PassThroughVocabulary(1),
                                                   add_eos=False, dtype=tf.float32)
  return features


def register_task(task_name: str) -> seqio.Task:
  """Registers the ``glauber_jax.data`` task ``task_name`` with seqio under the same name (once)."""
  if task_name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(task_name)
  task = data.get_task(task_name)
  if task.preprocessor == "text_pair":
    preprocessors = [_pair_features]
  else:
    preprocessors = [functools.partial(_pack, task_name=task_name)]
    preprocessors.append(_lm_features if task.preprocessor == "lm"
                         else functools.partial(_ul2_features, task_name=task_name))
  return seqio.TaskRegistry.add(
      task_name,
      source=seqio.FunctionDataSource(functools.partial(_source, task_name),
                                      splits=list(task.splits)),
      preprocessors=preprocessors, output_features=_output_features(task))


def register_mixture(mixture_name: str) -> seqio.Mixture:
  """Registers a ``glauber_jax.data`` mixture (and its tasks) with seqio, same rates (once)."""
  if mixture_name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(mixture_name)
  mixture = data.get_mixture(mixture_name)
  for task_name, _ in mixture.tasks:
    register_task(task_name)
  return seqio.MixtureRegistry.add(mixture_name, list(mixture.tasks))


for _name in data.registered_task_names():
  register_task(_name)
for _name in data.registered_mixture_names():
  register_mixture(_name)
