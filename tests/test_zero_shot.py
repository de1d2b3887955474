"""Zero-shot evaluation (``glauber_jax.zero_shot``): readers, the perplexity and its bound
labels, conditional bounds on enumerable toys, and multiple choice for every family.

The enumerable toys are ``test_process_contract``'s: 3 letters, ``L = 3`` (27 sequences), the
Glauber and absorbing processes with table denoisers, where every model's exact (conditional)
likelihood is computed by enumeration.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from glauber_jax import baselines, denoiser_networks, models, network, vocabularies
from glauber_jax.processes import hybrid_process
from glauber_jax.zero_shot import detokenizers, readers, scoring
import helpers
import test_hybrid_process
from test_glauber_end_to_end import L, LETTER_IDS, VOCAB, neighbour_states
from test_process_contract import (P_DATA, STATES, AbsorbingTables, GlauberTables,
                                   absorbing_toy, epsilon_hybrid_toy, glauber_toy, state_index)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "zero_shot")
CHOICE_FILES = {"winogrande": "winogrande/dev.jsonl", "piqa": "piqa/valid.jsonl",
                "siqa": "siqa/dev.jsonl", "hellaswag": "hellaswag/hellaswag_val.jsonl"}


def fixture(relative: str) -> str:
  return os.path.join(FIXTURES, relative)


# ---- Readers --------------------------------------------------------------------------------


def test_text_set_readers_detokenise_their_fixtures() -> None:
  wiki = readers.read_text_set("wikitext2", fixture("wikitext2"))
  assert len(wiki) == 2 and wiki[0].startswith("= Lighthouse Keepers =")
  assert "19th-century" in wiki[0] and "1,000.5 litres" in wiki[0] and "== Duties ==" in wiki[0]
  assert "(also called a wickie)" in wiki[0] and "didn't" in wiki[0]
  assert 'makes "bread" and' in wiki[1]
  lm1b = readers.read_text_set("lm1b", fixture("lm1b"))  # The directory: every shard.
  assert lm1b == readers.read_text_set("lm1b",
                                       fixture("lm1b/news.en.heldout-00000-of-00050"))
  assert lm1b[0] == "The council said it wouldn't raise taxes this year."
  assert lm1b[1] == '"We are pleased," the mayor said on Tuesday.'
  assert lm1b[2] == "Shares rose 3% to $12.50 in early trading."
  lambada = readers.read_lambada(fixture("lambada/lambada_test.jsonl"))
  assert [example.target for example in lambada] == [" lamp", " coat", " flowers"]
  assert lambada[1].context.startswith('"You will need a coat,"')  # Curly quotes made straight.
  assert readers.read_text_set("lambada", fixture("lambada/lambada_test.jsonl"))[2] == (
      "She planted the seeds in spring and watered them each morning. By summer the garden "
      "was full of flowers")


def test_choice_readers_follow_lm_evaluation_harness() -> None:
  examples = {task: readers.CHOICE_READERS[task](fixture(path))
              for task, path in CHOICE_FILES.items()}
  wino = examples["winogrande"][0]
  assert wino.contexts == ("The trophy does not fit into the suitcase because the trophy",
                           "The trophy does not fit into the suitcase because the suitcase")
  assert wino.continuations == (" is too small.",) * 2 and wino.label == 1
  piqa = examples["piqa"]
  assert piqa[0].contexts[0] == "Question: To dry wet shoes,\nAnswer:"
  assert piqa[0].continuations[1] == " fill them with water and leave them outside."
  assert [example.label for example in piqa] == [0, 1]
  siqa = examples["siqa"]
  assert siqa[1].continuations == (" go to a party", " sleep", " buy a new car")
  assert [example.label for example in siqa] == [0, 1]
  hellaswag = examples["hellaswag"][0]
  assert hellaswag.contexts[0] == "Making tea: A man fills a kettle with water. He"
  assert hellaswag.continuations[2] == " paints the kettle blue. and sings."
  assert [example.label for example in examples["hellaswag"]] == [0, 1]


def test_malformed_lines_name_the_file_and_line(tmp_path: Any) -> None:
  bad_json = tmp_path / "dev.jsonl"
  bad_json.write_text('{"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "1"}\n'
                      '{"sentence": "broken\n')
  with pytest.raises(readers.DataError, match=rf"{bad_json}:2: not a JSON object"):
    readers.read_winogrande(str(bad_json))
  missing_field = tmp_path / "hellaswag.jsonl"
  missing_field.write_text('{"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "label": 0}\n')
  with pytest.raises(readers.DataError, match=rf"{missing_field}:1: field 'endings'"):
    readers.read_hellaswag(str(missing_field))
  piqa = tmp_path / "valid.jsonl"
  piqa.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n' * 2)
  (tmp_path / "valid-labels.lst").write_text("0\n2\n")
  with pytest.raises(readers.DataError, match=r"valid-labels.lst:2: label '2'"):
    readers.read_piqa(str(piqa))
  wiki = tmp_path / "wiki.test.raw"
  wiki.write_text(" \n some text before any title \n")
  with pytest.raises(readers.DataError, match=rf"{wiki}:2: text before"):
    readers.read_wikitext(str(wiki))


def test_an_absent_file_names_the_flag_gin_binding_and_variable(monkeypatch: Any) -> None:
  monkeypatch.delenv("ZERO_SHOT_PIQA", raising=False)
  with pytest.raises(readers.DataError) as error:
    readers.resolve_path("piqa")
  for name in ("--data=piqa=PATH", "zero_shot.readers.data_paths", "ZERO_SHOT_PIQA"):
    assert name in str(error.value)
  with pytest.raises(readers.DataError, match="'/no/such/file' does not exist"):
    readers.resolve_path("lambada", "/no/such/file")
  monkeypatch.setenv("ZERO_SHOT_LM1B", fixture("lm1b"))
  assert readers.resolve_path("lm1b") == fixture("lm1b")
  with pytest.raises(ValueError, match="unknown zero-shot task 'mmlu'"):
    readers.resolve_path("mmlu")


def test_detokenisers_leave_plain_text_alone() -> None:
  plain = 'He said "no," and left (quickly). It\'s 5% off; why?'
  for name in ("wikitext", "lm1b", "lambada", "none"):
    assert detokenizers.get(name)(plain) == plain


# ---- Perplexity: exact for the causal LM ------------------------------------------------------

AR_NETWORK = network.NetworkConfig(
    vocab_size=VOCAB.vocab_size, d_model=32, num_heads=2, head_dim=16, d_ff=64,
    num_encoder_layers=2, max_encoder_length=8, position_scheme="rope", dtype="float32")


def causal_lm(seq_len: int) -> tuple[baselines.CausalLMModel, Any]:
  model = baselines.CausalLMModel(AR_NETWORK, VOCAB, seq_len)
  shapes = model.input_shapes(2, {"targets": seq_len})
  return model, nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0),
                                                          shapes)["params"])


def test_causal_lm_perplexity_is_exp_of_the_mean_token_nll() -> None:
  model, params = causal_lm(seq_len=4)
  documents = ["abcab", "cba", "bbca"]  # 5 + 1, 3 + 1, 4 + 1 tokens: 3 windows, 3 dropped.
  row = scoring.perplexity(scoring.Scorer("ar", model, params), documents, num_paths=4,
                           batch_size=2, seed=0)
  stream = np.concatenate([np.append(VOCAB.encode(text), VOCAB.eos_id) for text in documents])
  windows = stream[:12].reshape(3, 4)
  logits = np.asarray(model.logits(params, jnp.asarray(windows)), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, windows[..., None], axis=-1).mean()
  assert row["tokens"] == 12 and row["dropped_tokens"] == 3 and row["windows"] == 3
  np.testing.assert_allclose(row["perplexity"], np.exp(nll), rtol=1e-5)
  assert row["relation"] == "=" and not row["bound"] and row["paths_per_window"] == 1
  assert row["nats_per_token_se"] is None and "stride 4" in row["policy"]


# ---- Bounds on enumerable toys -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class GlauberTablesWithTokens(GlauberTables):
  """The Glauber table denoiser with the per-token prior the conditional bound reads."""

  vocabulary: vocabularies.Vocabulary = VOCAB

  def causal_token_log_probs(self, params: Any, tokens: Any, times: Any,
                             dropout_rng: Any = None) -> Any:
    states = jnp.asarray(STATES)

    def prefix_log_prob(length: int) -> Any:
      match = jnp.all(states[None, :, :length] == tokens[:, None, :length], axis=-1)
      return jax.nn.logsumexp(jnp.where(match, params["prior"][None], -jnp.inf), axis=-1)

    return jnp.stack([prefix_log_prob(i + 1) - prefix_log_prob(i) for i in range(L)], -1)


@dataclasses.dataclass(frozen=True, eq=False)
class AbsorbingTablesWithVocabulary(AbsorbingTables):
  vocabulary: vocabularies.Vocabulary = VOCAB


def toy_scorer(family: str, perturbed: bool) -> tuple[scoring.Scorer, Any]:
  """A ``Scorer`` on the family's toy (exact or perturbed tables) and the toy (the
  epsilon-hybrid's uses the absorbing tables: its sampler never shuffles, so they are its exact
  reverse model)."""
  toy = {"glauber": glauber_toy, "absorbing": absorbing_toy,
         "epsilon_hybrid": epsilon_hybrid_toy}[family]()
  denoiser = (GlauberTablesWithTokens() if family == "glauber"
              else AbsorbingTablesWithVocabulary())
  model = models.DiffusionModel(denoiser, toy.model.process)
  params = toy.perturbed if perturbed else toy.exact
  return scoring.Scorer(family, model, params, toy.inference_state), toy


def glauber_conditional_law(scorer: scoring.Scorer, frozen_sites: int, first: np.ndarray
                            ) -> np.ndarray:
  """The Glauber model's exact law over ``STATES`` of its sampler with the first
  ``frozen_sites`` sites fixed to ``first``: the prior's conditional, then the reverse kernels
  at the free sites only (enumerated)."""
  process, params = scorer.model.process, scorer.params
  states = jnp.asarray(STATES)
  token_log_probs = np.asarray(scorer.model.denoiser.causal_token_log_probs(
      params, states, None), np.float64)
  consistent = np.all(STATES[:, :frozen_sites] == first[:frozen_sites], axis=-1)
  law = np.where(consistent, np.exp(token_log_probs[:, frozen_sites:].sum(-1)), 0.0)
  neighbours = neighbour_states(len(LETTER_IDS))
  sites = process.schedule.sites()
  for t in range(process.num_steps, 0, -1):
    k = int(sites[t - 1])
    if k < frozen_sites:
      continue
    kernel = np.exp(np.asarray(process.infill_log_probs(
        scorer.model.denoiser, params, states, jnp.full((len(STATES),), k),
        jnp.full((len(STATES),), t)), np.float64)[:, LETTER_IDS])
    previous = np.zeros_like(law)
    np.add.at(previous, neighbours[k], law[:, None] * kernel)
    law = previous
  return law


def exact_conditional_log_likelihood(scorer: scoring.Scorer, family: str, toy: Any,
                                     frozen_sites: int) -> np.ndarray:
  """``log p(x[frozen_sites:] | x[:frozen_sites])`` of every state under the model (the
  Glauber law with one frozen site: states ``9 a .. 9 a + 8`` start with letter ``a``)."""
  if family == "glauber":
    laws = {first: glauber_conditional_law(scorer, frozen_sites, STATES[first * 9])
            for first in range(len(LETTER_IDS))}
    return np.log(np.stack([laws[s // 9][s] for s in range(len(STATES))]))
  law = toy.perturbed_law if scorer.params is toy.perturbed else P_DATA
  prefix = state_index(jnp.asarray(STATES)) // len(LETTER_IDS) ** (L - frozen_sites)
  totals = np.bincount(np.asarray(prefix), weights=law)
  return np.log(law) - np.log(totals[np.asarray(prefix)])


@pytest.mark.parametrize("family", ["glauber", "absorbing", "epsilon_hybrid"])
def test_diffusion_numbers_are_labelled_bounds_never_below_the_exact_value(family: str) -> None:
  scorer, toy = toy_scorer(family, perturbed=True)
  support = P_DATA > 0
  windows = np.tile(STATES[support], (64, 1))
  draws = scoring.window_log_likelihoods(scorer, windows, num_paths=4, batch_size=256, seed=0)
  row = scoring.perplexity_summary(draws, L, scorer.exact)
  assert row["bound"] and row["relation"] == "<=" and row["paths_per_window"] == 4
  exact_nll = -np.mean(np.log(toy.perturbed_law[support])) / L  # Every state equally often.
  assert row["nats_per_token"] > exact_nll - 4 * row["nats_per_token_se"]
  if family == "glauber":  # A strict bound for blurred kernels (the absorbing tables are
    assert row["nats_per_token"] > exact_nll + 0.01  # their own law's exact posteriors).
  # The conditional bound (first site frozen) against the enumerated conditional, per state.
  exact = exact_conditional_log_likelihood(scorer, family, toy, frozen_sites=1)[support]
  # Rows interleaved: the absorbing bound's times are stratified over the batch.
  rows = np.tile(STATES[support], (256, 1))
  free = np.broadcast_to(np.arange(L) >= 1, rows.shape)
  bounds = np.asarray(scorer.model.conditional_likelihood_bound(
      scorer.params, jnp.asarray(rows), jnp.asarray(free), jax.random.PRNGKey(1),
      scorer.inference_state), np.float64).reshape(256, -1).T
  se = bounds.std(axis=1) / np.sqrt(256)
  assert (bounds.mean(axis=1) < exact + 4 * se + 1e-3).all()
  assert np.all(np.isfinite(bounds))


@pytest.mark.parametrize("family", ["absorbing", "epsilon_hybrid"])
def test_mdlm_conditional_bound_is_exact_in_expectation_for_the_exact_model(family: str) -> None:
  scorer, toy = toy_scorer(family, perturbed=False)
  support = P_DATA > 0
  rows = np.tile(STATES[support], (512, 1))
  free = np.broadcast_to(np.arange(L) >= 1, rows.shape)
  bounds = np.asarray(scorer.model.conditional_likelihood_bound(
      scorer.params, jnp.asarray(rows), jnp.asarray(free), jax.random.PRNGKey(2), {}),
                      np.float64).reshape(512, -1).T
  exact = exact_conditional_log_likelihood(scorer, family, toy, frozen_sites=1)[support]
  se = bounds.std(axis=1) / np.sqrt(512)
  assert (np.abs(bounds.mean(axis=1) - exact) < 5 * se + 1e-3).all()


def test_gamma_hybrid_conditional_bound_stays_below_the_data_conditional() -> None:
  """The gamma-hybrid with its exact concrete-score tables (``test_hybrid_process``), first
  site frozen: averaged over the data, the conditional SEDD bound is at most the data's
  conditional log-likelihood (the model's conditional law is another law, so per state only
  its average is ordered: Gibbs), and within the prior's KL of it."""
  model = test_hybrid_process.gamma_model()
  support = P_DATA > 1e-3  # The integrand is heavy-tailed on states of tiny probability.
  rows = np.tile(STATES[support], (256, 1))
  free = jnp.asarray(np.broadcast_to(np.arange(L) >= 1, rows.shape))
  bounds = np.asarray(model.conditional_likelihood_bound(
      test_hybrid_process.EXACT, jnp.asarray(rows), free, jax.random.PRNGKey(3)),
                      np.float64).reshape(256, -1)
  weights = P_DATA[support] / P_DATA[support].sum()
  data_scorer, data_toy = toy_scorer("absorbing", perturbed=False)  # Its law is P_DATA.
  exact = exact_conditional_log_likelihood(data_scorer, "absorbing", data_toy,
                                           frozen_sites=1)[support]
  weighted = bounds @ weights
  se = weighted.std() / np.sqrt(len(weighted))
  assert weighted.mean() < exact @ weights + 4 * se + 1e-3
  assert weighted.mean() > exact @ weights - 0.5
  assert np.all(np.isfinite(bounds))


