"""The synthetic languages: every exact quantity against brute-force enumeration, the sampler
against the exact law, the tasks' batches (no EOS) and the eval's exact judge."""

from __future__ import annotations

import itertools
import json
import pathlib
from typing import Any, Iterator

import gin
import numpy as np
import pytest
from scipy import stats

from glauber_jax import data, eval as eval_cli, metrics, synthetic, synthetic_judge, vocabularies
from glauber_jax.data import cache as data_cache
from glauber_jax.synthetic import HiddenMarkovLanguage
import tasks  # noqa: F401  Registers the synthetic tasks.
from tasks import registry

# Tiny languages for brute force: an HMM with more states than letters, one with fewer, and a
# visible chain. Concentrations near 1 keep every probability well away from 0.
HMM_3_2 = HiddenMarkovLanguage.random(3, 2, seed=1, transition_concentration=0.8,
                                      emission_concentration=0.8)
HMM_2_3 = HiddenMarkovLanguage.random(2, 3, seed=2, transition_concentration=0.8,
                                      emission_concentration=0.8)
CHAIN_3 = HiddenMarkovLanguage.markov_chain(3, seed=3, concentration=0.8)
TINY = {"hmm_3_2": HMM_3_2, "hmm_2_3": HMM_2_3, "chain_3": CHAIN_3}


@pytest.fixture(autouse=True)
def fresh_gin() -> Iterator[None]:
  gin.clear_config()
  yield
  gin.clear_config()


def brute_force_log_probs(language: HiddenMarkovLanguage, length: int) -> np.ndarray:
  """``log p`` of every sequence (lexicographic order) as the sum over all ``H ** L`` hidden
  paths of ``initial[z_0] E[z_0, x_0] prod_t T[z_{t-1}, z_t] E[z_t, x_t]``, written out with
  no recursion."""
  letters = list(itertools.product(range(language.num_letters), repeat=length))
  totals = np.zeros(len(letters))
  for path in itertools.product(range(language.num_states), repeat=length):
    path_prob = language.initial[path[0]] * np.prod(
        [language.transition[a, b] for a, b in zip(path, path[1:])])
    for index, x in enumerate(letters):
      totals[index] += path_prob * np.prod([language.emission[z, a] for z, a in zip(path, x)])
  return np.log(totals)


def all_sequences(num_letters: int, length: int) -> np.ndarray:
  return np.asarray(list(itertools.product(range(num_letters), repeat=length)), np.int32)


def enumerated_conditionals(language: HiddenMarkovLanguage, length: int) -> np.ndarray:
  """``[V ** L, L, V]``: ``p(x_k = a | x_{-k})`` of every sequence from the enumerated joint."""
  joint = np.exp(brute_force_log_probs(language, length)).reshape((language.num_letters,)
                                                                  * length)
  letters = all_sequences(language.num_letters, length)
  out = np.zeros((len(letters), length, language.num_letters))
  for site in range(length):
    conditional = joint / joint.sum(axis=site, keepdims=True)
    for a in range(language.num_letters):
      replaced = letters.copy()
      replaced[:, site] = a
      out[:, site, a] = conditional[tuple(replaced.T)]
  return out


# ---- Exact quantities against enumeration ----------------------------------------------------


@pytest.mark.parametrize("name", [*sorted(TINY), "sparse_hmm", "sparse_chain"])
@pytest.mark.parametrize("length", [1, 2, 5])
def test_enumerated_probabilities_sum_to_one(name: str, length: int) -> None:
  language = {**TINY, "sparse_hmm": HiddenMarkovLanguage.random(4, 5, seed=0),
              "sparse_chain": HiddenMarkovLanguage.markov_chain(5, seed=0, concentration=0.1)
              }[name]
  log_probs = language.enumerate_log_probs(length)
  assert log_probs.shape == (language.num_letters ** length,)
  assert np.exp(log_probs).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", sorted(TINY))
