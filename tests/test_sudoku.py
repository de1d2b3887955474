"""Tests for tasks.puzzles.sudoku and the Sudoku side of tasks.puzzles."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

import tasks.puzzles as puzzles
from tasks.puzzles import sudoku

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Arto Inkala's "world's hardest Sudoku" (2012) and its unique solution.
HARD = "800000000003600000070090200050007000000045700000100030001000068008500010090000400"
HARD_SOLUTION = "812753649943682175675491283154237896369845721287169534521974368438526917796318452"


@pytest.fixture(scope="module")
def medium() -> tuple[str, str]:
    return sudoku.generate_puzzle(np.random.default_rng(7), num_givens=30)


def _swap(grid: str, i: int, j: int) -> str:
    chars = list(grid)
    chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


def _swap_blanks_in_a_row(puzzle: str, solution: str) -> str:
    """Swaps two blank cells of one row: givens and rows stay intact, columns break."""
    for row in range(9):
        blanks = [i for i in range(9 * row, 9 * row + 9) if puzzle[i] == "0"]
        if len(blanks) >= 2:
            return _swap(solution, *blanks[:2])
    raise AssertionError("no row with two blanks")


def test_solver_solves_classic_hard_puzzle():
    assert sudoku.solve(HARD) == HARD_SOLUTION
    assert sudoku.solve(HARD.replace("0", ".")) == HARD_SOLUTION
    assert sudoku.count_solutions(HARD) == 1


def test_count_solutions_stops_at_limit_and_detects_conflicts():
    assert sudoku.count_solutions("0" * 81) == 2
    assert sudoku.count_solutions("0" * 81, limit=5) == 5
    # A blank row is forced by its columns.
    assert sudoku.count_solutions("0" * 9 + HARD_SOLUTION[9:]) == 1
    conflicting = "11" + "0" * 79
    assert sudoku.count_solutions(conflicting) == 0
    assert sudoku.solve(conflicting) is None


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_generated_puzzles_are_unique(seed: int, difficulty: str):
    rng = np.random.default_rng(seed)
    num_givens = sudoku.givens_for_difficulty(difficulty, rng)
    puzzle, solution = sudoku.generate_puzzle(rng, num_givens)
    low, high = sudoku.DIFFICULTY_GIVENS[difficulty]
    assert low <= num_givens <= high
    assert sum(ch != "0" for ch in puzzle) == num_givens
    assert sudoku.count_solutions(puzzle) == 1
    assert sudoku.solve(puzzle) == solution
    assert sudoku.is_valid_solution(puzzle, solution)


def test_generation_is_deterministic_under_seed():
    first = sudoku.generate_puzzle(np.random.default_rng(3), 40)
    assert sudoku.generate_puzzle(np.random.default_rng(3), 40) == first
    assert sudoku.generate_puzzle(np.random.default_rng(4), 40) != first


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sudoku.generate_puzzle(np.random.default_rng(0), 16)
    with pytest.raises(ValueError):
        sudoku.generate_puzzle(np.random.default_rng(0), 30, split="dev")
    with pytest.raises(ValueError):
        sudoku.givens_for_difficulty("impossible", np.random.default_rng(0))
    with pytest.raises(RuntimeError):
        sudoku.generate_puzzle(np.random.default_rng(0), 17, max_attempts=1)


def test_parse_and_format_grid_round_trip():
    assert sudoku.format_grid(sudoku.parse_grid(HARD)) == HARD
    assert sudoku.parse_grid("." * 81) == [0] * 81
    for bad in ["1" * 80, "x" * 81, HARD + "0"]:
        with pytest.raises(ValueError):
            sudoku.parse_grid(bad)


def test_checker_accepts_solution_and_rejects_corruptions(medium):
    puzzle, solution = medium
    assert sudoku.is_valid_solution(puzzle, solution)
    assert not sudoku.is_valid_solution(puzzle, _swap_blanks_in_a_row(puzzle, solution))
    # Relabel two digits everywhere: still a valid grid, but it changes givens.
    relabelled = solution.translate(str.maketrans("12", "21"))
    assert sudoku.is_valid_solution("0" * 81, relabelled)
    assert not sudoku.is_valid_solution(puzzle, relabelled)
    # Incomplete or malformed candidates.
    assert not sudoku.is_valid_solution(puzzle, puzzle)
    assert not sudoku.is_valid_solution(puzzle, solution[:80])


def test_checker_enforces_rows_columns_and_boxes():
    blank = "0" * 81
    # Each grid breaks exactly one kind of unit.
    broken_rows = _swap(HARD_SOLUTION, 0, 9)  # same column and box, two rows break
    broken_columns = _swap(HARD_SOLUTION, 0, 1)  # same row and box, two columns break
    broken_boxes = "".join("123456789"[r:] + "123456789"[:r] for r in range(9))  # Latin square
    for grid in (broken_rows, broken_columns, broken_boxes):
        assert not sudoku.is_valid_solution(blank, grid)
    assert sudoku.is_valid_solution(blank, HARD_SOLUTION)


def test_exact_solve_reads_spaced_predictions(medium):
    puzzle, solution = medium
    assert sudoku.exact_solve(puzzle, " ".join(solution))
    assert not sudoku.exact_solve(puzzle, " ".join(_swap_blanks_in_a_row(puzzle, solution)))
    assert not sudoku.exact_solve(puzzle, "garbage")


def test_cell_accuracy_counts_blank_cells_only(medium):
    puzzle, solution = medium
    blanks = [i for i, ch in enumerate(puzzle) if ch == "0"]
    assert sudoku.cell_accuracy(puzzle, solution, solution) == 1.0
    wrong = list(solution)
    for i in blanks[:3]:
        wrong[i] = "0"
    assert sudoku.cell_accuracy(puzzle, "".join(wrong), solution) == pytest.approx(1 - 3 / len(blanks))
    # The puzzle itself fills no blank; a truncated prediction loses the missing tail.
    assert sudoku.cell_accuracy(puzzle, puzzle, solution) == 0.0
    cut = blanks[len(blanks) // 2]
    assert sudoku.cell_accuracy(puzzle, solution[:cut], solution) == pytest.approx(
        len(blanks) // 2 / len(blanks)
    )
    assert sudoku.cell_accuracy(solution, "", solution) == 1.0


def test_splits_are_disjoint_and_deterministic():
    splits = {
        split: list(sudoku.sudoku_examples(split, 8, seed=0, difficulty="easy"))
        for split in ("train", "test")
    }
    for split, examples in splits.items():
        assert all(sudoku.split_of(e["solution"]) == split for e in examples)
    train_grids = {e["puzzle"] for e in splits["train"]} | {e["solution"] for e in splits["train"]}
    test_grids = {e["puzzle"] for e in splits["test"]} | {e["solution"] for e in splits["test"]}
    assert not train_grids & test_grids
    assert list(sudoku.sudoku_examples("train", 8, seed=0, difficulty="easy")) == splits["train"]
    assert list(sudoku.sudoku_examples("train", 2, seed=1, difficulty="easy")) != splits["train"][:2]
    fixed = list(sudoku.sudoku_examples("test", 2, seed=0, num_givens=50))
    assert all(sum(ch != "0" for ch in e["puzzle"]) == 50 for e in fixed)


def test_common_interface_for_sudoku(medium):
    puzzle, solution = medium
    example = puzzles.PuzzleExample("sudoku", puzzle, solution)
    assert puzzles.to_text_pair(example) == (puzzle, solution)
    assert puzzles.exact_solve(example, solution)
    scores = puzzles.evaluate([example, example], [solution, puzzle])
    assert scores == {"exact_solve": 0.5, "cell_accuracy": 0.5}
    built = list(puzzles.build_examples("sudoku", "validation", 1, seed=0, difficulty="easy"))
    assert built[0].kind == "sudoku" and sudoku.count_solutions(built[0].puzzle) == 1


def test_puzzle_package_does_not_import_tensorflow():
    code = "import sys, tasks.puzzles; assert not {'tensorflow', 'seqio'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_documents_answers_and_prompt_files(medium, tmp_path):
    puzzle, solution = medium
    example = puzzles.PuzzleExample("sudoku", puzzle, solution)
    assert puzzles.to_document(example) == puzzle + solution
    # The answer: the continuation's first 81 non-space characters, before the first EOS.
    assert puzzles.extract_answer("sudoku", solution + "7\n\n" + puzzle) == solution
    assert puzzles.extract_answer("sudoku", " ".join(solution[:40]) + solution[40:]) == solution
    assert puzzles.extract_answer("sudoku", solution[:40] + "\n\n" + solution[40:]) == solution[:40]
    assert puzzles.extract_answer("zebra", "House 1: red\n\nHouse 2") == "House 1: red"
    path = tmp_path / "puzzles.jsonl"
    subprocess.run([sys.executable, "-m", "tasks.puzzles", "--kind=sudoku", "--split=test",
                    "--num_examples=2", "--difficulty=easy", f"--output={path}"], check=True,
                   cwd=REPO_ROOT)
    read = puzzles.read_prompt_file(str(path))
    assert read == list(puzzles.build_examples("sudoku", "test", 2, difficulty="easy"))
    path.write_text('{"kind": "sudoku", "prompt": "0"}\n')
    with pytest.raises(ValueError, match="lacks \\['solution'\\]"):
        puzzles.read_prompt_file(str(path))