@pytest.mark.parametrize("family", ["glauber", "mdlm", "epsilon_hybrid", "gamma_hybrid"])
def test_conditional_bound_with_every_site_free_is_the_bound(family: str) -> None:
  """On the real networks: nothing frozen gives ``likelihood_bound`` draw for draw."""
  vocab = vocabularies.ByteVocabulary()
  if family == "glauber":
    config = network.NetworkConfig(
        vocab_size=vocab.vocab_size, d_model=32, num_heads=2, head_dim=16, d_ff=48,
        num_encoder_layers=1, num_decoder_layers=1, dtype="float32", max_encoder_length=8,
        max_decoder_length=6, time_conditioning=True, time_embed_dim=16)
    model = helpers.glauber_dit(config, vocab, 6, num_rounds=1)
  elif family == "mdlm":
    model = helpers.mdlm(dataclasses.replace(AR_NETWORK, vocab_size=vocab.vocab_size), vocab, 6)
  else:
    gamma = family == "gamma_hybrid"
    config = dataclasses.replace(AR_NETWORK, vocab_size=vocab.vocab_size,
                                 time_conditioning=gamma, time_embed_dim=16)
    process = (hybrid_process.GammaHybridProcess(6) if gamma
               else hybrid_process.EpsilonHybridProcess(6))
    model = models.DiffusionModel(denoiser_networks.SingleStackDenoiser(config, vocab), process)
  params = nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), model.input_shapes(2, {"targets": 6}))["params"])
  tokens = jnp.asarray(3 + np.random.default_rng(0).integers(97, 123, (4, 6)), jnp.int32)
  key = jax.random.PRNGKey(5)
  everything = model.conditional_likelihood_bound(params, tokens, jnp.ones((4, 6), bool), key)
  np.testing.assert_allclose(everything, model.likelihood_bound(params, tokens, key),
                             rtol=1e-5, atol=1e-4)
  prompt = model.conditional_likelihood_bound(params, tokens, jnp.arange(6) >= 2, key)
  assert np.all(np.isfinite(prompt)) and not np.allclose(prompt, everything)


