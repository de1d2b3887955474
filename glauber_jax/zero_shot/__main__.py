r"""Zero-shot evaluation of checkpoints on local copies of the standard benchmarks.

    python -m glauber_jax.zero_shot --task=lambada,wikitext2,piqa \
        --data=lambada=/data/lambada_test.jsonl --data=wikitext2=/data/wikitext-2-raw \
        --data=piqa=/data/piqa/valid.jsonl \
        --gin_file=gin/ar_tiny.gin --checkpoint=runs/ar_tiny \
        --gin_file=gin/mdlm_tiny.gin --checkpoint=runs/mdlm_tiny \
        [--num_paths=4] [--batch_size=16] [--max_windows=N] [--max_examples=N] [--seed=0] \
        [--output=zero_shot.jsonl] [--gin.NAME=VALUE ...]

Tasks (``--task``, repeatable or comma-separated): ``lambada`` (perplexity and last-word
accuracy), ``wikitext2``, ``wikitext103``, ``lm1b`` (perplexity), ``winogrande``, ``piqa``,
``siqa``, ``hellaswag`` (multiple choice), and ``shakespeare`` (the bundled corpus's test
split, no file needed). Each task's file comes from ``--data=TASK=PATH`` (``--data=PATH`` when
there is one task), the gin binding ``zero_shot.readers.data_paths.paths``, or its environment
variable (``readers.TASKS``); PIQA's and SIQA's labels file defaults to ``<stem>-labels.lst``
beside it (``$ZERO_SHOT_PIQA_LABELS`` / ``$ZERO_SHOT_SIQA_LABELS`` override).

Models: each ``--checkpoint`` is evaluated with the ``--gin_file``s given since the previous
``--checkpoint`` (``%MODEL`` of the run's gin file); ``--gin.*`` bindings apply to every model.
Prints the Table 2 layout (perplexities, ``<=`` for a diffusion model's bound) and the accuracy
table, and appends one JSON line per model and task to ``--output``. Definitions, policies and
standard errors: ``glauber_jax.zero_shot.scoring`` and ``docs/evaluation.md``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # Run as a module: one copy of the configurables.
  from glauber_jax.zero_shot import __main__ as _entry_point  # pylint: disable=import-self
  sys.exit(_entry_point.main(sys.argv[1:]))

import argparse
import dataclasses
import logging
import os
from typing import Any, Optional, Sequence

import gin

from glauber_jax import corpora, gin_utils, infer, summaries
from glauber_jax.zero_shot import readers, scoring

#: Perplexity tasks whose text is bundled with the library (no file needed).
BUNDLED = ("shakespeare",)
PERPLEXITY_TASKS = ("lambada", "wikitext2", "wikitext103", "lm1b", *BUNDLED)


@dataclasses.dataclass
class ModelSpec:
  """One ``--checkpoint`` and the gin files that configure its model."""

  gin_files: list[str]
  checkpoint: str

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.checkpoint))


@dataclasses.dataclass
class TaskData:
  """A task's loaded data: documents (perplexity), examples (choice / LAMBADA), source."""

  task: str
  source: str
  documents: Optional[list[str]] = None
  choices: Optional[list[readers.ChoiceExample]] = None
  lambada: Optional[list[readers.LambadaExample]] = None


def split_models(argv: Sequence[str]) -> tuple[list[ModelSpec], list[str], list[str]]:
  """``(models, bindings, rest)``: each ``--checkpoint`` with the ``--gin_file``s before it
  (since the previous one), the ``--gin.*`` bindings, the other flags."""
  specs: list[ModelSpec] = []
  pending: list[str] = []
  bindings: list[str] = []
  rest: list[str] = []
  for arg in argv:
    if arg.startswith("--gin_file="):
      pending.append(arg.split("=", 1)[1])
    elif arg.startswith("--checkpoint="):
      if not pending:
        raise SystemExit(f"{arg}: give its --gin_file before it.")
      specs.append(ModelSpec(pending, arg.split("=", 1)[1]))
      pending = []
    elif arg.startswith("--gin."):
      bindings.append(arg[len("--gin."):])
    else:
      rest.append(arg)
  if pending:
    raise SystemExit(f"--gin_file {pending} without a --checkpoint after it.")
  return specs, bindings, rest