def test_log_prob_is_the_sum_over_hidden_paths(name: str) -> None:
  language, length = TINY[name], 4
  expected = brute_force_log_probs(language, length)
  letters = all_sequences(language.num_letters, length)
  np.testing.assert_allclose(language.log_prob(letters), expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(language.enumerate_log_probs(length), expected, rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_array_equal(synthetic.sequence_index(letters, language.num_letters),
                                np.arange(len(letters)))  # Lexicographic, first letter first.


def test_visible_chain_log_prob_is_the_product_of_transitions() -> None:
  chain = HiddenMarkovLanguage.markov_chain(5, seed=4, concentration=0.3)
  letters = chain.sample(np.random.default_rng(0), 50, 7)
  expected = np.log(chain.initial[letters[:, 0]]) + np.log(
      chain.transition[letters[:, :-1], letters[:, 1:]]).sum(axis=1)
  np.testing.assert_allclose(chain.log_prob(letters), expected, rtol=1e-12)
  assert chain.is_visible and not HMM_3_2.is_visible


@pytest.mark.parametrize("name", sorted(TINY))
def test_infill_log_probs_are_the_enumerated_conditionals(name: str) -> None:
  language, length = TINY[name], 4
  expected = enumerated_conditionals(language, length)
  letters = all_sequences(language.num_letters, length)
  np.testing.assert_allclose(np.exp(language.all_infill_log_probs(letters)), expected,
                             atol=1e-12)
  for site in range(length):
    np.testing.assert_allclose(np.exp(language.infill_log_probs(letters, site)),
                               expected[:, site], atol=1e-12)
  sites = np.random.default_rng(0).integers(0, length, len(letters))
  np.testing.assert_allclose(np.exp(language.infill_log_probs(letters, sites)),
                             expected[np.arange(len(letters)), sites], atol=1e-12)
  with pytest.raises(ValueError, match="sites must be in"):
    language.infill_log_probs(letters, length)


def test_entropies_match_the_enumeration() -> None:
  """The exact unigram entropy, and the Monte Carlo per-token NLL and infill entropy within
  four standard errors of their enumerated values."""
  language, length = HMM_2_3, 5
  log_p = brute_force_log_probs(language, length)
  p = np.exp(log_p)
  marginal = p.reshape((language.num_letters,) * length).sum(axis=(1, 2, 3, 4))
  assert language.unigram_entropy() == pytest.approx(-np.sum(marginal * np.log(marginal)),
                                                     abs=1e-12)
  exact_nll = -np.sum(p * log_p) / length
  mean, error = language.nll_per_token(length, 20_000, seed=0)
  assert 0 < error < 0.01 and abs(mean - exact_nll) < 4 * error
  conditionals = enumerated_conditionals(language, length)
  site_entropies = -np.sum(conditionals * np.log(conditionals), axis=-1).mean(axis=1)
  exact_infill = float(np.sum(p * site_entropies))
  mean, error = language.infill_entropy(length, 20_000, seed=1)
  assert 0 < error < 0.01 and abs(mean - exact_infill) < 4 * error
  assert exact_infill < exact_nll < language.unigram_entropy()


def window_marginals(language: HiddenMarkovLanguage, length: int, width: int) -> np.ndarray:
  """``[length - width + 1, V ** width]``: the law of each window of ``width`` letters."""
  joint = np.exp(language.enumerate_log_probs(length)).reshape((language.num_letters,) * length)
  return np.stack([joint.sum(axis=tuple(a for a in range(length)
                                        if not start <= a < start + width)).ravel()
                   for start in range(length - width + 1)])


@pytest.mark.parametrize("name", sorted(TINY))
def test_windows_are_stationary(name: str) -> None:
  language = TINY[name]
  np.testing.assert_allclose(language.initial @ language.transition, language.initial,
                             atol=1e-14)
  for width in (1, 2):
    marginals = window_marginals(language, 5, width)
    np.testing.assert_allclose(marginals, np.broadcast_to(marginals[0], marginals.shape),
                               atol=1e-12)
  # The check has teeth: a uniform start is not stationary and its windows drift.
  drifting = HiddenMarkovLanguage(np.full(language.num_states, 1 / language.num_states),
                                  language.transition, language.emission)
  marginals = window_marginals(drifting, 5, 2)
  assert np.abs(marginals[0] - marginals[-1]).max() > 1e-3


def pooled_chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
  """Pearson's chi-square p-value, the cells expecting fewer than 5 counts pooled into one."""
  expected = counts.sum() * probs
  small = expected < 5
  observed = np.append(counts[~small], counts[small].sum())
  expected = np.append(expected[~small], expected[small].sum())
  keep = expected > 0
  statistic = np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep])
  return float(stats.chi2.sf(statistic, keep.sum() - 1))


