"""Writes a puzzle prompt file: the puzzles a model is asked to solve, with their solutions.

    python -m tasks.puzzles --kind=sudoku --split=validation --num_examples=64 \
        --output=runs/sudoku_validation.jsonl [--seed=0] [--difficulty=medium]

One JSON line per puzzle (``kind``, ``prompt``, ``solution``). With the default seed 0 the
puzzles are the first ``--num_examples`` of the registered task's split (``tasks.registry``
generates from seed 0 too). ``glauber_jax.infer`` reads the file as ``infer.prompts_file``
and ``glauber_jax.eval --puzzles=FILE`` scores the samples against it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tasks import puzzles


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.puzzles", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=puzzles.PUZZLE_KINDS, required=True)
    parser.add_argument("--split", choices=puzzles.SPLITS, default="validation")
    parser.add_argument("--num_examples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", choices=("easy", "medium", "hard"),
                        help="Sudoku only (default: the generator's, medium)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    if args.num_examples < 1:
        parser.error("--num_examples must be positive.")
    if args.difficulty and args.kind != "sudoku":
        parser.error("--difficulty applies to Sudoku only.")
    options = {"difficulty": args.difficulty} if args.difficulty else {}
    examples = list(puzzles.build_examples(args.kind, args.split, args.num_examples, args.seed,
                                           **options))
    puzzles.write_prompt_file(args.output, examples)
    print(f"wrote {len(examples)} {args.kind} puzzles ({args.split}) to {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
