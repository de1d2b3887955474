"""Evaluation metrics for generated text and puzzle answers (issue 5); NumPy only at import.

Definitions (``docs/evaluation.md`` has them with their sources):

- ``token_entropy``: the diversity check of Zheng et al. 2024 (arXiv:2409.02908, Sec. 4),
  also reported by SEDD and MDLM follow-ups: for each sample, the Shannon entropy (nats) of
  the unigram distribution of its own tokens, ``-sum_v (c_v / L) log(c_v / L)`` with ``c_v`` the
  count of token ``v`` among the sample's ``L`` tokens; averaged over samples. At most
  ``log L``; samplers that lower the temperature by accident (32-bit Gumbel noise) lower it.
  ``corpus_token_entropy`` pools the tokens of all samples first.
- ``distinct_n``: Li et al. 2016's distinct-n, corpus level: distinct n-grams over all n-grams,
  n-grams taken within samples.
- ``generative_perplexity``: a judge language model re-tokenises each sample with its own
  tokenizer and scores it as a whole; ``exp(total NLL / total judge tokens)`` over all samples,
  the convention of Table 1 and appendix C.2 of the hyperschedules paper (also MDLM's). A judge
  is anything with ``log_likelihoods`` (``Judge``): ``HuggingFaceJudge`` for a local Hugging Face
  causal LM (GPT-2 large, ...; torch and transformers imported on use), ``ModelJudge`` for one
  of our models through a plain scoring callable.
- ``mauve_score``: MAUVE (Pillutla et al. 2021) when the ``mauve-text`` package and a local
  feature model are present; otherwise None and a logged reason.
- ``puzzle_scores``: exact-solve and cell accuracy by the puzzles' rules (``tasks.puzzles``,
  passed in).
- ``perplexity_bound``: ``exp(-sum ELBO / sum tokens)`` from per-sequence ELBOs.

Chunking and BOS: a sample whose judge tokenisation is longer than the judge's context is split
into consecutive chunks, each scored on its own from a fresh start (the judge's BOS token for
Hugging Face models, the start id our causal LM shifts in for ``ModelJudge``), so every token of
the sample is scored exactly once and the first token of each chunk is conditioned on BOS
only. No EOS is appended: samples are fixed-length cuts, not finished documents.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import math
import os
from typing import Any, Callable, Hashable, Iterable, Mapping, Optional, Protocol, Sequence

import numpy as np

from glauber_jax import vocabularies

#: ``token_ids [B, L] -> log p(token_ids) [B]`` (nats), a fresh start before the first token.
ScoreFn = Callable[[np.ndarray], Any]


# ---- Diversity ---------------------------------------------------------------------------------


def _unigram_entropy(tokens: Iterable[Hashable]) -> float:
  """Shannon entropy (nats) of the empirical distribution of ``tokens``."""
  counts = np.fromiter(collections.Counter(tokens).values(), dtype=np.float64)
  if counts.size == 0:
    raise ValueError("entropy of an empty sample is undefined.")
  probs = counts / counts.sum()
  return float(-np.sum(probs * np.log(probs)))


def sample_token_entropies(token_ids_per_sample: Sequence[Sequence[Hashable]]) -> np.ndarray:
  """``[num_samples]``: each sample's unigram token entropy in nats (see the module doc)."""
  if not token_ids_per_sample:
    raise ValueError("need at least one sample.")
  return np.asarray([_unigram_entropy(sample) for sample in token_ids_per_sample])


def token_entropy(token_ids_per_sample: Sequence[Sequence[Hashable]]) -> float:
  """Mean over samples of the entropy (nats) of each sample's unigram token distribution.

  Zheng et al. 2024's definition (arXiv:2409.02908): a sample of ``L`` tokens has at most
  ``log L`` nats; OpenWebText samples of 1,024 GPT-2 tokens score about 5.6 to 5.7.
  """
  return float(np.mean(sample_token_entropies(token_ids_per_sample)))


def corpus_token_entropy(token_ids_per_sample: Sequence[Sequence[Hashable]]) -> float:
  """Entropy (nats) of the unigram distribution of all samples' tokens pooled together."""
  return _unigram_entropy(token for sample in token_ids_per_sample for token in sample)


def distinct_n(samples: Sequence[Sequence[Hashable]], n: int) -> float:
  """Distinct n-grams over all n-grams (Li et al. 2016), n-grams taken within each sample.

  ``samples`` are token sequences (ids, or words of split texts). Samples shorter than ``n``
  add no n-gram; raises ValueError when no sample has one.
  """
  if n < 1:
    raise ValueError(f"n must be positive, got {n}.")
  distinct: set[tuple[Hashable, ...]] = set()
  total = 0
  for sample in samples:
    sample = list(sample)
    grams = [tuple(sample[i:i + n]) for i in range(len(sample) - n + 1)]
    distinct.update(grams)
    total += len(grams)
  if total == 0:
    raise ValueError(f"no sample has {n} tokens: distinct-{n} is undefined.")
  return len(distinct) / total