@pytest.mark.parametrize("name", sorted(TINY))
def test_sample_frequencies_follow_the_exact_law(name: str) -> None:
  """Pearson's test at level 1e-4 (a fixed seed: deterministic); the law of a perturbed
  language is rejected on the same samples, so the test can fail."""
  language, length, n = TINY[name], 4, 60_000
  letters = language.sample(np.random.default_rng(0), n, length)
  assert letters.dtype == np.int32 and letters.shape == (n, length)
  counts = np.bincount(synthetic.sequence_index(letters, language.num_letters),
                       minlength=language.num_letters ** length)
  assert pooled_chi_square(counts, np.exp(language.enumerate_log_probs(length))) > 1e-4
  other = np.exp(language.perturbed(0.2, seed=9, concentration=1.0).enumerate_log_probs(length))
  assert pooled_chi_square(counts, other) < 1e-8


def test_zero_probabilities_are_respected() -> None:
  """A periodic chain with a letter no state emits: the sampler never draws a probability-0
  event and ``log_prob`` gives impossible sequences ``-inf``."""
  language = HiddenMarkovLanguage(np.array([0.5, 0.5]), np.array([[0.0, 1.0], [1.0, 0.0]]),
                                  np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]]))
  letters = language.sample(np.random.default_rng(0), 20_000, 5)
  assert not np.any(letters == 3)
  zeros = letters == 0
  assert np.all(zeros[:, :-1] != zeros[:, 1:])  # State 0 (letter 0) every other step.
  np.testing.assert_allclose(language.log_prob(letters),
                             (1 + np.sum(~zeros, axis=1)) * np.log(0.5))  # Start, letters 1, 2.
  assert language.log_prob(np.array([[0, 0, 1]]))[0] == -np.inf
  assert np.exp(language.enumerate_log_probs(4)).sum() == pytest.approx(1.0, abs=1e-12)


# ---- Construction ------------------------------------------------------------------------------


def test_perturbed_and_markov_chain() -> None:
  chain = HiddenMarkovLanguage.markov_chain(4, seed=0)
  np.testing.assert_array_equal(chain.emission, np.eye(4))
  same = chain.perturbed(0.0, seed=1)
  np.testing.assert_allclose(same.enumerate_log_probs(3), chain.enumerate_log_probs(3),
                             atol=1e-12)
  other = chain.perturbed(0.5, seed=1)
  assert other.is_visible  # A visible chain stays visible.
  assert np.abs(other.transition - chain.transition).max() > 0.05
  np.testing.assert_allclose(other.initial @ other.transition, other.initial, atol=1e-14)
  hmm = HiddenMarkovLanguage.random(5, 6, seed=0)
  moved = hmm.perturbed(0.3, seed=2)
  assert np.abs(moved.emission - hmm.emission).max() > 0.01
  for matrix in (moved.transition, moved.emission):
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-14)
  assert HiddenMarkovLanguage.random(5, 6, seed=0).transition.tobytes() == hmm.transition.tobytes()
  with pytest.raises(ValueError):
    hmm.perturbed(1.5, seed=0)
  with pytest.raises(ValueError, match="sum to 1"):
    HiddenMarkovLanguage(np.ones(2) / 2, np.ones((2, 2)), np.eye(2))
  with pytest.raises(ValueError, match="shapes"):
    HiddenMarkovLanguage(np.ones(3) / 3, np.eye(2), np.eye(2))
  with pytest.raises(ValueError):
    hmm.emission[0, 0] = 1.0  # Read-only.


