"""The exact judge of the synthetic languages (``glauber_jax.synthetic``).

``exact_judge_row`` scores model samples (token ids of a vocabulary whose letters are
``synthetic.ALPHABET[:V]``, e.g. ``vocabularies.LetterVocabulary``) against the true language:
exact NLL of the samples against the NLL of data, token entropy against data's, and for
enumerable languages the total variation (and KL) to the exact distribution with their
sampling-noise floors. NumPy only. ``docs/evaluation.md`` ("Exact judge") describes the columns.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from glauber_jax import metrics, synthetic, vocabularies


class SyntheticRegistry(Protocol):
  """The synthetic tasks' functions of ``tasks.registry`` (the module itself satisfies it), each
  under the current gin configuration. Command lines pass it in: the library never imports
  ``tasks``."""

  def synthetic_config(self, kind: str) -> synthetic.SyntheticConfig:
    """The configuration of the synthetic language ``kind`` (``hmm`` or ``enum``)."""

  def synthetic_language(self, kind: str) -> synthetic.HiddenMarkovLanguage:
    """The language of the synthetic tasks of ``kind``."""

  def synthetic_vocabulary(self, kind: str) -> vocabularies.LetterVocabulary:
    """The vocabulary of the synthetic tasks of ``kind``: one id per letter."""


def letters_of_tokens(token_ids: Sequence[Sequence[int]], vocabulary: vocabularies.Vocabulary,
                      num_letters: int) -> list[Optional[np.ndarray]]:
  """Each sample's letters (``int32 [L]``), or None when it holds a token that is not one of
  the ``num_letters`` letters (EOS, pad, a sentinel, ...). Letter ``a`` is the token
  ``vocabulary.encode(synthetic.ALPHABET[a])``, which must be a single id."""
  table = np.full(vocabulary.vocab_size, -1, np.int64)
  for letter, character in enumerate(synthetic.alphabet(num_letters)):
    ids = vocabulary.encode(character)
    if len(ids) != 1 or ids[0] in (vocabularies.PAD_ID, vocabularies.EOS_ID,
                                   vocabularies.UNK_ID):
      raise ValueError(f"{vocabulary!r} does not encode the letter {character!r} as one token.")
    table[int(ids[0])] = letter
  out: list[Optional[np.ndarray]] = []
  for sample in token_ids:
    ids = np.asarray(sample, np.int64)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= vocabulary.vocab_size:
      out.append(None)
      continue
    letters = table[ids]
    out.append(letters.astype(np.int32) if np.all(letters >= 0) else None)
  return out


def exact_judge_row(token_ids: Sequence[Sequence[int]],
                    language: synthetic.HiddenMarkovLanguage,
                    vocabulary: vocabularies.Vocabulary, enumerable: bool, *,
                    num_data_samples: int = 10_000, noise_repeats: int = 20, seed: int = 0
                    ) -> dict[str, Any]:
  """Scores samples (token ids, all of one length ``L``) against the true language.

  Returns (JSON-ready):

  - ``invalid_fraction``: samples holding a token that is not a letter (EOS, pad, specials);
    they are left out of ``true_nll`` and ``kl`` (``num_valid`` samples remain) and count as
    an outcome the truth never produces in ``tv``.
  - ``true_nll``, ``true_nll_se``: mean exact ``-log p(x) / L`` of the valid samples and its
    standard error (None without a valid sample).
  - ``data_nll``, ``data_nll_se``: the same for ``num_data_samples`` sequences of the
    language (``nll_per_token``); a perfect sampler matches it within the standard errors.
  - ``entropy``: ``metrics.token_entropy`` of the samples' token ids; ``data_entropy`` (and
    ``data_entropy_se``): the same on as many data sequences as there are samples.
  - with ``enumerable``: ``tv`` = ``0.5 * sum_x |q(x) - p(x)|`` between the samples' empirical
    law ``q`` (invalid samples one extra outcome) and the exact ``p``; ``tv_noise`` (and
    ``tv_noise_sd``): the mean TV of ``noise_repeats`` samples of the same size drawn from
    ``p`` itself, the floor a perfect sampler reaches; ``kl`` = ``KL(q_valid || p)`` over the
    valid samples (finite since every sequence has ``p > 0``) and its floor ``kl_noise``;
    ``data_nll_exact``: ``H(p) / L`` from the enumeration. ``KL(p || q)`` is not reported: it
    is infinite as soon as one sequence is missing from the samples.

  Data draws use ``np.random.default_rng((seed, k))`` for a few fixed ``k``.
  """
  if not token_ids:
    raise ValueError("the exact judge needs at least one sample.")
  lengths = {len(sample) for sample in token_ids}
  if len(lengths) != 1:
    raise ValueError(f"the exact judge needs samples of one length; got lengths "
                     f"{sorted(lengths)}.")
  length = lengths.pop()
  if length < 1:
    raise ValueError("the samples are empty.")
  num_samples = len(token_ids)
  letters = letters_of_tokens(token_ids, vocabulary, language.num_letters)
  valid = np.stack([x for x in letters if x is not None]) if any(
      x is not None for x in letters) else np.zeros((0, length), np.int32)
  row: dict[str, Any] = {"sequence_length": length, "num_valid": int(len(valid)),
                         "invalid_fraction": 1.0 - len(valid) / num_samples}
  row["true_nll"] = row["true_nll_se"] = None
  if len(valid):
    nll = -language.log_prob(valid) / length
    row["true_nll"] = float(nll.mean())
    row["true_nll_se"] = float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else None
  row["data_nll"], row["data_nll_se"] = language.nll_per_token(length, num_data_samples,
                                                               seed=(seed, 1))
  row["entropy"] = metrics.token_entropy([list(sample) for sample in token_ids])
  data_letters = language.sample(np.random.default_rng((seed, 2)), num_samples, length)
  data_ids = [vocabulary.encode(text).tolist() for text in synthetic.to_text(data_letters)]
  data_entropies = metrics.sample_token_entropies(data_ids)
  row["data_entropy"] = float(data_entropies.mean())
  row["data_entropy_se"] = (float(data_entropies.std(ddof=1) / math.sqrt(num_samples))
                            if num_samples > 1 else None)
  if enumerable:
    row.update(_distribution_distances(valid, num_samples, language, length, noise_repeats,
                                       seed))
  return row


def paired_nll_change(after: Sequence[Sequence[int]], before: Sequence[Sequence[int]],
                      language: synthetic.HiddenMarkovLanguage,
                      vocabulary: vocabularies.Vocabulary) -> dict[str, Any]:
  """What a sampler's rounds did to its drafts, sample by sample: the mean of ``-log p(after_i)
  / L + log p(before_i) / L`` over the pairs in which both are valid (``rounds_effect``,
  negative when the rounds moved the samples closer to the data) and its paired standard error
  (``rounds_effect_se``; the drafts' own spread cancels, so it is far smaller than the two
  means' errors), with ``rounds_effect_pairs``, the number of pairs."""
  if len(after) != len(before):
    raise ValueError(f"{len(after)} samples against {len(before)} drafts.")
  pairs = [(a, b) for a, b in zip(letters_of_tokens(after, vocabulary, language.num_letters),
                                  letters_of_tokens(before, vocabulary, language.num_letters))
           if a is not None and b is not None]
  if not pairs:
    return {"rounds_effect": None, "rounds_effect_se": None, "rounds_effect_pairs": 0}
  final, draft = (np.stack(side) for side in zip(*pairs))
  change = (language.log_prob(draft) - language.log_prob(final)) / final.shape[1]
  return {"rounds_effect": float(change.mean()),
          "rounds_effect_se": (float(change.std(ddof=1) / math.sqrt(len(change)))
                               if len(change) > 1 else None),
          "rounds_effect_pairs": len(change)}


def _kl_to(counts: np.ndarray, log_p: np.ndarray) -> Optional[float]:
  """``KL(counts / sum || p)`` in nats, over the outcomes with a count."""
  total = counts.sum()
  if total == 0:
    return None
  seen = counts > 0
  q = counts[seen] / total
  return float(np.sum(q * (np.log(q) - log_p[seen])))


def _distribution_distances(valid: np.ndarray, num_samples: int,
                            language: synthetic.HiddenMarkovLanguage, length: int, repeats: int,
                            seed: int) -> dict[str, Any]:
  """TV and KL of the samples' empirical law to the enumerated truth, with noise floors."""
  log_p = language.enumerate_log_probs(length)
  p = np.exp(log_p)
  counts = np.bincount(synthetic.sequence_index(valid, language.num_letters), minlength=p.size)
  invalid = num_samples - len(valid)
  tv = 0.5 * (np.abs(counts / num_samples - p).sum() + invalid / num_samples)
  rng = np.random.default_rng((seed, 3))
  noise_tv, noise_kl = [], []
  for _ in range(max(1, repeats)):
    draws = rng.multinomial(num_samples, p / p.sum())
    noise_tv.append(0.5 * np.abs(draws / num_samples - p).sum())
    noise_kl.append(_kl_to(draws, log_p))
  entropy = float(-np.sum(p * log_p))
  return {"tv": float(tv), "tv_noise": float(np.mean(noise_tv)),
          "tv_noise_sd": float(np.std(noise_tv, ddof=1)) if len(noise_tv) > 1 else None,
          "kl": _kl_to(counts, log_p), "kl_noise": float(np.mean(noise_kl)),
          "data_nll_exact": entropy / length, "num_sequences": int(p.size)}