def data_flags(values: Sequence[str], tasks: Sequence[str]) -> dict[str, str]:
  """``--data`` values as task to path: ``TASK=PATH``, or a bare ``PATH`` for a single task."""
  paths = {}
  for value in values:
    task, separator, path = value.partition("=")
    if separator and task in readers.TASKS:
      paths[task] = path
    elif len(tasks) == 1:
      paths[tasks[0]] = value
    else:
      raise SystemExit(f"--data={value}: with several tasks write --data=TASK=PATH.")
  return paths


def load_task(task: str, flag_path: Optional[str], max_examples: Optional[int]) -> TaskData:
  """Reads one task's data (``readers``; ``shakespeare``: the bundled test split)."""
  if task == "shakespeare":
    return TaskData(task, "bundled Shakespeare test split",
                    documents=list(corpora.shakespeare_documents("test")))
  path = readers.resolve_path(task, flag_path)
  kind = readers.task_info(task).kind
  if kind == "choice":
    labels = os.environ.get(f"{readers.task_info(task).variable}_LABELS")
    reader = readers.CHOICE_READERS[task]
    examples = reader(path, labels) if task in ("piqa", "siqa") else reader(path)
    return TaskData(task, path, choices=examples[:max_examples])
  data = TaskData(task, path, documents=readers.read_text_set(task, path))
  if kind == "lambada":
    data.lambada = readers.read_lambada(path)[:max_examples]
  return data


def evaluate_model(scorer: scoring.Scorer, data: TaskData, args: argparse.Namespace
                   ) -> dict[str, Any]:
  """The JSON row of one model on one task."""
  row: dict[str, Any] = {"model": scorer.name, "model_class": scorer.model.name,
                         "task": data.task, "data": data.source, "seq_len": scorer.seq_len,
                         "seed": args.seed}
  if data.documents is not None:
    row.update(scoring.perplexity(scorer, data.documents, num_paths=args.num_paths,
                                  batch_size=args.batch_size, seed=args.seed,
                                  max_windows=args.max_windows))
  if data.lambada is not None:
    accuracy = scoring.lambada_accuracy(scorer, data.lambada, batch_size=args.batch_size,
                                        seed=args.seed)
    row.update({f"lambada_{key}" if key == "examples" else key: value
                for key, value in accuracy.items()})
  if data.choices is not None:
    row.update(scoring.multiple_choice(scorer, data.choices, num_paths=args.num_paths,
                                       batch_size=args.batch_size, seed=args.seed))
  logging.info("%s on %s: %s", scorer.name, data.task, row)
  return row


def _number(value: Optional[float], se: Optional[float], digits: int) -> str:
  if value is None:
    return "-"
  text = f"{value:.{digits}f}"
  return text if se is None else f"{text}±{se:.{digits}f}"


