"""Zero-shot scores of any model family through ``models.BaseModel``'s likelihood interface.

Perplexity (Table 2): the detokenised documents of a set are tokenised with the model's
vocabulary, each followed by EOS, concatenated and cut into non-overlapping windows of the
model's ``L`` tokens (stride ``L``, no overlapping context; the remainder after the last whole
window is dropped and counted), as the training data is chunked. Every model scores every
token of every window, so with one vocabulary every model has the same denominator. The causal
LM's number is exact (``likelihood_bound`` is its log-likelihood); a diffusion model's is its
bound (MDLM: the ELBO, Glauber: the bound of ``shared/design/glauber.md``) averaged over ``K``
forward paths per window, so its perplexity is an upper bound (``<=``), with the Monte-Carlo
standard error of that average.

Multiple choice (lm-evaluation-harness's conventions): each choice is scored by the
log-likelihood of its continuation given its context, ``conditional_likelihood_bound`` with
the continuation's positions free and the rest frozen: exact for the causal LM, for MDLM and
Glauber the conditional bound with the prompt frozen (the conditional their samplers draw
from), averaged over ``K`` paths. A row is ``context, continuation, EOS`` padded to ``L`` (the
context cut from the left when too long); the diffusion models see the frozen EOS and padding
after the continuation. ``acc`` takes the highest log-likelihood, ``acc_norm`` the highest per
byte of continuation; standard errors are the sample standard error of the per-example 0/1.

LAMBADA accuracy: the last word is right when the model's own sampler at temperature 0
(greedy; for Glauber the CAUSAL-GEN draft and the infill rounds, for MDLM the ancestral
steps), continuing the frozen context, writes exactly the word's tokens (lm-evaluation-harness's
``is_greedy`` for the causal LM).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Mapping, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import models, vocabularies
from glauber_jax.zero_shot import readers

Array = jax.Array


@gin.configurable
def evaluated_model(model: models.BaseModel = gin.REQUIRED) -> models.BaseModel:
  """The model to evaluate: ``%MODEL`` of its gin file (the command line binds it)."""
  return model


@dataclasses.dataclass
class Scorer:
  """A loaded model to score with.

  Attributes:
    name: the row's label (the checkpoint's directory name).
    model: the configured model (``%MODEL`` of its gin file).
    params: its parameters.
    inference_state: the checkpoint's ``model.inference_state_names`` entries.
  """

  name: str
  model: models.BaseModel
  params: Any
  inference_state: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def exact(self) -> bool:
    """Whether the likelihoods are exact (a causal LM) rather than diffusion bounds."""
    return not isinstance(self.model, models.DiffusionModel)

  @property
  def seq_len(self) -> int:
    return self.model.seq_len

  @property
  def vocabulary(self) -> vocabularies.Vocabulary:
    return self.model.vocabulary

  def paths(self, num_paths: int) -> int:
    """Draws per sequence: 1 for an exact model, ``num_paths`` for a bound."""
    return 1 if self.exact else num_paths


def standard_error(values: Sequence[float]) -> Optional[float]:
  """Sample standard error of the mean (``ddof = 1``), as lm-evaluation-harness reports it."""
  values = np.asarray(values, np.float64)
  if values.size < 2:
    return None
  return float(np.std(values, ddof=1) / math.sqrt(values.size))


def _padded_batches(rows: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
  """``(count, batch)``: ``rows`` in batches of exactly ``batch_size`` (the last filled with
  copies of its first row), so one program is compiled per shape."""
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    filler = np.repeat(chunk[:1], batch_size - len(chunk), axis=0)
    yield len(chunk), np.concatenate([chunk, filler])


def _draw_key(seed: int, batch_index: int, path: int, num_paths: int) -> Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), batch_index * num_paths + path)


# ---- Perplexity ---------------------------------------------------------------------------


def token_windows(documents: Sequence[str], vocabulary: vocabularies.Vocabulary,
                  seq_len: int) -> tuple[np.ndarray, int]:
  """``(windows [N, L] int32, dropped)``: the documents' tokens, each followed by EOS,
  concatenated and cut into ``L``-token windows; ``dropped`` tokens after the last whole
  window are left out."""
  stream = np.concatenate([np.append(vocabulary.encode(text), vocabulary.eos_id)
                           for text in documents]).astype(np.int32)
  count = len(stream) // seq_len
  return stream[:count * seq_len].reshape(count, seq_len), len(stream) - count * seq_len


def window_log_likelihoods(scorer: Scorer, windows: np.ndarray, num_paths: int,
                           batch_size: int, seed: int) -> np.ndarray:
  """``log p`` (exact) or its one-path bound of every window, ``[N, K]`` float64 nats."""
  paths = scorer.paths(num_paths)
  scores = []
  for batch_index, (count, batch) in enumerate(_padded_batches(windows, batch_size)):
    tokens = jnp.asarray(batch)
    draws = [np.asarray(scorer.model.likelihood_bound(
        scorer.params, tokens, _draw_key(seed, batch_index, path, paths),
        scorer.inference_state), np.float64)[:count] for path in range(paths)]
    scores.append(np.stack(draws, axis=1))
  return np.concatenate(scores)


def perplexity_summary(log_likelihoods: np.ndarray, seq_len: int, exact: bool
                       ) -> dict[str, Any]:
  """Nats per token and perplexity from per-window draws ``[N, K]`` of ``log p`` (or of its
  bound), with the Monte-Carlo standard error of the average over the ``K`` paths (None for
  an exact model or ``K = 1``; the perplexity's by the delta method)."""
  windows, paths = log_likelihoods.shape
  tokens = windows * seq_len
  nats = -float(np.sum(np.mean(log_likelihoods, axis=1))) / tokens
  nats_se = None
  if not exact and paths > 1:
    variance = np.sum(np.var(log_likelihoods, axis=1, ddof=1) / paths)
    nats_se = float(math.sqrt(variance)) / tokens
  perplexity = math.exp(nats)
  return {
      "tokens": tokens, "windows": windows, "paths_per_window": paths,
      "bound": not exact, "relation": "=" if exact else "<=",
      "nats_per_token": nats, "nats_per_token_se": nats_se,
      "perplexity": perplexity,
      "perplexity_se": None if nats_se is None else perplexity * nats_se,
  }


def perplexity(scorer: Scorer, documents: Sequence[str], *, num_paths: int, batch_size: int,
               seed: int, max_windows: Optional[int] = None) -> dict[str, Any]:
  """The zero-shot perplexity row of ``documents`` (``token_windows``; the first
  ``max_windows`` windows when given) with its policy stated."""
  windows, dropped = token_windows(documents, scorer.vocabulary, scorer.seq_len)
  if max_windows is not None:
    dropped += int(windows[max_windows:].size)
    windows = windows[:max_windows]
  if not len(windows):
    raise ValueError(f"the documents hold {dropped} tokens, fewer than one window of "
                     f"L = {scorer.seq_len}.")
  row = perplexity_summary(
      window_log_likelihoods(scorer, windows, num_paths, batch_size, seed), scorer.seq_len,
      scorer.exact)
  row["policy"] = (f"documents + EOS concatenated, non-overlapping windows of L = "
                   f"{scorer.seq_len} (stride {scorer.seq_len}); {dropped} tokens after the "
                   "last scored window dropped")
  row["dropped_tokens"] = dropped
  return row


# ---- Conditional scores: multiple choice ---------------------------------------------------


def conditional_row(context: Sequence[int], continuation: Sequence[int], seq_len: int,
                    eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """``(tokens [L], free [L])``: ``context, continuation, EOS``, padded with PAD to ``L``; the
  context loses its first tokens (and the EOS its place) when the row is too long, and a
  continuation of ``L`` tokens or more keeps its first ``L - 1``. ``free`` marks the
  continuation."""
  continuation = list(continuation)[:seq_len - 1]
  room = seq_len - len(continuation)
  context = list(context)[-room:] if room else []
  tail = [eos_id] if len(context) + len(continuation) < seq_len else []
  ids = context + continuation + tail
  tokens = np.full((seq_len,), vocabularies.PAD_ID, np.int32)
  tokens[:len(ids)] = ids
  free = np.zeros((seq_len,), bool)
  free[len(context):len(context) + len(continuation)] = True
  return tokens, free


def conditional_log_likelihoods(scorer: Scorer, pairs: Sequence[tuple[str, str]], *,
                                num_paths: int, batch_size: int, seed: int) -> np.ndarray:
  """``log p(continuation | context)`` (exact, or its bound averaged over ``K`` paths) of each
  ``(context, continuation)`` text pair, ``[P]`` float64 nats."""
  vocab = scorer.vocabulary
  rows = [conditional_row(vocab.encode(context), vocab.encode(continuation), scorer.seq_len,
                          vocab.eos_id) for context, continuation in pairs]
  tokens = np.stack([row[0] for row in rows])
  free = np.stack([row[1] for row in rows])
  paths = scorer.paths(num_paths)
  scores = []
  for batch_index, ((count, token_batch), (_, free_batch)) in enumerate(
      zip(_padded_batches(tokens, batch_size), _padded_batches(free, batch_size))):
    draws = [np.asarray(scorer.model.conditional_likelihood_bound(
        scorer.params, jnp.asarray(token_batch), jnp.asarray(free_batch),
        _draw_key(seed, batch_index, path, paths), scorer.inference_state),
                        np.float64)[:count] for path in range(paths)]
    scores.append(np.mean(draws, axis=0))
  return np.concatenate(scores)


def choice_accuracy(log_likelihoods: Sequence[np.ndarray],
                    examples: Sequence[readers.ChoiceExample]) -> dict[str, Any]:
  """``acc`` (highest log-likelihood) and ``acc_norm`` (highest per byte of continuation,
  lm-evaluation-harness's length normalisation) with standard errors; ``acc_norm`` is None
  when every choice of every example has the same continuation (Winogrande)."""
  correct, correct_norm = [], []
  for scores, example in zip(log_likelihoods, examples):
    lengths = np.asarray([len(text.encode("utf-8")) for text in example.continuations])
    correct.append(float(np.argmax(scores) == example.label))
    correct_norm.append(float(np.argmax(scores / np.maximum(lengths, 1)) == example.label))
  normalised = any(len(set(example.continuations)) > 1 for example in examples)
  return {
      "examples": len(examples),
      "acc": float(np.mean(correct)), "acc_se": standard_error(correct),
      "acc_norm": float(np.mean(correct_norm)) if normalised else None,
      "acc_norm_se": standard_error(correct_norm) if normalised else None,
  }


def multiple_choice(scorer: Scorer, examples: Sequence[readers.ChoiceExample], *,
                    num_paths: int, batch_size: int, seed: int) -> dict[str, Any]:
  """The multiple-choice row: accuracies and how the choices were scored."""
  pairs = [pair for example in examples
           for pair in zip(example.contexts, example.continuations)]
  flat = conditional_log_likelihoods(scorer, pairs, num_paths=num_paths,
                                     batch_size=batch_size, seed=seed)
  splits = np.cumsum([len(example.contexts) for example in examples])[:-1]
  row = choice_accuracy(np.split(flat, splits), examples)
  row.update(bound=not scorer.exact, paths_per_choice=scorer.paths(num_paths),
             method=("exact log p(continuation | context)" if scorer.exact else
                     "conditional bound, context frozen, averaged over the paths"))
  return row


# ---- LAMBADA last-word accuracy --------------------------------------------------------------


def lambada_accuracy(scorer: Scorer, examples: Sequence[readers.LambadaExample], *,
                     batch_size: int, seed: int) -> dict[str, Any]:
  """Share of passages whose last word the model's greedy sampler writes after the context
  (rows of one context length share a batch; the context keeps its last tokens when the
  passage is longer than ``L``)."""
  vocab, seq_len = scorer.vocabulary, scorer.seq_len
  options = {"temperature": 0.0}
  if "infill_temperature" in {field.name for field in
                              dataclasses.fields(scorer.model.sampler_options_type)}:
    options["infill_temperature"] = 0.0
  sampler_options = scorer.model.sampler_options(options)
  by_length: dict[int, list[tuple[int, list[int], list[int]]]] = {}
  for index, example in enumerate(examples):
    target = [int(i) for i in vocab.encode(example.target)][:seq_len - 1]
    context = [int(i) for i in vocab.encode(example.context)][-(seq_len - len(target)):]
    by_length.setdefault(len(context), []).append((index, context, target))
  correct = np.zeros(len(examples))
  for batch_index, (length, group) in enumerate(sorted(by_length.items())):
    prefixes = np.asarray([context for _, context, _ in group], np.int32)
    for start in range(0, len(group), batch_size):
      prefix = prefixes[start:start + batch_size]
      samples = scorer.model.sample_with(
          scorer.params, jax.random.fold_in(jax.random.PRNGKey(seed), batch_index * 10_000 +
                                            start), len(prefix), jnp.asarray(prefix),
          sampler_options, scorer.inference_state)
      final = np.asarray(samples.final)
      for row, (index, _, target) in enumerate(group[start:start + batch_size]):
        correct[index] = float(final[row, length:length + len(target)].tolist() == target)
  return {"examples": len(examples), "acc": float(np.mean(correct)),
          "acc_se": standard_error(correct),
          "acc_method": "greedy (temperature 0) sample of the model's own sampler after the "
                        "frozen context writes the last word's tokens exactly"}
