r"""Scores sample files written by ``glauber_jax.infer``: diversity, judge perplexity, MAUVE.

    python -m glauber_jax.eval --samples=runs/x/infer_sample.jsonl [--samples=...] \
        [--judge_hf=/models/gpt2-large | --judge_gin=gin/judge_tiny.gin \
         --judge_checkpoint=runs/judge_tiny [--gin.NAME=VALUE ...]] \
        [--reference_file=held_out.txt] [--mauve_features=/models/gpt2-large] \
        [--puzzles=sudoku_validation.jsonl] [--synthetic=hmm|enum [--gin.NAME=VALUE ...]] \
        [--drafts=runs/x/infer_sample.jsonl ...] [--batch_size=8] [--output=results.jsonl]

For each samples file (one row each): the token entropy and corpus entropy and distinct-1..4 of
the samples' own token ids, the judge's generative perplexity of their texts (re-tokenised by
the judge) when a judge is given, and MAUVE against ``--reference_file`` when that, the
``mauve-text`` package and a feature model (``--mauve_features``, default the ``--judge_hf``
directory) are there, and the puzzle exact-solve rate and cell accuracy when ``--puzzles``
names the puzzle file (``python -m tasks.puzzles``) the samples were prompted with
(``infer.prompts_file``), and the exact judge of a synthetic language when ``--synthetic``
names it (``hmm``: the language of ``synthetic_lm``; ``enum``: of ``synthetic_enum_lm``; both
as the gin bindings configure them, ``synthetic_judge.exact_judge_row``): the samples' exact NLL
against data's, and for ``enum`` the total variation to the exact distribution with its noise
floor. ``--drafts`` adds a row for a Glauber samples file's CAUSAL-GEN drafts, the same
samples before their rounds, under the same judges. Prints a table and appends one JSON line
per row to ``--output``
(default ``eval.jsonl`` beside the first samples file). Definitions: ``glauber_jax.metrics``
and ``docs/evaluation.md``.

Judges: ``--judge_hf`` is any local Hugging Face causal LM directory (torch and transformers
needed); ``--judge_gin`` builds ``%MODEL`` of a gin file (``gin/judge_tiny.gin``: a
``baselines.CausalLMModel``) and loads its parameters from ``--judge_checkpoint``.

References (``--reference_file``): a ``.jsonl`` file with a ``text`` field per line, or a text
file whose documents are separated by blank lines.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # Run as glauber_jax.eval, so gin sees one module.
  from glauber_jax import eval as _entry_point
  sys.exit(_entry_point.main(sys.argv[1:]))

import argparse
import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Optional, Protocol, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import (checkpoints, errors, gin_utils, metrics, models, summaries, synthetic,
                         synthetic_judge, vocabularies)

DISTINCT_NS = (1, 2, 3, 4)
SYNTHETIC_KINDS = synthetic.KINDS

#: ``token_ids per sample -> columns``: the exact judge of a synthetic language.
ExactJudge = Callable[[Sequence[Sequence[int]]], dict[str, Any]]


# ---- Inputs ------------------------------------------------------------------------------------


def read_samples(path: str) -> list[dict[str, Any]]:
  """The records of an ``infer`` samples file (each with ``text`` and ``token_ids``)."""
  return summaries.read_jsonl(path, ("text", "token_ids"),
                              "a samples file of `glauber_jax.infer --mode=sample|causal`")


def read_references(path: str) -> list[str]:
  """Reference texts: ``text`` fields of a JSONL file, or blank-line-separated documents."""
  if path.endswith(".jsonl"):
    texts = [record["text"] for record in summaries.read_jsonl(path, ("text",),
                                                               "a JSONL reference file")]
  else:
    texts = [doc.strip() for doc in summaries.read_utf8(path).split("\n\n")]
  texts = [text for text in texts if text]
  if not texts:
    raise ValueError(f"{path} holds no reference text.")
  return texts


# ---- Judges ------------------------------------------------------------------------------------


@gin.configurable
def judge_model(model: models.BaseModel = gin.REQUIRED) -> models.BaseModel:
  """The judge's model: ``%MODEL`` of the judge's gin file (bound by ``gin_judge``)."""
  return model


def load_judge_params(model: models.BaseModel, checkpoint: str) -> Any:
  """The parameters of ``checkpoint`` (a run's model dir) for ``model``, on one device.

  Unlike ``infer.load_inference_params`` there is no fallback: a judge missing any parameter
  is an error (``checkpoints.CheckpointError``).
  """
  shapes = model.input_shapes(1, {"targets": model.seq_len})
  abstract = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          nn.meta.unbox(abstract["params"]))
  return checkpoints.load_params(checkpoint, abstract)


def model_judge(model: models.BaseModel, params: Any, name: str) -> metrics.ModelJudge:
  """A ``ModelJudge`` on ``model.score_batch`` (which must return ``log p`` of any length up to
  ``model.seq_len``, as ``baselines.CausalLMModel``'s does), with the model's vocabulary."""
  for attribute in ("vocabulary", "seq_len"):
    if not hasattr(model, attribute):
      raise ValueError(f"{type(model).__name__} has no {attribute}: a judge must be a "
                       "single-stack model such as baselines.CausalLMModel.")

  def score_fn(token_ids: np.ndarray) -> np.ndarray:
    return np.asarray(model.score_batch(params, {"targets": jnp.asarray(token_ids)}))

  return metrics.ModelJudge(score_fn, model.vocabulary, model.seq_len, name=name)


def gin_judge(gin_files: Sequence[str], bindings: Sequence[str], checkpoint: str
              ) -> metrics.ModelJudge:
  """Builds ``%MODEL`` of ``gin_files`` (with ``bindings``) and loads it from ``checkpoint``.

  Exits with the message for configuration and checkpoint errors (``gin_utils.run_configured``).
  """

  def build() -> metrics.ModelJudge:
    model = judge_model()  # pylint: disable=no-value-for-parameter
    params = load_judge_params(model, checkpoint)
    return model_judge(model, params, os.path.basename(os.path.normpath(checkpoint)))

  return gin_utils.run_configured(
      gin_files, [*bindings, "glauber_jax.eval.judge_model.model = %MODEL"], build)


# ---- Evaluation --------------------------------------------------------------------------------


def _distinct_or_none(token_lists: Sequence[Sequence[int]], n: int) -> Optional[float]:
  try:
    return metrics.distinct_n(token_lists, n)
  except ValueError:  # Every sample shorter than n.
    return None


def evaluate_file(path: str, judge: Optional[metrics.Judge] = None, batch_size: int = 8,
                  references: Optional[Sequence[str]] = None,
                  mauve_features: Optional[str] = None,
                  reference_features: Optional[np.ndarray] = None,
                  device: str = "cpu",
                  puzzles: Optional[PuzzleScorer] = None,
                  exact_judge: Optional[ExactJudge] = None,
                  drafts: bool = False) -> dict[str, Any]:
  """One result row (JSON-ready) for the samples file at ``path``; MAUVE when ``references``
  are given (``reference_features``: their precomputed ``metrics.featurize`` features);
  puzzle scores when ``puzzles`` is (``PuzzleScorer.row``); the exact judge's columns
  when ``exact_judge`` is (``synthetic_exact_judge``).

  ``drafts`` scores the records' CAUSAL-GEN drafts (``causal_draft``, ``causal_draft_ids``:
  what a Glauber sample was before its rounds) in place of their final texts; the row's
  ``file`` is ``path`` with `` (drafts)`` appended and its ``mode`` is ``draft``."""
  records = read_samples(path)
  settings = records[0].get("settings", {})
  mode = settings.get("mode")
  if drafts:
    if any("causal_draft_ids" not in record for record in records):
      raise ValueError(f"{path}: --drafts needs the causal_draft fields that `infer "
                       "--mode=sample` writes for Glauber samples.")
    records = [{**record, "text": record["causal_draft"],
                "token_ids": record["causal_draft_ids"]} for record in records]
    mode = "draft"
  token_lists = [record["token_ids"] for record in records]
  texts = [record["text"] for record in records]
  row: dict[str, Any] = {
      "file": f"{path} (drafts)" if drafts else path, "model": settings.get("model"),
      "mode": mode,
      "num_rounds": settings.get("num_rounds"), "settings": settings,
      "num_samples": len(records),
      "token_entropy": metrics.token_entropy(token_lists),
      "corpus_token_entropy": metrics.corpus_token_entropy(token_lists),
      **{f"distinct_{n}": _distinct_or_none(token_lists, n) for n in DISTINCT_NS},
  }
  if judge is not None:
    result = metrics.generative_perplexity(texts, judge, batch_size)
    row.update(judge=result["judge"], gen_ppl=result["gen_ppl"],
               judge_nats_per_token=result["nats_per_token"], judge_tokens=result["num_tokens"])
  if references is not None:
    row["mauve"] = metrics.mauve_score(texts, references, mauve_features,
                                       reference_features=reference_features, device=device)
    if row["mauve"] is None:
      row["mauve_skipped"] = metrics.mauve_unavailable_reason(mauve_features)
  if puzzles is not None:
    row.update(puzzles.row(records, path))
  if exact_judge is not None:
    try:
      row.update(exact_judge(token_lists))
    except ValueError as error:
      raise ValueError(f"{path}: {error}") from None
  logging.info("%s: %d samples evaluated", path, len(records))
  return row


class PuzzleTasks(metrics.PuzzleRules, Protocol):
  """What scoring ``--puzzles`` needs of the puzzle tasks: the module ``tasks.puzzles`` (``main``
  imports it and passes it in, as the library does not import the task registrations).

  ``read_prompt_file(path)`` gives the puzzle examples (each with ``kind`` and ``puzzle``, the
  prompt) of a file of ``python -m tasks.puzzles``; ``extract_answer(kind, continuation)`` the
  answer in a sample's continuation of a puzzle prompt.
  """

  def read_prompt_file(self, path: str) -> Sequence[Any]: ...

  def extract_answer(self, kind: str, continuation: str) -> str: ...


class PuzzleScorer:
  """Scores the samples prompted with the puzzles of one puzzle file (``infer.prompts_file``).

  Attributes:
    path: the puzzle file (``python -m tasks.puzzles`` wrote it).
    puzzle_tasks: reads the file and checks answers (``tasks.puzzles``).
    by_prompt: the file's puzzle examples by prompt.
  """

  def __init__(self, path: str, puzzle_tasks: PuzzleTasks) -> None:
    self.path, self.puzzle_tasks = path, puzzle_tasks
    self.by_prompt = {example.puzzle: example for example in puzzle_tasks.read_prompt_file(path)}

  def row(self, records: Sequence[dict[str, Any]], path: str) -> dict[str, Any]:
    """Exact-solve rate and cell accuracy of the samples (of the file at ``path``) whose prompt
    is one of the puzzles; the answer is read from each sample's continuation by
    ``puzzle_tasks.extract_answer``."""
    scored = [(self.by_prompt[record["prompt"]], record) for record in records
              if record.get("prompt") in self.by_prompt]
    if not scored:
      raise ValueError(f"{path}: no sample was prompted with one of the --puzzles (sample them "
                       "with --gin.infer.prompts_file set to the same puzzle file).")
    if any("continuation" not in record for _, record in scored):
      raise ValueError(f"{path}: samples lack 'continuation'; sample them again with this "
                       "version of glauber_jax.infer.")
    result = metrics.puzzle_scores(
        [example for example, _ in scored],
        [self.puzzle_tasks.extract_answer(example.kind, record["continuation"])
         for example, record in scored], self.puzzle_tasks)
    return {"exact_solve": result["exact_solve"], "cell_accuracy": result["cell_accuracy"],
            "puzzles_scored": result["num_examples"]}


def synthetic_exact_judge(config: synthetic.SyntheticConfig,
                          vocabulary: vocabularies.Vocabulary, seed: int = 0
                          ) -> tuple[ExactJudge, dict[str, Any]]:
  """The exact judge of the synthetic language ``config`` names, and the row fields naming it
  (``synthetic``, ``synthetic_config``).

  ``main`` passes the current gin configuration of the tasks' language and their
  ``LetterVocabulary`` (``tasks.registry.synthetic_config`` and ``synthetic_vocabulary``);
  samples are read as token ids of ``vocabulary``.
  """
  judge = functools.partial(synthetic_judge.exact_judge_row, language=config.language(),
                            vocabulary=vocabulary, enumerable=config.kind == "enum", seed=seed)
  return judge, {"synthetic": config.kind, "synthetic_config": dataclasses.asdict(config)}


def _cell(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
  return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A fixed-width table, one line per row (MAUVE's column only when some row has it)."""
  columns = [("file", "file"), ("mode", "mode"), ("num_rounds", "rounds"),
             ("num_samples", "#samples"), ("gen_ppl", "gen-PPL"), ("token_entropy", "entropy"),
             *((f"distinct_{n}", f"dist-{n}") for n in DISTINCT_NS)]
  if any(row.get("mauve") is not None for row in rows):
    columns.append(("mauve", "MAUVE"))
  if any("exact_solve" in row for row in rows):
    columns += [("exact_solve", "solved"), ("cell_accuracy", "cell-acc")]
  if any("true_nll" in row for row in rows):
    columns += [("invalid_fraction", "invalid"), ("true_nll", "true-NLL"),
                ("data_nll", "data-NLL"), ("data_entropy", "data-entropy")]
  if any("tv" in row for row in rows):
    columns += [("tv", "TV"), ("tv_noise", "TV-noise")]
  cells = [[title for _, title in columns]]
  cells += [[_cell(row.get(key)) for key, _ in columns] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
  lines = ["  ".join(text.ljust(width) if i == 0 else text.rjust(width)
                     for i, (text, width) in enumerate(zip(line, widths))) for line in cells]
  return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def evaluate(samples: Sequence[str], output: str, judge: Optional[metrics.Judge] = None,
             batch_size: int = 8, reference_file: Optional[str] = None,
             mauve_features: Optional[str] = None, device: str = "cpu",
             puzzles: Optional[PuzzleScorer] = None,
             synthetic_judge: Optional[tuple[ExactJudge, dict[str, Any]]] = None,
             drafts: Sequence[str] = ()) -> list[dict[str, Any]]:
  """Evaluates every samples file, prints the table, appends the rows to ``output``.

  ``puzzles`` adds the scores of the samples prompted with its puzzles; ``synthetic_judge``
  (``synthetic_exact_judge``'s judge and row fields) the exact judge of a synthetic
  language; ``drafts`` (Glauber samples files) a row each for their CAUSAL-GEN drafts."""
  references = read_references(reference_file) if reference_file else None
  exact_judge, synthetic_fields = synthetic_judge or (None, {})
  reference_features = None
  if references is not None and metrics.mauve_unavailable_reason(mauve_features) is None:
    reference_features = metrics.featurize(references, mauve_features, device=device)
  rows = [evaluate_file(path, judge, batch_size, references, mauve_features,
                        reference_features, device, puzzles, exact_judge, drafts=is_draft)
          for path, is_draft in [*((path, False) for path in samples),
                                 *((path, True) for path in drafts)]]
  for row in rows:
    row.update(synthetic_fields)
    if reference_file:
      row["reference_file"] = reference_file
    if puzzles is not None:
      row["puzzle_file"] = puzzles.path
  print(format_table(rows), flush=True)
  summaries.write_jsonl(output, rows, append=True)
  return rows


def main(argv: Sequence[str]) -> None:
  gin_files, bindings, rest = gin_utils.split_gin_args(
      [arg.replace("--judge_gin", "--gin_file", 1) if arg.startswith("--judge_gin") else arg
       for arg in argv])
  parser = argparse.ArgumentParser(prog="python -m glauber_jax.eval", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--samples", action="append", required=True,
                      help="an infer samples JSONL file (repeatable)")
  parser.add_argument("--drafts", action="append", default=[],
                      help="a Glauber samples file whose CAUSAL-GEN drafts (before the rounds) "
                      "get a row of their own (repeatable)")
  parser.add_argument("--judge_hf", help="a local Hugging Face causal LM directory")
  parser.add_argument("--judge_checkpoint", help="the --judge_gin model's run directory")
  parser.add_argument("--reference_file", help="human texts for MAUVE")
  parser.add_argument("--mauve_features", help="MAUVE's feature model (default: --judge_hf)")
  parser.add_argument("--puzzles", help="a puzzle file of `python -m tasks.puzzles`: score the "
                      "samples prompted with its puzzles")
  parser.add_argument("--synthetic", choices=SYNTHETIC_KINDS,
                      help="score against the exact synthetic language the samples' model was "
                      "trained on: hmm (synthetic_lm) or enum (synthetic_enum_lm); "
                      "--gin.synthetic_language_config.* / synthetic_enum_config.* bindings "
                      "must match the training run's")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--device", default="cpu", help="torch device of the HF judge / MAUVE")
  parser.add_argument("--output", help="JSON lines appended here")
  args = parser.parse_args(rest)
  if args.judge_hf and gin_files:
    parser.error("give one judge: --judge_hf or --judge_gin.")
  if bool(gin_files) != bool(args.judge_checkpoint):
    parser.error("--judge_gin and --judge_checkpoint go together.")
  if bindings and not gin_files and not args.synthetic:
    parser.error("--gin.* bindings configure the --judge_gin model or the --synthetic "
                 "language; give --judge_gin or --synthetic.")
  missing = [path for path in [*args.samples, *args.drafts, args.puzzles or ""] if path and
             not os.path.isfile(path)]
  if missing:
    parser.error(f"no such file: {', '.join(missing)}.")
  summaries.configure_logging()
  # Registers the tasks before gin reads the bindings that name them (the judge's task, the
  # synthetic language), and brings the puzzle and synthetic tasks' helpers: the command line
  # imports the task registrations, the library never does.
  from tasks import puzzles, registry  # pylint: disable=import-outside-toplevel
  judge: Optional[metrics.Judge] = None
  if args.judge_hf:
    try:
      judge = metrics.HuggingFaceJudge(args.judge_hf, device=args.device)
    except (ImportError, FileNotFoundError, ValueError) as error:
      raise SystemExit(f"judge error: {error}") from None
  elif gin_files:
    judge = gin_judge(gin_files, bindings, args.judge_checkpoint)
  if args.synthetic and not gin_files:  # A judge's gin parse above read the bindings too.
    gin_utils.run_configured([], bindings, lambda: None)
  output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.samples[0])),
                                       "eval.jsonl")
  try:
    scorer = PuzzleScorer(args.puzzles, puzzles) if args.puzzles else None
    synthetic_judge = (synthetic_exact_judge(registry.synthetic_config(args.synthetic),
                                             registry.synthetic_vocabulary(args.synthetic))
                       if args.synthetic else None)
    evaluate(args.samples, output, judge, args.batch_size, args.reference_file,
             args.mauve_features or args.judge_hf, args.device, scorer, synthetic_judge,
             args.drafts)
  except ValueError as error:  # Bad samples or puzzle files: the message names the file.
    if errors.debug_enabled():
      raise
    raise SystemExit(f"eval error: {error}") from None
