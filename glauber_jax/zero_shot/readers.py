"""Readers of the zero-shot benchmarks' published files, from local paths only.

Nothing is downloaded: each task's file comes from ``--data`` (``python -m
glauber_jax.zero_shot``), else the gin binding ``zero_shot.readers.data_paths``, else the
task's environment variable (``TASKS[name].variable``); a missing file is one error naming all
three. The formats are the ones the datasets are published in:

- ``lambada``: the OpenAI LAMBADA test JSONL (``lambada_test.jsonl``), ``{"text": ...}`` per
  line; the target is the last whitespace-separated word.
- ``wikitext2`` / ``wikitext103``: the raw token files (``wiki.test.raw`` of
  ``wikitext-2-raw-v1`` / ``wikitext-103-raw-v1``), or their directory; one document per
  top-level heading (`` = Title = ``).
- ``lm1b``: One Billion Words' held-out shards (``heldout-monolingual.tokenized.shuffled/
  news.en.heldout-000NN-of-00050``), one tokenised sentence per line: a shard file, or the
  directory (every ``news.en.heldout-*`` file in name order); one document per sentence.
- ``winogrande``: JSONL with ``sentence`` (one ``_``), ``option1``, ``option2``, ``answer``
  (``"1"``/``"2"``), e.g. ``dev.jsonl``.
- ``piqa``: JSONL with ``goal``, ``sol1``, ``sol2`` (``valid.jsonl``) and the labels file,
  one ``0``/``1`` per line (``valid-labels.lst``; default: ``<stem>-labels.lst`` beside it).
- ``siqa``: JSONL with ``context``, ``question``, ``answerA``/``B``/``C`` (``dev.jsonl``)
  and its labels, one ``1``/``2``/``3`` per line (``dev-labels.lst``).
- ``hellaswag``: JSONL with ``activity_label``, ``ctx_a``, ``ctx_b``, ``endings`` (four) and
  ``label`` (``hellaswag_val.jsonl``).

Multiple-choice examples are turned into ``(context, continuation)`` pairs as
lm-evaluation-harness does (its prompts, its HellaSwag clean-up, Winogrande's partial scoring:
the option is substituted into the sentence and the rest of the sentence is scored).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import gin

from glauber_jax.zero_shot import detokenizers


class DataError(ValueError):
  """A benchmark file is absent or malformed; the message names the file (and line)."""


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
  """One multiple-choice question: choice ``i`` is ``contexts[i] + continuations[i]``.

  Attributes:
    contexts: the conditioning text of each choice (the same for all but Winogrande's).
    continuations: the scored text of each choice (the same for all Winogrande's).
    label: the index of the right choice.
  """

  contexts: tuple[str, ...]
  continuations: tuple[str, ...]
  label: int


@dataclasses.dataclass(frozen=True)
class LambadaExample:
  """A LAMBADA passage: ``context`` and its last word ``target`` (with its leading space)."""

  context: str
  target: str

  @property
  def text(self) -> str:
    return self.context + self.target


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """How a task's data is found and what it is.

  Attributes:
    kind: ``perplexity`` (a text set), ``lambada`` (both) or ``choice`` (multiple choice).
    variable: the environment variable naming the file.
    expected: what the path should be, for error messages.
    detokenizer: the name of the detokeniser its text goes through (``detokenizers``).
  """

  kind: str
  variable: str
  expected: str
  detokenizer: str = "none"


TASKS: dict[str, TaskInfo] = {
    "lambada": TaskInfo("lambada", "ZERO_SHOT_LAMBADA", "lambada_test.jsonl (OpenAI)",
                        "lambada"),
    "wikitext2": TaskInfo("perplexity", "ZERO_SHOT_WIKITEXT2",
                          "wikitext-2-raw/wiki.test.raw or its directory", "wikitext"),
    "wikitext103": TaskInfo("perplexity", "ZERO_SHOT_WIKITEXT103",
                            "wikitext-103-raw/wiki.test.raw or its directory", "wikitext"),
    "lm1b": TaskInfo("perplexity", "ZERO_SHOT_LM1B",
                     "a news.en.heldout-*-of-00050 shard or the heldout directory", "lm1b"),
    "winogrande": TaskInfo("choice", "ZERO_SHOT_WINOGRANDE", "winogrande dev.jsonl"),
    "piqa": TaskInfo("choice", "ZERO_SHOT_PIQA", "piqa valid.jsonl (+ valid-labels.lst)"),
    "siqa": TaskInfo("choice", "ZERO_SHOT_SIQA", "socialiqa dev.jsonl (+ dev-labels.lst)"),
    "hellaswag": TaskInfo("choice", "ZERO_SHOT_HELLASWAG", "hellaswag_val.jsonl"),
}


def task_info(task: str) -> TaskInfo:
  """``TASKS[task]``; ValueError names the known tasks."""
  if task not in TASKS:
    raise ValueError(f"unknown zero-shot task {task!r}; the tasks are {sorted(TASKS)}.")
  return TASKS[task]


@gin.configurable
def data_paths(paths: Optional[Mapping[str, str]] = None) -> dict[str, str]:
  """Task name to data path, from gin (``zero_shot.readers.data_paths.paths = {...}``)."""
  return dict(paths or {})


def resolve_path(task: str, flag_path: Optional[str] = None) -> str:
  """The data path of ``task``: ``flag_path`` (``--data``), else gin's ``data_paths``, else
  ``$<variable>``; DataError names the three ways to give it when none names an existing
  file or directory."""
  info = task_info(task)
  path = flag_path or data_paths().get(task) or os.environ.get(info.variable)
  if not path or not os.path.exists(path):
    where = f"{path!r} does not exist" if path else "no path given"
    raise DataError(
        f"{task}: {where}. Give your local copy of {info.expected} with "
        f"--data={task}=PATH, the gin binding zero_shot.readers.data_paths.paths = "
        f"{{'{task}': PATH}}, or the environment variable {info.variable}=PATH.")
  return path


# ---- Line readers -------------------------------------------------------------------------


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file.")
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      yield number, line.rstrip("\n")


def read_jsonl(path: str, fields: Mapping[str, type]) -> list[dict[str, Any]]:
  """The objects of a JSONL file, each with ``fields`` of the given types; DataError names the
  file and line of a line that is not such an object, or a file without any."""
  records = []
  for number, line in _read_lines(path):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise DataError(f"{path}:{number}: not a JSON object ({error.msg}).") from None
    if not isinstance(record, dict):
      raise DataError(f"{path}:{number}: not a JSON object.")
    for name, kind in fields.items():
      if not isinstance(record.get(name), kind):
        raise DataError(f"{path}:{number}: field {name!r} is missing or not "
                        f"{kind.__name__}.")
    records.append(record)
  if not records:
    raise DataError(f"{path}: no record.")
  return records


def read_labels(path: str, choices: Sequence[str], count: int) -> list[int]:
  """The labels file (one label per line among ``choices``) as indices; it must hold
  ``count`` lines (one per example)."""
  labels = []
  for number, line in _read_lines(path):
    if line.strip() not in choices:
      raise DataError(f"{path}:{number}: label {line.strip()!r} is not one of {list(choices)}.")
    labels.append(choices.index(line.strip()))
  if len(labels) != count:
    raise DataError(f"{path}: {len(labels)} labels for {count} examples.")
  return labels


def labels_path(data_path: str) -> str:
  """The published labels file beside a JSONL file: ``valid.jsonl`` -> ``valid-labels.lst``."""
  stem, _ = os.path.splitext(data_path)
  return f"{stem}-labels.lst"


# ---- Text sets ----------------------------------------------------------------------------

_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def read_wikitext(path: str) -> list[str]:
  """The articles of a WikiText raw file (or ``wiki.test.raw`` in a directory), raw."""
  if os.path.isdir(path):
    path = os.path.join(path, "wiki.test.raw")
  articles: list[list[str]] = []
  for number, line in _read_lines(path):
    if _WIKITEXT_TITLE.match(line):
      articles.append([])
    elif not articles and line.strip():
      raise DataError(f"{path}:{number}: text before the first ' = Title = ' heading: not a "
                      "WikiText raw file.")
    if articles:
      articles[-1].append(line)
  if not articles:
    raise DataError(f"{path}: no ' = Title = ' heading: not a WikiText raw file.")
  return ["\n".join(lines).strip("\n") for lines in articles]


def read_lm1b(path: str) -> list[str]:
  """The sentences of a One Billion Words held-out shard, or of every shard of a directory."""
  files = (sorted(glob.glob(os.path.join(path, "news.en.heldout-*"))) if os.path.isdir(path)
           else [path])
  if not files:
    raise DataError(f"{path}: no news.en.heldout-* shard in this directory.")
  sentences = []
  for shard in files:
    for number, line in _read_lines(shard):
      if "\t" in line:
        raise DataError(f"{shard}:{number}: a tab: not a tokenised One Billion Words shard.")
      if line.strip():
        sentences.append(line.strip())
  if not sentences:
    raise DataError(f"{path}: no sentence.")
  return sentences


def read_lambada(path: str) -> list[LambadaExample]:
  """LAMBADA passages, detokenised, split into context and last word (lm-evaluation-harness's
  split)."""
  examples = []
  for number, record in enumerate(read_jsonl(path, {"text": str}), 1):
    text = detokenizers.lambada(record["text"])
    if " " not in text:
      raise DataError(f"{path}: record {number} has no last word to predict.")
    context, word = text.rsplit(" ", 1)
    examples.append(LambadaExample(context, " " + word))
  return examples


def read_text_set(task: str, path: str) -> list[str]:
  """The documents of a perplexity task, detokenised (``detokenizers``)."""
  if task == "lambada":
    raw = [example.text for example in read_lambada(path)]
  elif task in ("wikitext2", "wikitext103"):
    raw = read_wikitext(path)
  elif task == "lm1b":
    raw = read_lm1b(path)
  else:
    raise ValueError(f"{task} is not a perplexity task.")
  detokenize = detokenizers.get(task_info(task).detokenizer)
  return [detokenize(document) for document in raw]


# ---- Multiple choice ----------------------------------------------------------------------


def read_winogrande(path: str) -> list[ChoiceExample]:
  """Winogrande with partial scoring: context = the sentence up to ``_`` with the option in
  its place, continuation = the rest of the sentence (the same for both options)."""
  examples = []
  fields = {"sentence": str, "option1": str, "option2": str, "answer": str}
  for number, record in enumerate(read_jsonl(path, fields), 1):
    sentence = record["sentence"]
    if sentence.count("_") != 1 or record["answer"] not in ("1", "2"):
      raise DataError(f"{path}: record {number} needs one '_' in its sentence and answer "
                      "'1' or '2'.")
    before, after = sentence.split("_")
    contexts = tuple(before + record[f"option{i}"] for i in (1, 2))
    continuation = " " + after.strip()
    examples.append(ChoiceExample(contexts, (continuation, continuation),
                                  int(record["answer"]) - 1))
  return examples


def read_piqa(path: str, labels: Optional[str] = None) -> list[ChoiceExample]:
  """PIQA: ``Question: <goal>\\nAnswer:`` then `` <sol>``; labels from ``labels`` (default
  ``labels_path(path)``)."""
  records = read_jsonl(path, {"goal": str, "sol1": str, "sol2": str})
  answers = read_labels(labels or labels_path(path), ("0", "1"), len(records))
  return [ChoiceExample((f"Question: {r['goal']}\nAnswer:",) * 2,
                        (" " + r["sol1"], " " + r["sol2"]), label)
          for r, label in zip(records, answers)]


def read_siqa(path: str, labels: Optional[str] = None) -> list[ChoiceExample]:
  """Social IQa: ``Q: <context> <question>\\nA:`` then `` <answer>``; labels ``1``-``3``."""
  records = read_jsonl(path, {"context": str, "question": str, "answerA": str,
                              "answerB": str, "answerC": str})
  answers = read_labels(labels or labels_path(path), ("1", "2", "3"), len(records))
  return [ChoiceExample((f"Q: {r['context']} {r['question']}\nA:",) * 3,
                        tuple(" " + r[f"answer{c}"] for c in "ABC"), label)
          for r, label in zip(records, answers)]


def _hellaswag_clean(text: str) -> str:
  """lm-evaluation-harness's HellaSwag clean-up of WikiHow markup."""
  text = text.strip().replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  return text.replace("  ", " ")


def read_hellaswag(path: str) -> list[ChoiceExample]:
  """HellaSwag: ``<activity>: <ctx_a> <Ctx_b>`` then `` <ending>``, cleaned."""
  examples = []
  fields = {"activity_label": str, "ctx_a": str, "ctx_b": str, "endings": list, "label": int}
  for number, record in enumerate(read_jsonl(path, fields), 1):
    endings = record["endings"]
    if not endings or not 0 <= record["label"] < len(endings):
      raise DataError(f"{path}: record {number} has label {record['label']} for "
                      f"{len(endings)} endings.")
    context = _hellaswag_clean(
        f"{record['activity_label']}: {record['ctx_a']} {record['ctx_b'].capitalize()}")
    examples.append(ChoiceExample((context,) * len(endings),
                                  tuple(" " + _hellaswag_clean(e) for e in endings),
                                  record["label"]))
  return examples


CHOICE_READERS: dict[str, Callable[..., list[ChoiceExample]]] = {
    "winogrande": read_winogrande, "piqa": read_piqa, "siqa": read_siqa,
    "hellaswag": read_hellaswag,
}
