"""Evaluation metrics: diversity on hand-computed cases, judges against direct computations,
the MAUVE skip path, puzzle scores and the perplexity bound."""

from __future__ import annotations

import importlib.util
import logging
import math
import pathlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import metrics, sampling, vocabularies
from tasks import puzzles

HAS_TORCH = all(importlib.util.find_spec(name) is not None
                for name in ("torch", "transformers", "tokenizers"))
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch/transformers not installed")

CORPUS = ["To be, or not to be, that is the question.",
          "Whether 'tis nobler in the mind to suffer the slings and arrows of fortune.",
          "Now is the winter of our discontent made glorious summer by this sun of York."]


# ---- Diversity ---------------------------------------------------------------------------------


def test_token_entropy_hand_computed() -> None:
  # [1, 1, 2, 3]: p = (1/2, 1/4, 1/4), H = 1.5 log 2; [5, 5, 5, 5]: H = 0.
  assert metrics.token_entropy([[1, 1, 2, 3], [5, 5, 5, 5]]) == pytest.approx(
      0.75 * math.log(2))
  assert metrics.token_entropy([list(range(8))]) == pytest.approx(math.log(8))
  # Pooled: counts 1:2, 2:1, 3:1, 5:4 of 8.
  expected = -sum(c / 8 * math.log(c / 8) for c in (2, 1, 1, 4))
  assert metrics.corpus_token_entropy([[1, 1, 2, 3], [5, 5, 5, 5]]) == pytest.approx(expected)
  np.testing.assert_allclose(metrics.sample_token_entropies([[1, 2], [3, 3]]),
                             [math.log(2), 0.0])
  with pytest.raises(ValueError):
    metrics.token_entropy([[]])


def test_distinct_n_hand_computed() -> None:
  samples = [[1, 2, 1, 2], [1, 2, 3]]
  # Unigrams: 7 with {1, 2, 3}; bigrams: (1,2) (2,1) (1,2) | (1,2) (2,3) -> 3 of 5;
  # trigrams: (1,2,1) (2,1,2) | (1,2,3) -> 3 of 3; 4-grams: (1,2,1,2) -> 1 of 1.
  assert metrics.distinct_n(samples, 1) == pytest.approx(3 / 7)
  assert metrics.distinct_n(samples, 2) == pytest.approx(3 / 5)
  assert metrics.distinct_n(samples, 3) == 1.0
  assert metrics.distinct_n(samples, 4) == 1.0
  assert metrics.distinct_n([["a", "b"], ["a", "b"]], 2) == 0.5  # Across samples too.
  with pytest.raises(ValueError, match="distinct-5"):
    metrics.distinct_n(samples, 5)


def test_low_temperature_samples_have_lower_entropy() -> None:
  vocab, length, count = 500, 64, 32
  logits = -1.1 * jnp.log(jnp.arange(1, vocab + 1, dtype=jnp.float32))  # Zipf-like.
  logits = jnp.broadcast_to(logits, (count, length, vocab))
  entropies = {}
  for temperature in (1.0, 0.7, 0.4):
    draws = sampling.sample_categorical(jax.random.PRNGKey(0), logits, temperature)
    entropies[temperature] = metrics.token_entropy(np.asarray(draws).tolist())
  assert entropies[1.0] > entropies[0.7] > entropies[0.4]
  assert entropies[1.0] <= math.log(length)


# ---- Generative perplexity ---------------------------------------------------------------------


def test_model_judge_uniform_model_has_the_vocabulary_size_as_perplexity() -> None:
  vocab = vocabularies.ByteVocabulary()
  calls = []

  def uniform(token_ids: np.ndarray) -> np.ndarray:
    calls.append(token_ids.shape)
    return np.full(token_ids.shape[0], -token_ids.shape[1] * math.log(vocab.vocab_size))

  judge = metrics.ModelJudge(uniform, vocab, max_length=16, name="uniform")
  texts = ["hello", "a longer text than sixteen bytes, chunked", "", "xy"]
  result = metrics.generative_perplexity(texts, judge, batch_size=2)
  assert result["gen_ppl"] == pytest.approx(vocab.vocab_size)
  assert result["num_tokens"] == sum(len(t.encode()) for t in texts)
  assert result["num_texts"] == 4 and result["judge"] == "uniform"
  assert all(shape[0] == 2 and shape[1] <= 16 for shape in calls)  # Full batches, chunked.