def test_text_round_trip_and_limits() -> None:
  letters = np.arange(64).reshape(4, 16).astype(np.int32)
  texts = synthetic.to_text(letters)
  assert texts[0] == synthetic.ALPHABET[:16] and len(texts) == 4
  np.testing.assert_array_equal(synthetic.from_text(texts), letters)
  assert synthetic.to_text([0, 26, 52, 63]) == "aA0/"
  np.testing.assert_array_equal(synthetic.from_text("aA0/"), [0, 26, 52, 63])
  with pytest.raises(ValueError):
    synthetic.alphabet(65)
  with pytest.raises(ValueError):
    synthetic.to_text([64])
  with pytest.raises(ValueError, match="not letters"):
    synthetic.from_text("ab-")
  with pytest.raises(ValueError, match="2\\*\\*22"):
    HiddenMarkovLanguage.markov_chain(4, seed=0).enumerate_log_probs(12)
  with pytest.raises(ValueError, match="letters must be in"):
    CHAIN_3.log_prob(np.array([[0, 3]]))


def test_letter_vocabulary() -> None:
  vocab = vocabularies.LetterVocabulary(synthetic.alphabet(64))
  assert vocab.base_vocab_size == 67 and vocab.vocab_size == 256
  np.testing.assert_array_equal(vocab.encode("aA0/"), [3, 29, 55, 66])
  assert vocab.encode("a-").tolist() == [3, vocabularies.UNK_ID]
  assert vocab.decode([3, 29, 55, 66, vocabularies.EOS_ID, 4]) == "aA0/"
  text_ids = np.flatnonzero(~vocab.special_token_mask())
  np.testing.assert_array_equal(text_ids, np.arange(3, 67))  # Only the letters are text.
  small = vocabularies.LetterVocabulary("abcd")
  assert small.vocab_size == 128 and small.fingerprint() != vocab.fingerprint()
  assert small.fingerprint() != vocabularies.LetterVocabulary("abce").fingerprint()
  assert small == vocabularies.LetterVocabulary("abcd")
  with pytest.raises(ValueError):
    vocabularies.LetterVocabulary("aa")


# ---- Tasks ---------------------------------------------------------------------------------------

SMALL = {"hmm": ["synthetic_language_config.num_letters = 8",
                 "synthetic_language_config.num_states = 4",
                 "synthetic_language_config.sequence_length = 10"],
         "enum": ["synthetic_enum_config.sequence_length = 5"]}


def configure(kind: str, *extra: str) -> None:
  prefix = "synthetic_language_config" if kind == "hmm" else "synthetic_enum_config"
  gin.parse_config([*SMALL[kind], f"{prefix}.train_sequences = 300",
                    f"{prefix}.validation_sequences = 120", f"{prefix}.test_sequences = 40",
                    *extra])


def all_targets(task: str, split: str, length: int) -> np.ndarray:
  iterator = data.get_batch_iterator(task, split, {"targets": length}, batch_size=8,
                                     shuffle=False, repeat=False)
  return np.concatenate([batch["targets"] for batch in iterator])


