"""Logic puzzles (Sudoku, Zebra) as text-to-text tasks, after Kim et al. (2025).

Pure Python/numpy: nothing here imports TensorFlow or seqio. The common interface
is :class:`PuzzleExample` plus :func:`build_examples`, the formats
:func:`to_text_pair` and :func:`to_document`, the prompt files
(:func:`write_prompt_file`, :func:`read_prompt_file`; ``python -m tasks.puzzles``
writes one), :func:`extract_answer` and the metrics :func:`exact_solve`,
:func:`cell_accuracy` and :func:`evaluate`; the
per-puzzle modules :mod:`tasks.puzzles.sudoku` and :mod:`tasks.puzzles.zebra`
hold the solvers, generators and formats. See ``docs/puzzles.md``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence

from glauber_jax import errors, summaries
from tasks.puzzles import sudoku, zebra
from tasks.puzzles.splits import SPLITS

PUZZLE_KINDS = ("sudoku", "zebra")


@dataclasses.dataclass(frozen=True)
class PuzzleExample:
    """One puzzle: its kind, the puzzle text and the hidden solution text."""

    kind: str
    puzzle: str
    solution: str


def build_examples(
    kind: str, split: str, num_examples: int, seed: int = 0, **options: object
) -> Iterator[PuzzleExample]:
    """Generates examples of one kind and split.

    ``options`` go to :func:`sudoku.sudoku_examples` (``difficulty``,
    ``num_givens``) or :func:`zebra.zebra_examples` (``num_houses``,
    ``num_attributes``).
    """
    builders = {"sudoku": sudoku.sudoku_examples, "zebra": zebra.zebra_examples}
    if kind not in builders:
        raise ValueError(f"kind must be one of {PUZZLE_KINDS}, got {kind!r}")
    for example in builders[kind](split, num_examples, seed, **options):
        yield PuzzleExample(kind, example["puzzle"], example["solution"])


def to_text_pair(example: PuzzleExample) -> tuple[str, str]:
    """The ``(inputs, targets)`` texts a model is trained on: the puzzle and its solution."""
    return example.puzzle, example.solution


def to_document(example: PuzzleExample) -> str:
    """The puzzle and its solution as one document, for language-model tasks: a model given
    the puzzle as its prefix continues with the solution (see :func:`extract_answer`)."""
    return example.puzzle + example.solution


def extract_answer(kind: str, continuation: str) -> str:
    """The answer in a model's ``continuation`` of a puzzle prefix: the text before the first
    blank line (``glauber_jax.infer`` writes EOS as one); for Sudoku, whose answers have a
    fixed length, its first 81 non-space characters."""
    answer = continuation.split("\n\n", 1)[0]
    if kind == "sudoku":
        return sudoku.normalize_prediction(answer)[: sudoku.NUM_CELLS]
    return answer


def write_prompt_file(path: str, examples: Sequence[PuzzleExample]) -> None:
    """Writes one JSON line per example (``kind``, ``prompt`` = the puzzle, ``solution``):
    the ``prompts_file`` of ``glauber_jax.infer`` and the ``--puzzles`` of
    ``glauber_jax.eval``."""
    with open(path, "w", encoding="utf-8") as f:
        for example in examples:
            record = {"kind": example.kind, "prompt": example.puzzle, "solution": example.solution}
            f.write(json.dumps(record) + "\n")


def read_prompt_file(path: str) -> list[PuzzleExample]:
    """The examples of a file written by :func:`write_prompt_file`; a malformed file is a
    ``glauber_jax.errors.DataError`` naming the file and line."""
    records = summaries.read_jsonl(path, ("kind", "prompt", "solution"),
                                   "a puzzle file of `python -m tasks.puzzles`")
    examples = []
    for record in records:
        if record["kind"] not in PUZZLE_KINDS:
            raise errors.DataError(f"{path}: kind {record['kind']!r} not in {PUZZLE_KINDS}.")
        examples.append(PuzzleExample(record["kind"], record["prompt"], record["solution"]))
    return examples


def exact_solve(example: PuzzleExample, prediction: str) -> bool:
    """Whether ``prediction`` solves the puzzle, judged by the puzzle's rules and clues."""
    if example.kind == "sudoku":
        return sudoku.exact_solve(example.puzzle, prediction)
    return zebra.exact_solve(zebra.parse_puzzle(example.puzzle), prediction)


def cell_accuracy(example: PuzzleExample, prediction: str) -> float:
    """Fraction of cells of the hidden solution that ``prediction`` gets right
    (Sudoku: blank cells only; Zebra: every house x attribute cell)."""
    if example.kind == "sudoku":
        return sudoku.cell_accuracy(example.puzzle, prediction, example.solution)
    return zebra.cell_accuracy(prediction, zebra.parse_table(example.solution))


def evaluate(examples: Sequence[PuzzleExample], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ``exact_solve`` and ``cell_accuracy`` over paired examples and predictions."""
    if len(examples) != len(predictions) or not examples:
        raise ValueError(
            f"need one prediction per example and at least one example, "
            f"got {len(examples)} examples and {len(predictions)} predictions"
        )
    pairs = list(zip(examples, predictions))
    return {
        "exact_solve": sum(exact_solve(e, p) for e, p in pairs) / len(pairs),
        "cell_accuracy": sum(cell_accuracy(e, p) for e, p in pairs) / len(pairs),
    }


__all__ = [
    "PUZZLE_KINDS",
    "SPLITS",
    "PuzzleExample",
    "build_examples",
    "cell_accuracy",
    "evaluate",
    "exact_solve",
    "extract_answer",
    "read_prompt_file",
    "sudoku",
    "to_document",
    "to_text_pair",
    "write_prompt_file",
    "zebra",
]