# ---- Multiple choice and LAMBADA for every family ----------------------------------------------


@functools.lru_cache(maxsize=1)
def trained_causal_lm() -> tuple[baselines.CausalLMModel, Any]:
  """A causal LM trained briefly on the toy language's rows (L = 3), built once."""
  model, params = causal_lm(seq_len=L)
  optimizer = optax.adam(1e-2)
  state = optimizer.init(params)

  @jax.jit
  def step(params: Any, state: Any, rng: Any) -> tuple[Any, Any]:
    index = jax.random.choice(rng, len(STATES), (128,), p=jnp.asarray(P_DATA, jnp.float32))
    batch = {"targets": jnp.asarray(STATES)[index]}
    grads = jax.grad(lambda p: model.loss_fn(p, batch, None)[0] / 384.0)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for i in range(150):
    params, state = step(params, state, jax.random.PRNGKey(i))
  return model, params


def letters(state: np.ndarray) -> str:
  return VOCAB.decode(state.tolist())


def contrast_examples() -> list[readers.ChoiceExample]:
  """For each first letter, the likeliest and the least likely two-letter ending of the
  toy language (made far apart by the language: at least 3 nats), in both orders."""
  examples = []
  for first in range(len(LETTER_IDS)):
    rows = np.flatnonzero(STATES[:, 0] == LETTER_IDS[first])
    ranked = rows[np.argsort(P_DATA[rows])]
    best, worst = ranked[-1], ranked[0]
    if P_DATA[worst] > 0 and np.log(P_DATA[best] / P_DATA[worst]) < 3:
      continue
    context = letters(STATES[best][:1])
    endings = (letters(STATES[best][1:]), letters(STATES[worst][1:]))
    examples.append(readers.ChoiceExample((context,) * 2, endings, 0))
    examples.append(readers.ChoiceExample((context,) * 2, endings[::-1], 1))
  return examples