def _table(title: str, header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
  cells = [list(header), *map(list, lines)]
  widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
  rendered = ["  ".join(text.ljust(width) if i == 0 else text.rjust(width)
                        for i, (text, width) in enumerate(zip(line, widths))) for line in cells]
  return "\n".join([title, rendered[0], "-" * len(rendered[0]), *rendered[1:]])


def format_tables(rows: Sequence[dict[str, Any]]) -> str:
  """Table 2's layout (a model per line, a perplexity per task; ``<=`` marks a bound, ``±`` the
  Monte-Carlo standard error) and the accuracy table (``acc`` / ``acc_norm`` ± standard
  error), each with the tasks the rows hold."""
  models = list(dict.fromkeys(row["model"] for row in rows))
  by_key = {(row["model"], row["task"]): row for row in rows}
  parts = []
  ppl_tasks = [t for t in dict.fromkeys(row["task"] for row in rows if "perplexity" in row)]
  if ppl_tasks:
    lines = [[model, *(("-" if (model, task) not in by_key else
                        f"{by_key[model, task]['relation']} " + _number(
                            by_key[model, task]["perplexity"],
                            by_key[model, task]["perplexity_se"], 2)) for task in ppl_tasks)]
             for model in models]
    tokens = {task: sorted({by_key[m, task]["tokens"] for m in models if (m, task) in by_key})
              for task in ppl_tasks}
    note = "; ".join(f"{task}: {'/'.join(map(str, count))} tokens"
                     for task, count in tokens.items())
    parts.append(_table(f"Zero-shot perplexity ({note})", ["model", *ppl_tasks], lines))
  acc_columns = [(row["task"], key) for row in rows for key in ("acc", "acc_norm")
                 if row.get(key) is not None]
  acc_columns = list(dict.fromkeys(acc_columns))
  if acc_columns:
    lines = [[model, *(_number(by_key[model, task].get(key), by_key[model, task].get(
        f"{key}_se"), 3) if (model, task) in by_key else "-" for task, key in acc_columns)]
             for model in models]
    parts.append(_table("Zero-shot accuracy (lambada: greedy last word; diffusion models "
                        "score choices with their conditional bound)",
                        ["model", *(f"{task} {key}" for task, key in acc_columns)], lines))
  return "\n\n".join(parts)


def load_scorer(spec: ModelSpec, bindings: Sequence[str], batch_size: int) -> scoring.Scorer:
  """Builds ``%MODEL`` of the spec's gin files and loads its checkpoint."""

  def build() -> scoring.Scorer:
    model = scoring.evaluated_model()  # pylint: disable=no-value-for-parameter
    params, inference_state = infer.load_inference_params(model, spec.checkpoint, batch_size)
    return scoring.Scorer(spec.name, model, params, inference_state)

  gin.clear_config()  # The previous model's configuration; also unlocks it.
  return gin_utils.run_configured(
      spec.gin_files, [*bindings, "glauber_jax.zero_shot.scoring.evaluated_model.model = %MODEL"],
      build)


def main(argv: Sequence[str]) -> None:
  specs, bindings, rest = split_models(argv)
  parser = argparse.ArgumentParser(prog="python -m glauber_jax.zero_shot", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", action="append", required=True,
                      help=f"one of {sorted([*readers.TASKS, *BUNDLED])} (repeatable, or "
                      "comma-separated)")
  parser.add_argument("--data", action="append", default=[], help="TASK=PATH (repeatable)")
  parser.add_argument("--num_paths", type=int, default=4,
                      help="forward paths per window / choice for a diffusion bound")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--max_windows", type=int, help="score only the first N windows")
  parser.add_argument("--max_examples", type=int, help="only the first N examples")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default="zero_shot.jsonl", help="JSON lines appended here")
  args = parser.parse_args(rest)
  task_names = [task for value in args.task for task in value.split(",") if task]
  unknown = sorted(set(task_names) - set(readers.TASKS) - set(BUNDLED))
  if unknown:
    parser.error(f"unknown task(s) {unknown}; the tasks are "
                 f"{sorted([*readers.TASKS, *BUNDLED])}.")
  if not specs:
    parser.error("give at least one --gin_file=... --checkpoint=... pair.")
  if args.num_paths < 1:
    parser.error("--num_paths must be positive.")
  summaries.configure_logging()
  # The task registrations gin files name (MIXTURE_OR_TASK_NAME, the vocabulary): the command
  # line imports them, the library never does.
  import tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  flags = data_flags(args.data, task_names)
  gin_utils.parse_gin([], bindings, skip_unknown=True)  # zero_shot.readers.data_paths.
  try:
    loaded = [load_task(task, flags.get(task), args.max_examples) for task in task_names]
  except readers.DataError as error:
    raise SystemExit(f"data error: {error}") from None
  rows = []
  for spec in specs:
    scorer = load_scorer(spec, bindings, args.batch_size)
    for data in loaded:
      row = evaluate_model(scorer, data, args)
      row.update(gin_files=spec.gin_files, checkpoint=spec.checkpoint)
      rows.append(row)
  print(format_tables(rows), flush=True)
  summaries.write_jsonl(args.output, rows, append=True)
