"""The command lines end to end: the quick start pipeline (UL2 -> Glauber DiT -> samples), also
on the synthetic language with the exact judge; clear errors for bad checkpoints. (SIGKILL +
resume: tests/test_chaos.py.)"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = pathlib.Path(__file__).resolve().parents[1]
# The smallest UL2 (gin/ul2_micro.gin): seconds per run on a CPU.
SMALL = ["--gin_file=gin/ul2_micro.gin"]


def cli(module: str, *args: str) -> list[str]:
  return [sys.executable, "-m", module, *args]


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env=env)


def final_params(model_dir: pathlib.Path, step: int) -> dict:
  """The saved parameters as NumPy arrays (whatever devices or processes wrote them)."""
  path = str(model_dir / "checkpoints" / str(step) / "state")
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))["params"]


def assert_trees_equal(a: dict, b: dict, atol: float = 0.0) -> None:
  assert a.keys() == b.keys()
  for key in a:
    if isinstance(a[key], dict):
      assert_trees_equal(a[key], b[key], atol)
    else:
      np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=0, atol=atol)


def test_quickstart_pipeline_trains_converts_and_samples(tmp_path: pathlib.Path) -> None:
  result = run(cli("glauber_jax.quickstart", f"--model_dir={tmp_path}", "--gin.TRAIN_STEPS=3",
                   "--gin.Checkpointer.period=3", "--gin.BATCH_SIZE=4",
                   "--gin.train.show_progress=False", "--gin.infer.num_samples=2",
                   "--gin.infer.batch_size=2",
                   # Three UL2 steps leave the teacher context-blind: train the DiT anyway.
                   "--gin.ALLOW_CONTEXT_BLIND_TEACHER=True"), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "parameters are new" in result.stderr  # The DiT started from the UL2 checkpoint.
  samples = [json.loads(line) for line in
             open(tmp_path / "ul2_tiny_glauber" / "infer_sample.jsonl", encoding="utf-8")]
  assert len(samples) == 2 and all(len(s["token_ids"]) == 64 for s in samples)
  assert "--- sample 1" in result.stdout
  glauber_dir = tmp_path / "ul2_tiny_glauber"
  bound = run(cli("glauber_jax.infer", "--gin_file=gin/ul2_tiny_glauber.gin",
                  f"--checkpoint={glauber_dir}", "--mode=bound", "--gin.infer.batch_size=2",
                  "--gin.infer.num_eval_batches=1"))
  assert bound.returncode == 0, bound.stderr[-3000:]
  record = json.loads(open(glauber_dir / "infer_bound.jsonl", encoding="utf-8").read())
  assert record["sequences"] == 2 and 1.0 < record["perplexity_upper_bound"] < float("inf")
  # The checkpoint's permutations are checked against the configuration, on inference and on
  # resume.
  reordered = "--gin.GlauberProcess.permutation_seed=7"
  mismatch = run(cli("glauber_jax.infer", "--gin_file=gin/ul2_tiny_glauber.gin",
                     f"--checkpoint={glauber_dir}", reordered))
  assert mismatch.returncode != 0 and "permutation_seed" in mismatch.stderr
  resumed = run(cli("glauber_jax.train", "--gin_file=gin/ul2_tiny_glauber.gin",
                    f"--gin.MODEL_DIR='{glauber_dir}'", "--gin.TRAIN_STEPS=6", "--gin.BATCH_SIZE=4",
                    "--gin.train.show_progress=False", reordered))
  assert resumed.returncode != 0 and "permutation_seed" in resumed.stderr


def test_synthetic_quickstart_ends_with_the_exact_judge(tmp_path: pathlib.Path) -> None:
  """``quickstart --synthetic``: the same stages on the synthetic language, then the exact
  judge's line comparing the drafts with the final samples."""
  result = run(cli("glauber_jax.quickstart", "--synthetic", f"--model_dir={tmp_path}",
                   "--gin.TRAIN_STEPS=3", "--gin.Checkpointer.period=3", "--gin.BATCH_SIZE=4",
                   "--gin.train.show_progress=False", "--gin.infer.num_samples=4",
                   "--gin.infer.batch_size=4", "--gin.ALLOW_CONTEXT_BLIND_TEACHER=True"),
               timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  samples = [json.loads(line) for line in
             open(tmp_path / "ul2_tiny_glauber" / "infer_sample.jsonl", encoding="utf-8")]
  assert len(samples) == 4 and all(len(s["token_ids"]) == 32 for s in samples)
  line = [text for text in result.stdout.splitlines() if text.startswith("exact judge")]
  assert len(line) == 1 and "CAUSAL-GEN drafts" in line[0] and "paired change" in line[0], (
      result.stdout[-2000:])


def test_bad_checkpoints_and_configs_are_named(tmp_path: pathlib.Path) -> None:
  missing = run(cli("glauber_jax.infer", "--gin_file=gin/ul2_tiny_glauber.gin",
                    f"--checkpoint={tmp_path / 'nope'}"))
  assert missing.returncode != 0 and "does not exist" in missing.stderr
  unknown = run(cli("glauber_jax.train", "--gin_file=gin/ul2_tiny.gin",
                    "--gin.train.num_stepz=3"))
  assert unknown.returncode != 0 and "num_stepz" in unknown.stderr
  corrupt = tmp_path / "corrupt"
  (corrupt / "checkpoints" / "4" / "state").mkdir(parents=True)
  (corrupt / "checkpoints" / "4" / "state" / "garbage").write_text("not a checkpoint")
  broken = run(cli("glauber_jax.train", *SMALL, "--gin.TRAIN_STEPS=8",
                   f"--gin.MODEL_DIR='{corrupt}'"))
  assert broken.returncode != 0 and "checkpoint" in broken.stderr.lower()
  assert (corrupt / "checkpoints" / "4" / "state" / "garbage").exists()  # Nothing deleted.


def test_baselines_train_sample_and_bound_through_the_same_clis(tmp_path: pathlib.Path) -> None:
  for config in ("ar_tiny", "mdlm_tiny"):
    model_dir = tmp_path / config
    shrink = [f"--gin_file=gin/{config}.gin", f"--gin.MODEL_DIR='{model_dir}'",
              "--gin.BATCH_SIZE=4", "--gin.train.show_progress=False"]
    trained = run(cli("glauber_jax.train", *shrink, "--gin.TRAIN_STEPS=2"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    # The causal LM samples unconditionally, MDLM continues the prompts of a file (rows of
    # prompts with equally many tokens share a batch).
    prompts = ["To be, or not", "Friends, Romans", "To be, or not"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    prompted = ([f"--gin.infer.prompts_file='{tmp_path / 'prompts.txt'}'"]
                if config == "mdlm_tiny" else [])
    steps = ["--gin.infer.sampler_options={'num_steps': 4}"] if prompted else []
    sampled = run(cli("glauber_jax.infer", *shrink, f"--checkpoint={model_dir}",
                      "--gin.infer.num_samples=2", "--gin.infer.batch_size=3", *prompted, *steps))
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    records = [json.loads(line) for line in open(model_dir / "infer_sample.jsonl",
                                                 encoding="utf-8")]
    assert len(records) == (6 if prompted else 2) and len(records[0]["token_ids"]) == 64
    assert "causal_draft" not in records[0]  # No draft: the sample is the baseline's only one.
    if prompted:
      assert records[0]["settings"]["num_steps"] == 4
    if prompted:
      assert [record["prompt"] for record in records] == [p for p in prompts for _ in range(2)]
      assert all(record["text"].startswith(record["prompt"]) for record in records)
      assert all(record["text"].endswith(record["continuation"]) for record in records)
    bound = run(cli("glauber_jax.infer", *shrink, f"--checkpoint={model_dir}", "--mode=bound",
                    "--gin.infer.batch_size=2", "--gin.infer.num_eval_batches=1"))
    assert bound.returncode == 0, bound.stderr[-3000:]
    record = json.loads(open(model_dir / "infer_bound.jsonl", encoding="utf-8").read())
    assert 1.0 < record["perplexity_upper_bound"] < float("inf")