def test_multiple_choice_picks_the_ending_made_likely_by_construction() -> None:
  examples = contrast_examples()
  assert len(examples) >= 4
  scorers = [scoring.Scorer("ar", *trained_causal_lm()),
             toy_scorer("glauber", perturbed=False)[0],
             toy_scorer("absorbing", perturbed=False)[0],
             toy_scorer("epsilon_hybrid", perturbed=False)[0]]
  for scorer in scorers:
    row = scoring.multiple_choice(scorer, examples, num_paths=8, batch_size=8, seed=0)
    assert row["acc"] == 1.0 and row["acc_norm"] == 1.0, scorer.name
    assert row["acc_se"] == 0.0 and row["bound"] == (scorer.name != "ar")
  # Winogrande-style: the same continuation after two contexts; acc_norm is not reported.
  wino = readers.ChoiceExample(("a", "b"), ("ab", "ab"), 0)
  row = scoring.choice_accuracy([np.array([-1.0, -2.0])], [wino])
  assert row["acc"] == 1.0 and row["acc_norm"] is None


def test_lambada_accuracy_is_greedy_decoding_for_the_causal_lm() -> None:
  model, params = trained_causal_lm()
  scorer = scoring.Scorer("ar", model, params)
  tokens = jnp.asarray(STATES[:, :1])
  greedy = np.asarray(model.generate(params, jax.random.PRNGKey(0), len(STATES), tokens,
                                     temperature=0.0))
  rights = [readers.LambadaExample(letters(row[:1]), letters(row[1:])) for row in greedy[::9]]
  wrong = [readers.LambadaExample(example.context, letters(np.asarray(
      [LETTER_IDS[(VOCAB.encode(example.target)[0] - LETTER_IDS[0] + 1) % 3]])))
           for example in rights]
  row = scoring.lambada_accuracy(scorer, rights + wrong, batch_size=4, seed=0)
  assert row["acc"] == 0.5 and row["examples"] == 6
  assert row["acc_se"] == pytest.approx(scoring.standard_error([1, 1, 1, 0, 0, 0]))


