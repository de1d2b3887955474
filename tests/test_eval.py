"""The evaluation command line end to end on small fake sample files: the table, appended JSON
lines, a Hugging Face judge, a judge of ours from gin and a checkpoint, and the MAUVE skip."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
from typing import Any, Iterator

import flax.linen as nn
import gin
import jax
import pytest

from glauber_jax import checkpoints, eval as eval_cli, gin_utils, metrics, vocabularies
from tasks import puzzles
from test_metrics import CORPUS, needs_torch, save_tiny_gpt2

VOCAB = vocabularies.ByteVocabulary()
# A one-layer causal LM on bytes, L = 16: built from gin/ar_tiny.gin in about a second.
TINY_JUDGE = [
    "--judge_gin=gin/ar_tiny.gin", "--gin.MIXTURE_OR_TASK_NAME='shakespeare_bytes_lm'",
    "--gin.SEQ_LEN=16", "--gin.single_stack/network.NetworkConfig.vocab_size=384",
    "--gin.single_stack/network.NetworkConfig.d_model=32",
    "--gin.single_stack/network.NetworkConfig.num_heads=2",
    "--gin.single_stack/network.NetworkConfig.head_dim=16",
    "--gin.single_stack/network.NetworkConfig.d_ff=48",
    "--gin.single_stack/network.NetworkConfig.num_encoder_layers=1",
    "--gin.single_stack/network.NetworkConfig.max_encoder_length=16",
]


@pytest.fixture(autouse=True)
def fresh_gin() -> Iterator[None]:
  gin.clear_config()
  yield
  gin.clear_config()


def write_samples(path: pathlib.Path, texts: list[str], mode: str, num_rounds: int) -> str:
  """A samples file shaped like ``infer``'s output."""
  settings = {"mode": mode, "model": "DiffusionModel(glauber)", "num_rounds": num_rounds,
              "seq_len": 64, "temperature": 1.0}
  with open(path, "w", encoding="utf-8") as f:
    for text in texts:
      ids = VOCAB.encode(text).tolist()
      f.write(json.dumps({"prompt": None, "text": text, "token_ids": ids, "causal_draft": text,
                          "sites_changed": 0, "settings": settings}) + "\n")
  return str(path)


@pytest.fixture()
def sample_files(tmp_path: pathlib.Path) -> list[str]:
  return [write_samples(tmp_path / "glauber.jsonl", CORPUS, "sample", 3),
          write_samples(tmp_path / "causal.jsonl", ["the the the the the", "a a a b"],
                        "causal", 0)]