def test_model_judge_sums_chunks_per_text() -> None:
  vocab = vocabularies.ByteVocabulary()

  def first_token_scorer(token_ids: np.ndarray) -> np.ndarray:
    # log p = -(first id): depends on where chunks start, so it checks the chunking.
    return -token_ids[:, 0].astype(np.float64)

  judge = metrics.ModelJudge(first_token_scorer, vocab, max_length=3)
  totals, tokens = judge.log_likelihoods(["abcdefg", "hi"], batch_size=4)
  ids = vocab.encode("abcdefg")
  np.testing.assert_allclose(totals, [-(ids[0] + ids[3] + ids[6]), -vocab.encode("h")[0]])
  np.testing.assert_array_equal(tokens, [7, 2])
  assert metrics.split_into_chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def save_tiny_gpt2(directory: pathlib.Path, context: int = 12) -> None:
  """A randomly initialised GPT-2 and a byte-level BPE trained on ``CORPUS``; no download."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  bpe.train_from_iterator(CORPUS, tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|endoftext|>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
  tokenizer.save_pretrained(directory)
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=context, n_embd=32,
                                   n_layer=2, n_head=2, bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id)
  transformers.GPT2LMHeadModel(config).save_pretrained(directory)


@needs_torch
def test_hf_judge_equals_direct_torch_nll(tmp_path: pathlib.Path) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  context = 12
  save_tiny_gpt2(tmp_path, context)
  judge = metrics.HuggingFaceJudge(str(tmp_path))
  assert judge.context == context
  texts = [CORPUS[0], CORPUS[1] + " " + CORPUS[2], "To be"]  # The second needs chunks.
  result = metrics.generative_perplexity(texts, judge, batch_size=2)

  # Directly: HF's own shifted-label loss on [BOS] + chunk, same tokenisation.
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  total_nll, total_tokens = 0.0, 0
  for text in texts:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == judge.tokenize([text])[0]
    for start in range(0, len(ids), context - 1):
      chunk = [tokenizer.bos_token_id] + ids[start:start + context - 1]
      with torch.no_grad():
        loss = model(torch.tensor([chunk]), labels=torch.tensor([chunk])).loss
      total_nll += float(loss) * (len(chunk) - 1)
      total_tokens += len(chunk) - 1
  assert len(tokenizer(texts[1], add_special_tokens=False)["input_ids"]) > context
  assert result["num_tokens"] == total_tokens
  assert result["gen_ppl"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)
  # Batching and padding change nothing.
  alone = metrics.generative_perplexity(texts, judge, batch_size=1)
  assert alone["gen_ppl"] == pytest.approx(result["gen_ppl"], rel=1e-5)


def test_hf_judge_errors_are_clear(tmp_path: pathlib.Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
  if HAS_TORCH:
    with pytest.raises(FileNotFoundError, match="not a directory"):
      metrics.HuggingFaceJudge(str(tmp_path / "absent"))
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *args: None if name == "torch" else object())
  with pytest.raises(ImportError, match="pip install torch transformers"):
    metrics.HuggingFaceJudge(str(tmp_path))


# ---- MAUVE -------------------------------------------------------------------------------------


def test_mauve_skips_with_a_message(caplog: pytest.LogCaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *args: None if name == "mauve" else real_find_spec(name))
  with caplog.at_level(logging.WARNING):
    assert metrics.mauve_score(["a sample"], ["a reference"], "/no/such/dir") is None
  assert "pip install mauve-text" in caplog.text
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
  reason = metrics.mauve_unavailable_reason("/no/such/dir")
  assert reason is not None and "feature model" in reason


@needs_torch
def test_mauve_gets_features_of_the_last_token(tmp_path: pathlib.Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
  """With a stand-in ``mauve`` module: the features MAUVE receives are the final hidden state
  of each text's last token, references as ``p`` and samples as ``q``."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  save_tiny_gpt2(tmp_path)
  received = {}

  def compute_mauve(p_features: np.ndarray, q_features: np.ndarray, seed: int
                    ) -> types.SimpleNamespace:
    received.update(p=p_features, q=q_features, seed=seed)
    return types.SimpleNamespace(mauve=0.5)

  fake = types.ModuleType("mauve")
  fake.compute_mauve = compute_mauve
  monkeypatch.setitem(sys.modules, "mauve", fake)
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *args: object() if name == "mauve" else real_find_spec(name))
  assert metrics.mauve_score(CORPUS[:2], CORPUS, str(tmp_path)) == 0.5
  assert received["p"].shape == (3, 32) and received["q"].shape == (2, 32)
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
  model = transformers.AutoModel.from_pretrained(tmp_path).eval()
  ids = tokenizer(CORPUS[0], return_tensors="pt")["input_ids"][:, :12]
  with torch.no_grad():
    expected = model(ids).last_hidden_state[0, -1].numpy()
  np.testing.assert_allclose(received["q"][0], expected, atol=1e-5)


# ---- Puzzles and bounds ------------------------------------------------------------------------


def test_puzzle_scores_on_a_generated_sudoku() -> None:
  examples = list(puzzles.build_examples("sudoku", "test", 2, seed=0, difficulty="easy"))
  solved = metrics.puzzle_scores(examples, [e.solution for e in examples], puzzles)
  assert solved == {"exact_solve": 1.0, "cell_accuracy": 1.0, "num_examples": 2}
  blank = examples[0].puzzle.index("0")  # A cell the model must fill.
  wrong = examples[0].solution[blank] == "1" and "2" or "1"
  corrupted = examples[0].solution[:blank] + wrong + examples[0].solution[blank + 1:]
  scores = metrics.puzzle_scores(examples, [corrupted, examples[1].solution], puzzles)
  assert scores["exact_solve"] == 0.5 and 0.9 < scores["cell_accuracy"] < 1.0


def test_perplexity_bound() -> None:
  result = metrics.perplexity_bound([-10.0, -30.0], 10)
  assert result["nats_per_token"] == pytest.approx(2.0)
  assert result["perplexity_upper_bound"] == pytest.approx(math.exp(2.0))
  assert result["sequences"] == 2 and result["elbo_nats_per_sequence"] == -20.0
  weighted = metrics.perplexity_bound(np.array([-10.0, -30.0]), [5, 15])
  assert weighted["nats_per_token"] == pytest.approx(2.0)
  with pytest.raises(ValueError):
    metrics.perplexity_bound([], 10)