def test_standard_error_matches_the_sample_formula() -> None:
  values = [1.0, 0.0, 1.0, 1.0]
  assert scoring.standard_error(values) == pytest.approx(np.std(values, ddof=1) / 2)
  assert scoring.standard_error([1.0]) is None


# ---- The command line ------------------------------------------------------------------------


def test_command_line_pairs_checkpoints_with_their_gin_files_and_labels_bounds() -> None:
  from glauber_jax.zero_shot import __main__ as cli  # pylint: disable=import-outside-toplevel
  specs, bindings, rest = cli.split_models([
      "--task=piqa", "--gin_file=gin/ar_tiny.gin", "--checkpoint=runs/ar", "--gin.SEED=1",
      "--gin_file=gin/mdlm_tiny.gin", "--gin_file=extra.gin", "--checkpoint=runs/mdlm/"])
  assert [(spec.gin_files, spec.name) for spec in specs] == [
      (["gin/ar_tiny.gin"], "ar"), (["gin/mdlm_tiny.gin", "extra.gin"], "mdlm")]
  assert bindings == ["SEED=1"] and rest == ["--task=piqa"]
  assert cli.data_flags(["/x.jsonl"], ["piqa"]) == {"piqa": "/x.jsonl"}
  assert cli.data_flags(["piqa=/x", "siqa=/y"], ["piqa", "siqa"]) == {"piqa": "/x",
                                                                      "siqa": "/y"}
  with pytest.raises(SystemExit, match="--data=TASK=PATH"):
    cli.data_flags(["/x"], ["piqa", "siqa"])
  common = {"tokens": 640, "perplexity_se": None}
  rows = [{"model": "ar", "task": "wikitext2", "relation": "=", "perplexity": 12.5, **common},
          {"model": "mdlm", "task": "wikitext2", "relation": "<=", "perplexity": 20.0,
           **common, "perplexity_se": 0.5},
          {"model": "ar", "task": "piqa", "acc": 0.5, "acc_se": 0.1, "acc_norm": 0.75,
           "acc_norm_se": 0.1}]
  table = cli.format_tables(rows)
  assert "= 12.50" in table and "<= 20.00±0.50" in table and "640 tokens" in table
  assert "piqa acc_norm" in table and "0.750±0.100" in table