def read_rows(path: pathlib.Path) -> list[dict[str, Any]]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_without_judge_prints_a_table_and_appends_rows(
    sample_files: list[str], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
  output = tmp_path / "results.jsonl"
  args = [f"--samples={path}" for path in sample_files] + [f"--output={output}"]
  eval_cli.main(args)
  table = capsys.readouterr().out.splitlines()
  assert table[0].split()[:6] == ["file", "mode", "rounds", "#samples", "gen-PPL", "entropy"]
  assert "glauber.jsonl" in table[2] and "sample" in table[2] and " 3 " in table[2]
  assert "causal.jsonl" in table[3] and " - " in table[3]  # No judge: no gen-PPL.
  rows = read_rows(output)
  assert [row["num_samples"] for row in rows] == [3, 2]
  ids = [VOCAB.encode(text).tolist() for text in CORPUS]
  assert rows[0]["token_entropy"] == pytest.approx(metrics.token_entropy(ids))
  assert rows[0]["distinct_2"] == pytest.approx(metrics.distinct_n(ids, 2))
  assert rows[1]["token_entropy"] < rows[0]["token_entropy"]  # The repetitive file.
  assert "gen_ppl" not in rows[0] and rows[0]["mode"] == "sample"
  eval_cli.main(args)
  assert len(read_rows(output)) == 4  # Appended.


def test_cli_scores_the_drafts_of_glauber_samples(tmp_path: pathlib.Path) -> None:
  """``--drafts`` adds a row for the samples' CAUSAL-GEN drafts: their own token ids, not the
  final texts'; a file without drafts is refused with its name."""
  path = tmp_path / "glauber.jsonl"
  drafts = ["the the the the the", "a a a b", "b b b b"]
  settings = {"mode": "sample", "model": "DiffusionModel(glauber)", "num_rounds": 1}
  with open(path, "w", encoding="utf-8") as f:
    for text, draft in zip(CORPUS, drafts):
      f.write(json.dumps({"text": text, "token_ids": VOCAB.encode(text).tolist(),
                          "causal_draft": draft,
                          "causal_draft_ids": VOCAB.encode(draft).tolist(),
                          "settings": settings}) + "\n")
  output = tmp_path / "results.jsonl"
  eval_cli.main([f"--samples={path}", f"--drafts={path}", f"--output={output}"])
  final, draft = read_rows(output)
  assert (final["mode"], draft["mode"]) == ("sample", "draft")
  assert draft["file"] == f"{path} (drafts)"
  draft_ids = [VOCAB.encode(text).tolist() for text in drafts]
  assert draft["token_entropy"] == pytest.approx(metrics.token_entropy(draft_ids))
  assert draft["token_entropy"] < final["token_entropy"]
  causal = write_samples(tmp_path / "causal.jsonl", ["a b"], "causal", 0)
  with pytest.raises(SystemExit, match="causal.jsonl: --drafts needs the causal_draft"):
    eval_cli.main([f"--samples={causal}", f"--drafts={causal}", f"--output={output}"])


def test_cli_rejects_bad_input(tmp_path: pathlib.Path) -> None:
  bound = tmp_path / "bound.jsonl"
  bound.write_text(json.dumps({"mode": "bound", "perplexity_upper_bound": 3.0}) + "\n")
  with pytest.raises(SystemExit, match="not a samples file"):
    eval_cli.main([f"--samples={bound}"])
  with pytest.raises(SystemExit):
    eval_cli.main([f"--samples={bound}", "--judge_hf=x", "--judge_gin=gin/ar_tiny.gin",
                   "--judge_checkpoint=y"])
  with pytest.raises(SystemExit, match="judge error"):
    eval_cli.main([f"--samples={bound}", f"--judge_hf={tmp_path / 'absent'}"])
  with pytest.raises(SystemExit):
    eval_cli.main([f"--samples={tmp_path / 'absent.jsonl'}"])


def test_cli_scores_puzzle_answers(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
                                   ) -> None:
  examples = list(puzzles.build_examples("sudoku", "validation", 3, difficulty="easy"))
  puzzle_file = tmp_path / "puzzles.jsonl"
  puzzles.write_prompt_file(str(puzzle_file), examples)
  blanks = [i for i, cell in enumerate(examples[1].puzzle) if cell == "0"]
  half_right = "".join("1" if i in blanks[::2] and cell != "1" else cell
                       for i, cell in enumerate(examples[1].solution))
  continuations = [examples[0].solution + "\n\njunk after EOS", half_right, "no answer"]
  samples = tmp_path / "samples.jsonl"
  samples.write_text("".join(json.dumps(
      {"prompt": e.puzzle, "text": e.puzzle + c, "continuation": c,
       "token_ids": VOCAB.encode(e.puzzle + c).tolist(), "settings": {"mode": "sample"}}) + "\n"
      for e, c in zip(examples, continuations)))
  output = tmp_path / "results.jsonl"
  eval_cli.main([f"--samples={samples}", f"--puzzles={puzzle_file}", f"--output={output}"])
  assert "solved" in capsys.readouterr().out.splitlines()[0]
  row = read_rows(output)[0]
  wrong_cells = sum(1 for i in blanks if half_right[i] != examples[1].solution[i])
  assert 0 < wrong_cells < len(blanks)
  assert row["exact_solve"] == pytest.approx(1 / 3)
  assert row["cell_accuracy"] == pytest.approx((1 + 1 - wrong_cells / len(blanks)) / 3)
  assert row["puzzles_scored"] == 3 and row["puzzle_file"] == str(puzzle_file)
  unprompted = write_samples(tmp_path / "unprompted.jsonl", CORPUS, "sample", 1)
  with pytest.raises(SystemExit, match="no sample was prompted"):
    eval_cli.main([f"--samples={unprompted}", f"--puzzles={puzzle_file}"])


@needs_torch
def test_cli_with_a_hugging_face_judge_and_mauve_skipped(sample_files: list[str],
                                                         tmp_path: pathlib.Path) -> None:
  judge_dir = tmp_path / "tiny_gpt2"
  save_tiny_gpt2(judge_dir)
  references = tmp_path / "held_out.txt"
  references.write_text("\n\n".join(CORPUS))
  output = tmp_path / "results.jsonl"
  eval_cli.main([f"--samples={sample_files[0]}", f"--judge_hf={judge_dir}",
                 f"--reference_file={references}", f"--output={output}"])
  row = read_rows(output)[0]
  expected = metrics.generative_perplexity(CORPUS, metrics.HuggingFaceJudge(str(judge_dir)))
  assert row["gen_ppl"] == pytest.approx(expected["gen_ppl"], rel=1e-6)
  assert row["judge"] == "tiny_gpt2" and row["judge_tokens"] == expected["num_tokens"]
  if importlib.util.find_spec("mauve") is None:
    assert row["mauve"] is None and "mauve-text" in row["mauve_skipped"]


def test_cli_with_a_judge_from_gin_and_a_checkpoint(sample_files: list[str],
                                                    tmp_path: pathlib.Path) -> None:
  gin_files, bindings, _ = gin_utils.split_gin_args(
      [arg.replace("--judge_gin", "--gin_file") for arg in TINY_JUDGE])
  import tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  gin_utils.parse_gin(gin_files, [*bindings, "glauber_jax.eval.judge_model.model = %MODEL"])
  model = eval_cli.judge_model()  # pylint: disable=no-value-for-parameter
  shapes = model.input_shapes(1, {"targets": model.seq_len})
  params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(1), shapes)["params"])
  run_dir = tmp_path / "judge_run"
  checkpointer = checkpoints.Checkpointer(str(run_dir), async_save=False)
  checkpointer.save(5, {"params": params}, {}, {}, force=True)
  checkpointer.close()
  gin.clear_config()

  output = tmp_path / "results.jsonl"
  eval_cli.main([f"--samples={sample_files[0]}", *TINY_JUDGE,
                 f"--judge_checkpoint={run_dir}", f"--output={output}", "--batch_size=2"])
  row = read_rows(output)[0]
  # Directly: the causal LM's log-likelihood of each 16-byte chunk, from a fresh start.
  total, tokens = 0.0, 0
  for text in CORPUS:
    ids = VOCAB.encode(text)
    for start in range(0, len(ids), 16):
      chunk = ids[None, start:start + 16]
      total += float(model.log_likelihood(params, chunk)[0])
      tokens += chunk.shape[1]
  assert row["judge"] == "judge_run" and row["judge_tokens"] == tokens
  assert row["gen_ppl"] == pytest.approx(math.exp(-total / tokens), rel=1e-5)
  assert 100 < row["gen_ppl"] < 1000  # Random weights: near the 384-id vocabulary.


def test_a_judge_checkpoint_missing_parameters_is_an_error(sample_files: list[str],
                                                           tmp_path: pathlib.Path) -> None:
  with pytest.raises(SystemExit, match="checkpoint error"):
    eval_cli.main([f"--samples={sample_files[0]}", *TINY_JUDGE,
                   f"--judge_checkpoint={tmp_path}"])