@pytest.mark.parametrize("kind,task", [("hmm", "synthetic_lm"), ("enum", "synthetic_enum_lm")])
def test_lm_batches_are_exactly_the_sequences(kind: str, task: str, tmp_path: pathlib.Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setenv("GLAUBER_JAX_CACHE", str(tmp_path))
  configure(kind)
  config = registry.synthetic_config(kind)
  length = config.sequence_length
  rows = all_targets(task, "validation", length)
  sequences = config.sequences("validation")
  assert rows.shape == (120, length) and sequences.shape == (120, length)
  np.testing.assert_array_equal(rows, sequences + 3)  # One chunk per sequence, in order.
  assert not np.any(rows == vocabularies.EOS_ID) and rows.min() >= 3
  assert rows.max() < 3 + config.num_letters
  vocab = data.get_task(task).vocabulary()
  assert vocab.decode(rows[0]) == synthetic.to_text(sequences[0])
  train = all_targets(task, "train", length)
  assert len(train) == 296 and not np.array_equal(train[:40], rows[:40])  # Other draws.
  assert np.array_equal(registry.synthetic_language(kind).transition,
                        config.language().transition)
  # A changed setting is a new cache entry, never the stale chunks.
  gin.clear_config()
  prefix = "synthetic_language_config" if kind == "hmm" else "synthetic_enum_config"
  configure(kind, f"{prefix}.seed = 7")
  reseeded = all_targets(task, "validation", length)
  np.testing.assert_array_equal(reseeded, registry.synthetic_config(kind).sequences(
      "validation") + 3)
  assert not np.array_equal(reseeded, rows)


def test_ul2_chunks_join_sequences_without_eos(tmp_path: pathlib.Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setenv("GLAUBER_JAX_CACHE", str(tmp_path))
  configure("enum")
  config = registry.synthetic_config("enum")
  task = data.get_task("synthetic_enum_ul2")
  assert not task.append_eos
  chunks = data_cache.tokenized_chunks(task, "validation", 2 * config.sequence_length)
  pairs = (config.sequences("validation") + 3).reshape(-1, 2 * config.sequence_length)
  np.testing.assert_array_equal(np.stack([chunks[i] for i in range(len(chunks))]), pairs)
  # Feature lengths whose chunk is one sequence: inputs 16, targets L + 1.
  batch = next(data.get_batch_iterator("synthetic_enum_ul2", "train",
                                       {"inputs": 16, "targets": config.sequence_length + 1},
                                       batch_size=4))
  assert batch["encoder_input_tokens"].shape == (4, 16)


def test_eos_is_text_only_for_tasks_that_join_documents_with_it() -> None:
  """The Glauber model gives EOS probability only where the data holds it (gin/models/
  glauber.gin binds ``text_includes_eos`` to this)."""
  assert not data.task_text_includes_eos("synthetic_lm")
  assert not data.task_text_includes_eos("synthetic_enum_ul2")
  assert data.task_text_includes_eos("shakespeare_lm")
  assert data.task_text_includes_eos("english_lm")  # A mixture.


def test_seqio_mirror_keeps_the_sequences_whole(tmp_path: pathlib.Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
  pytest.importorskip("seqio")
  pytest.importorskip("tensorflow")
  from tasks import seqio_tasks  # pylint: disable=import-outside-toplevel
  import seqio  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("GLAUBER_JAX_CACHE", str(tmp_path))
  configure("enum")
  seqio_tasks.register_task("synthetic_enum_lm")
  length = registry.synthetic_config("enum").sequence_length
  theirs = [ex["targets"] for ex in seqio.get_mixture_or_task("synthetic_enum_lm").get_dataset(
      {"targets": length}, split="validation", shuffle=False).as_numpy_iterator()]
  np.testing.assert_array_equal(np.stack(theirs), all_targets("synthetic_enum_lm", "validation",
                                                              length))


# ---- The exact judge ---------------------------------------------------------------------------


def ids_of(letters: np.ndarray, vocab: vocabularies.Vocabulary) -> list[list[int]]:
  return [vocab.encode(text).tolist() for text in synthetic.to_text(letters)]


def test_exact_judge_tells_the_truth_from_another_language() -> None:
  config = registry.synthetic_config("enum")  # The defaults: 4 letters, length 6.
  truth = config.language()
  vocab = registry.synthetic_vocabulary("enum")
  n, length = 3000, config.sequence_length
  good = synthetic_judge.exact_judge_row(ids_of(truth.sample(np.random.default_rng(11), n, length),
                                          vocab), truth, vocab, enumerable=True)
  bad = synthetic_judge.exact_judge_row(
      ids_of(truth.perturbed(0.5, seed=1).sample(np.random.default_rng(11), n, length), vocab),
      truth, vocab, enumerable=True)
  for row in (good, bad):
    assert row["invalid_fraction"] == 0 and row["num_valid"] == n and row["num_sequences"] == 4096
    assert row["data_nll_exact"] == pytest.approx(row["data_nll"], abs=4 * row["data_nll_se"])
  error = np.hypot(good["true_nll_se"], good["data_nll_se"])
  assert abs(good["true_nll"] - good["data_nll"]) < 4 * error
  assert abs(good["tv"] - good["tv_noise"]) < 5 * good["tv_noise_sd"] + 0.01
  assert abs(good["entropy"] - good["data_entropy"]) < 5 * good["data_entropy_se"]
  assert bad["true_nll"] > good["data_nll"] + 20 * np.hypot(bad["true_nll_se"],
                                                            bad["data_nll_se"])
  assert bad["tv"] > bad["tv_noise"] + 0.2 and bad["kl"] > 5 * bad["kl_noise"]
  # A hidden Markov language: the NLL alone separates truth from a neighbour.
  hmm = HiddenMarkovLanguage.random(8, 16, seed=0)
  hmm_vocab = vocabularies.LetterVocabulary(synthetic.alphabet(16))
  samples = hmm.sample(np.random.default_rng(0), 1000, 12)
  near = hmm.perturbed(0.2, seed=3).sample(np.random.default_rng(0), 1000, 12)
  row = synthetic_judge.exact_judge_row(ids_of(samples, hmm_vocab), hmm, hmm_vocab,
                                        enumerable=False)
  off = synthetic_judge.exact_judge_row(ids_of(near, hmm_vocab), hmm, hmm_vocab, enumerable=False)
  assert abs(row["true_nll"] - row["data_nll"]) < 4 * np.hypot(row["true_nll_se"],
                                                               row["data_nll_se"])
  assert off["true_nll"] > row["data_nll"] + 10 * np.hypot(off["true_nll_se"],
                                                           off["data_nll_se"])
  assert "tv" not in row


def test_exact_judge_counts_non_letters_as_invalid() -> None:
  truth = HiddenMarkovLanguage.markov_chain(4, seed=0)
  vocab = vocabularies.LetterVocabulary("abcd")
  letters = truth.sample(np.random.default_rng(0), 40, 6)
  ids = ids_of(letters, vocab)
  with_eos = [row[:3] + [vocabularies.EOS_ID, 0, 0] for row in ids[:10]] + ids[10:]
  row = synthetic_judge.exact_judge_row(with_eos, truth, vocab, enumerable=True)
  clean = synthetic_judge.exact_judge_row(ids[10:], truth, vocab, enumerable=True)
  assert row["invalid_fraction"] == 0.25 and row["num_valid"] == 30
  assert row["true_nll"] == pytest.approx(-truth.log_prob(letters[10:]).mean() / 6)
  assert row["true_nll"] == clean["true_nll"]
  p = np.exp(truth.enumerate_log_probs(6))
  counts = np.bincount(synthetic.sequence_index(letters[10:], 4), minlength=p.size)
  assert row["tv"] == pytest.approx(0.5 * (np.abs(counts / 40 - p).sum() + 10 / 40))
  assert row["entropy"] == pytest.approx(metrics.token_entropy(with_eos))
  with pytest.raises(ValueError, match="one length"):
    synthetic_judge.exact_judge_row([ids[0], ids[1][:5]], truth, vocab, enumerable=True)


def test_paired_change_is_the_mean_per_sample_difference() -> None:
  """The rounds' paired effect: the per-pair NLL differences by hand, pairs with an invalid
  side left out, and a standard error below the unpaired one when drafts and finals share
  most sites (their spreads cancel)."""
  truth = HiddenMarkovLanguage.markov_chain(4, seed=0)
  vocab = vocabularies.LetterVocabulary("abcd")
  rng = np.random.default_rng(5)
  drafts = truth.sample(rng, 200, 6)
  finals = drafts.copy()
  finals[:, 2] = rng.integers(0, 4, 200)  # The "rounds" redraw one site.
  after, before = ids_of(finals, vocab), ids_of(drafts, vocab)
  after[0] = after[0][:5] + [vocabularies.EOS_ID]  # An invalid final: its pair is left out.
  row = synthetic_judge.paired_nll_change(after, before, truth, vocab)
  by_hand = (truth.log_prob(drafts[1:]) - truth.log_prob(finals[1:])) / 6
  assert row["rounds_effect_pairs"] == 199
  assert row["rounds_effect"] == pytest.approx(by_hand.mean())
  assert row["rounds_effect_se"] == pytest.approx(by_hand.std(ddof=1) / np.sqrt(199))
  unpaired = np.hypot(*(np.std(-truth.log_prob(x[1:]) / 6, ddof=1) / np.sqrt(199)
                        for x in (drafts, finals)))
  assert row["rounds_effect_se"] < unpaired
  with pytest.raises(ValueError, match="against"):
    synthetic_judge.paired_nll_change(after[1:], before, truth, vocab)


def write_samples(path: pathlib.Path, token_ids: list[list[int]]) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for ids in token_ids:
      f.write(json.dumps({"text": "", "token_ids": ids, "settings": {"mode": "sample"}}) + "\n")
  return str(path)


def test_eval_command_line_with_the_exact_judge(tmp_path: pathlib.Path,
                                                capsys: pytest.CaptureFixture) -> None:
  gin.parse_config(["synthetic_enum_config.seed = 5", "synthetic_enum_config.sequence_length = 4"])
  truth = registry.synthetic_language("enum")
  vocab = registry.synthetic_vocabulary("enum")
  gin.clear_config()
  ids = ids_of(truth.sample(np.random.default_rng(0), 500, 4), vocab)
  ids[0] = ids[0][:3] + [vocabularies.EOS_ID]
  samples = write_samples(tmp_path / "samples.jsonl", ids)
  output = tmp_path / "rows.jsonl"
  eval_cli.main([f"--samples={samples}", "--synthetic=enum", f"--output={output}",
                 "--gin.synthetic_enum_config.seed=5",
                 "--gin.synthetic_enum_config.sequence_length=4"])
  header = capsys.readouterr().out.splitlines()[0].split()
  assert {"true-NLL", "data-NLL", "TV", "TV-noise", "invalid"} <= set(header)
  row: dict[str, Any] = json.loads(output.read_text().splitlines()[0])
  expected = synthetic_judge.exact_judge_row(ids, truth, vocab, enumerable=True)
  for key, value in expected.items():
    assert row[key] == pytest.approx(value), key
  assert row["synthetic"] == "enum" and row["synthetic_config"]["seed"] == 5
  assert row["invalid_fraction"] == pytest.approx(1 / 500)
  gin.clear_config()
  with pytest.raises(SystemExit):  # Bindings need --synthetic or a judge.
    eval_cli.main([f"--samples={samples}", "--gin.synthetic_enum_config.seed=5"])
  with pytest.raises(SystemExit, match="one length"):
    eval_cli.main([f"--samples={write_samples(tmp_path / 'ragged.jsonl', [ids[1], ids[2][:3]])}",
                   "--synthetic=enum", f"--output={output}"])