# ---- Generative perplexity ---------------------------------------------------------------------


class Judge(Protocol):
  """A language model that scores texts with its own tokenizer."""

  name: str

  def log_likelihoods(self, texts: Sequence[str], batch_size: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(total_nats [N], num_tokens [N])``: each text's log-likelihood (nats, <= 0) under the
    judge, summed over its ``num_tokens`` judge tokens (chunked and started as in the module
    docstring)."""


def split_into_chunks(ids: Sequence[int], size: int) -> list[list[int]]:
  """Consecutive chunks of at most ``size`` ids covering ``ids`` (none for an empty list)."""
  if size < 1:
    raise ValueError(f"chunk size must be positive, got {size}.")
  return [list(ids[start:start + size]) for start in range(0, len(ids), size)]


def _chunk_texts(token_lists: Sequence[Sequence[int]], size: int
                 ) -> tuple[list[int], list[list[int]]]:
  """``(owner, chunks)``: every text's chunks, with the index of the text each comes from."""
  owners, chunks = [], []
  for index, ids in enumerate(token_lists):
    for chunk in split_into_chunks(ids, size):
      owners.append(index)
      chunks.append(chunk)
  return owners, chunks


def _totals(owners: Sequence[int], chunk_scores: Sequence[float],
            token_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  totals = np.zeros(len(token_lists), np.float64)
  np.add.at(totals, np.asarray(owners, np.int64), np.asarray(chunk_scores, np.float64))
  return totals, np.asarray([len(ids) for ids in token_lists], np.int64)


class ModelJudge:
  """A judge built on one of our models through a plain scoring callable.

  ``score_fn(token_ids [B, L]) -> [B]`` must return ``log p(token_ids)`` in nats with a fresh
  start before the first token, for any ``L <= max_length`` (``baselines.CausalLMModel``:
  ``lambda ids: model.score_batch(params, {"targets": ids})``, which shifts in its start id).
  Texts are re-tokenised with ``vocabulary.encode`` (no EOS), chunked to ``max_length`` and
  batched by chunk length, so no padding ever reaches ``score_fn``; short batches are filled
  up to ``batch_size`` rows (repeats, discarded) so each length compiles once.
  """

  def __init__(self, score_fn: ScoreFn, vocabulary: vocabularies.Vocabulary, max_length: int,
               name: str = "model") -> None:
    if max_length < 1:
      raise ValueError(f"max_length must be positive, got {max_length}.")
    self.score_fn = score_fn
    self.vocabulary = vocabulary
    self.max_length = max_length
    self.name = name

  def log_likelihoods(self, texts: Sequence[str], batch_size: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    token_lists = [self.vocabulary.encode(text).tolist() for text in texts]
    owners, chunks = _chunk_texts(token_lists, self.max_length)
    by_length: dict[int, list[int]] = collections.defaultdict(list)
    for index, chunk in enumerate(chunks):
      by_length[len(chunk)].append(index)
    scores = np.zeros(len(chunks), np.float64)
    for indices in by_length.values():
      for start in range(0, len(indices), batch_size):
        rows = indices[start:start + batch_size]
        filled = rows + [rows[0]] * (batch_size - len(rows))
        batch = np.asarray([chunks[i] for i in filled], np.int32)
        scores[rows] = np.asarray(self.score_fn(batch), np.float64)[:len(rows)]
    return _totals(owners, scores, token_lists)


def _require_torch_transformers(what: str) -> tuple[Any, Any]:
  """``(torch, transformers)``, or ImportError saying how to install them."""
  missing = [name for name in ("torch", "transformers")
             if importlib.util.find_spec(name) is None]
  if missing:
    raise ImportError(f"{what} needs {' and '.join(missing)} (not installed): pip install "
                      "torch transformers (the CPU build is enough), or use a judge of ours "
                      "(--judge_gin).")
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  return torch, transformers


def _context_of(config: Any) -> Optional[int]:
  """A Hugging Face model config's context length, if it names one."""
  return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def _check_model_dir(model_dir: str, what: str) -> None:
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"{what}: {model_dir!r} is not a directory. Give a local Hugging "
                            "Face model directory (config.json, weights, tokenizer files), "
                            "e.g. one saved with save_pretrained; nothing is downloaded.")


class HuggingFaceJudge:
  """A local Hugging Face causal LM as the judge (GPT-2 large for the paper's Table 1).

  Each text is tokenised with the model's tokenizer (no special tokens), split into chunks of
  ``context - 1`` tokens, and each chunk is scored after the tokenizer's BOS token (its EOS when
  it has no BOS, as GPT-2's ``<|endoftext|>`` is both), so every text token is scored once.

  Args:
    model_dir: a local directory readable by ``AutoModelForCausalLM`` and ``AutoTokenizer``.
    device: torch device for the model.
    context: the judge's context in tokens, BOS included (default: the model config's
      ``n_positions`` or ``max_position_embeddings``).
  """

  def __init__(self, model_dir: str, device: str = "cpu", context: Optional[int] = None) -> None:
    torch, transformers = _require_torch_transformers("HuggingFaceJudge")
    _check_model_dir(model_dir, "HuggingFaceJudge")
    self._torch = torch
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    self.model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True).to(device).eval()
    self.device = device
    self.context = context or _context_of(self.model.config)
    if not self.context or self.context < 2:
      raise ValueError(f"{model_dir}: cannot tell the judge's context; pass context=.")
    start = self.tokenizer.bos_token_id
    self.bos_id = start if start is not None else self.tokenizer.eos_token_id
    if self.bos_id is None:
      raise ValueError(f"{model_dir}: the tokenizer has neither a BOS nor an EOS token to start "
                       "each chunk with.")
    self.name = os.path.basename(os.path.normpath(model_dir))

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """The judge's ids of each text, without special tokens."""
    return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False,
                                                verbose=False)["input_ids"]]

  def log_likelihoods(self, texts: Sequence[str], batch_size: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    torch = self._torch
    token_lists = self.tokenize(texts)
    owners, chunks = _chunk_texts(token_lists, self.context - 1)
    order = sorted(range(len(chunks)), key=lambda i: len(chunks[i]))  # Little padding.
    scores = np.zeros(len(chunks), np.float64)
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      width = 1 + max(len(chunks[i]) for i in rows)
      ids = torch.full((len(rows), width), self.bos_id, dtype=torch.long)
      mask = torch.zeros((len(rows), width), dtype=torch.long)
      for row, index in enumerate(rows):
        ids[row, 1:1 + len(chunks[index])] = torch.tensor(chunks[index])
        mask[row, :1 + len(chunks[index])] = 1
      ids, mask = ids.to(self.device), mask.to(self.device)
      with torch.no_grad():
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
      token_log_probs = torch.gather(torch.log_softmax(logits, dim=-1), -1,
                                     ids[:, 1:, None])[..., 0]
      sums = (token_log_probs * mask[:, 1:]).sum(dim=-1).double().cpu().numpy()
      scores[rows] = sums
    return _totals(owners, scores, token_lists)


def generative_perplexity(texts: Sequence[str], judge: Judge, batch_size: int = 8
                          ) -> dict[str, Any]:
  """The judge's perplexity of ``texts``, ``exp(total NLL / total judge tokens)``.

  Returns ``gen_ppl``, ``nats_per_token``, ``num_texts``, ``num_tokens`` (judge tokens) and
  ``judge`` (its name). Empty texts count toward ``num_texts`` and add no token.
  """
  if not texts:
    raise ValueError("generative perplexity of no text is undefined.")
  total_nats, num_tokens = judge.log_likelihoods(texts, batch_size)
  tokens = int(np.sum(num_tokens))
  if tokens == 0:
    raise ValueError("the judge's tokenizer found no token in any text.")
  nats_per_token = -float(np.sum(total_nats)) / tokens
  return {"gen_ppl": math.exp(nats_per_token), "nats_per_token": nats_per_token,
          "num_texts": len(texts), "num_tokens": tokens, "judge": judge.name}


# ---- MAUVE -------------------------------------------------------------------------------------


def mauve_unavailable_reason(feature_model_dir: Optional[str]) -> Optional[str]:
  """Why ``mauve_score`` cannot run here (None when it can)."""
  needed = {"mauve": "mauve-text", "torch": "torch", "transformers": "transformers"}
  missing = [package for module, package in needed.items()
             if importlib.util.find_spec(module) is None]
  if missing:
    return (f"MAUVE skipped: pip install {' '.join(missing)} (mauve-text also brings faiss-cpu "
            "and scikit-learn).")
  if not feature_model_dir or not os.path.isdir(feature_model_dir):
    return (f"MAUVE skipped: no local feature model directory (got {feature_model_dir!r}); "
            "give a Hugging Face GPT-2 large directory, MAUVE's default featuriser.")
  return None


def featurize(texts: Sequence[str], feature_model_dir: str, max_text_length: int = 1024,
              device: str = "cpu") -> np.ndarray:
  """MAUVE's features ``[N, d]``: the last layer's hidden state at each text's last token
  (texts truncated to ``max_text_length`` of the model's tokens, or its context if shorter),
  as MAUVE computes them."""
  torch, transformers = _require_torch_transformers("MAUVE featurisation")
  _check_model_dir(feature_model_dir, "MAUVE featurisation")
  tokenizer = transformers.AutoTokenizer.from_pretrained(feature_model_dir,
                                                         local_files_only=True)
  model = transformers.AutoModel.from_pretrained(feature_model_dir,
                                                 local_files_only=True).to(device).eval()
  max_text_length = min(max_text_length, _context_of(model.config) or max_text_length)
  features = []
  for text in texts:
    ids = tokenizer(text, add_special_tokens=False, truncation=True,
                    max_length=max_text_length, return_tensors="pt")["input_ids"].to(device)
    if ids.shape[1] == 0:
      raise ValueError("MAUVE cannot featurise an empty text.")
    with torch.no_grad():
      hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    features.append(hidden[0, -1].float().cpu().numpy())
  return np.stack(features)


def mauve_score(sample_texts: Sequence[str], reference_texts: Sequence[str],
                feature_model_dir: Optional[str], *,
                reference_features: Optional[np.ndarray] = None, max_text_length: int = 1024,
                device: str = "cpu", seed: int = 25, **mauve_kwargs: Any) -> Optional[float]:
  """MAUVE between model samples and human references, or None (reason logged) when the
  ``mauve-text`` package or ``feature_model_dir`` is missing (``mauve_unavailable_reason``).

  Features come from ``featurize``; ``reference_features`` (``featurize(reference_texts,
  ...)``) saves recomputing them for several sample sets. ``mauve_kwargs`` go to
  ``mauve.compute_mauve`` (e.g. ``num_buckets``, ``mauve_scaling_factor``; its defaults
  otherwise).
  """
  reason = mauve_unavailable_reason(feature_model_dir)
  if reason is not None:
    logging.warning(reason)
    return None
  import mauve  # pylint: disable=import-outside-toplevel

  if reference_features is None:
    reference_features = featurize(reference_texts, feature_model_dir, max_text_length, device)
  result = mauve.compute_mauve(
      p_features=reference_features,
      q_features=featurize(sample_texts, feature_model_dir, max_text_length, device),
      seed=seed, **mauve_kwargs)
  return float(result.mauve)


# ---- Puzzles and likelihood bounds -------------------------------------------------------------


class PuzzleRules(Protocol):
  """How answers to puzzles are checked: the module ``tasks.puzzles`` is one, passed in by the
  caller, as the library does not import the task registrations.

  ``evaluate(examples, predictions)`` gives the mean ``exact_solve`` and ``cell_accuracy`` over
  paired examples and predictions.
  """

  def evaluate(self, examples: Sequence[Any], predictions: Sequence[str]
               ) -> Mapping[str, float]: ...


def puzzle_scores(examples: Sequence[Any], predictions: Sequence[str], rules: PuzzleRules
                  ) -> dict[str, float]:
  """``exact_solve`` and ``cell_accuracy`` means (``rules.evaluate``) and the count.

  ``examples`` are puzzles of ``rules`` (``tasks.puzzles.PuzzleExample`` for ``tasks.puzzles``);
  ``predictions`` the decoded model answers, one per example.
  """
  return {**rules.evaluate(examples, predictions), "num_examples": len(examples)}


def perplexity_bound(elbo_nats_per_sequence: Sequence[float] | np.ndarray,
                     num_tokens: int | Sequence[int] | np.ndarray) -> dict[str, Any]:
  """Aggregates per-sequence ELBOs (nats, lower bounds on ``log p``) into a perplexity bound.

  ``num_tokens``: tokens per sequence, one number or one per sequence. Returns the fields of
  ``infer --mode=bound``'s record: ``sequences``, ``elbo_nats_per_sequence`` (mean),
  ``nats_per_token = -sum ELBO / sum tokens`` and ``perplexity_upper_bound = exp(that)``.
  """
  elbo = np.asarray(elbo_nats_per_sequence, np.float64).reshape(-1)
  if elbo.size == 0:
    raise ValueError("need at least one sequence.")
  tokens = np.broadcast_to(np.asarray(num_tokens, np.float64), elbo.shape)
  if np.any(tokens <= 0):
    raise ValueError("every sequence needs a positive token count.")
  nats_per_token = -float(np.sum(elbo)) / float(np.sum(tokens))
  return {"sequences": int(elbo.size), "elbo_nats_per_sequence": float(np.mean(elbo)),
          "nats_per_token": nats_per_token, "perplexity_upper_bound": math.exp(nats_per_token)}
