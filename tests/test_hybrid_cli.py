"""The hybrid family through the command lines at toy size: ``train`` with
``gin/hybrid_{epsilon,gamma,gamma_block}_tiny.gin`` (the last: per-token time conditioning,
annealed training on a block hyperschedule with the settled cross-entropy), ``infer`` with the
hyperschedule / ACS / stagger options (block sampling for both processes), and
``infer --mode=bound``."""

from __future__ import annotations

import importlib
import json
import pathlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import data
from test_cli import cli, run

SHRINK = ["--gin.BATCH_SIZE=4", "--gin.SEQ_LEN=32", "--gin.train.show_progress=False",
          "--gin.single_stack/network.NetworkConfig.d_model=32",
          "--gin.single_stack/network.NetworkConfig.num_heads=2",
          "--gin.single_stack/network.NetworkConfig.head_dim=16",
          "--gin.single_stack/network.NetworkConfig.d_ff=64",
          "--gin.single_stack/network.NetworkConfig.num_encoder_layers=1",
          "--gin.single_stack/network.NetworkConfig.max_encoder_length=32"]
OPTIONS = {"epsilon": "{'schedule': 'block', 'width': 8, 'num_levels': 3, 'eta': 0.05}",
           "gamma": "{'num_levels': 6, 'exact_stagger': False}",
           "gamma_block": "{'schedule': 'block', 'width': 8, 'num_levels': 4}"}
#: Settings each run's sample records must show.
SETTINGS = {"epsilon": {"schedule": "block", "num_levels": 3, "eta": 0.05},
            "gamma": {"schedule": "flat", "num_levels": 6, "exact_stagger": False},
            "gamma_block": {"schedule": "block", "width": 8, "num_levels": 4,
                            "exact_stagger": True}}


@pytest.mark.parametrize("kind", sorted(OPTIONS))
def test_hybrid_trains_samples_and_bounds(tmp_path: pathlib.Path, kind: str) -> None:
  model_dir = tmp_path / kind
  shrink = [f"--gin_file=gin/hybrid_{kind}_tiny.gin", f"--gin.MODEL_DIR='{model_dir}'", *SHRINK]
  trained = run(cli("glauber_jax.train", *shrink, "--gin.TRAIN_STEPS=2"))
  assert trained.returncode == 0, trained.stderr[-3000:]
  sampled = run(cli("glauber_jax.infer", *shrink, f"--checkpoint={model_dir}",
                    "--gin.infer.num_samples=2", "--gin.infer.batch_size=2",
                    "--gin.infer.prompts=['To be, or not']",
                    f"--gin.infer.sampler_options={OPTIONS[kind]}"))
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  records = [json.loads(line) for line in open(model_dir / "infer_sample.jsonl",
                                               encoding="utf-8")]
  assert len(records) == 2 and all(len(r["token_ids"]) == 32 for r in records)
  assert all(r["text"].startswith("To be, or not") for r in records)
  settings = records[0]["settings"]
  assert {name: settings[name] for name in SETTINGS[kind]} == SETTINGS[kind]
  bound = run(cli("glauber_jax.infer", *shrink, f"--checkpoint={model_dir}", "--mode=bound",
                  "--gin.infer.batch_size=2", "--gin.infer.num_eval_batches=1"))
  assert bound.returncode == 0, bound.stderr[-3000:]
  record = json.loads(open(model_dir / "infer_bound.jsonl", encoding="utf-8").read())
  assert 1.0 < record["perplexity_upper_bound"] < float("inf")


def test_block_trained_epsilon_hybrid_trains_and_samples_cached(tmp_path: pathlib.Path) -> None:
  """``gin/hybrid_epsilon_block_tiny.gin``: the efficient layout under the block masks trains,
  and the KV-cached block sampler (its default attention) samples."""
  shrink = ["--gin_file=gin/hybrid_epsilon_block_tiny.gin", f"--gin.MODEL_DIR='{tmp_path}'",
            "--gin.BLOCK_WIDTH=8", "--gin.BLOCK_LEVELS=3", *SHRINK]
  trained = run(cli("glauber_jax.train", *shrink, "--gin.TRAIN_STEPS=2"))
  assert trained.returncode == 0, trained.stderr[-3000:]
  sampled = run(cli("glauber_jax.infer", *shrink, f"--checkpoint={tmp_path}",
                    "--gin.infer.num_samples=2", "--gin.infer.batch_size=2",
                    "--gin.infer.prompts=['To be, or not']"))
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  records = [json.loads(line) for line in open(tmp_path / "infer_sample.jsonl",
                                               encoding="utf-8")]
  assert len(records) == 2 and all(r["text"].startswith("To be, or not") for r in records)
  assert records[0]["settings"]["attention"] == "cached"


@pytest.mark.parametrize("gin_file", ["hybrid_epsilon_tiny", "hybrid_gamma_tiny", "mdlm_tiny"])
def test_eos_is_text_where_the_task_packs_documents(gin_file: str) -> None:
  """The bundled corpus packs documents with EOS, so the single stack must write EOS: the
  hybrid losses score every position, and a target id the denoiser cannot write is an infinite
  loss (gin/hybrid_epsilon_tiny.gin stopped after 14 non-finite steps on real batches, whose
  EOS the toy runs above never met). The gin files bind it from the task, as glauber.gin does
  for the UL2."""
  importlib.import_module("tasks")  # Registers shakespeare_lm.
  gin.clear_config()
  try:
    gin.add_config_file_search_path("gin")
    gin.parse_config_files_and_bindings(
        [f"gin/{gin_file}.gin"],
        [binding.removeprefix("--gin.") for binding in SHRINK if "show_progress" not in binding])
    model = gin.query_parameter("train.model").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert data.task_text_includes_eos("shakespeare_lm")
  vocabulary = model.denoiser.vocabulary
  assert model.denoiser.allowed_tokens[vocabulary.eos_id]
  text = vocabulary.encode("To be, or not to be, that is the question.")[:15]
  row = np.array([*text, vocabulary.eos_id, *text, vocabulary.eos_id] * 8)[:32]
  targets = jnp.asarray(np.stack([row, row[::-1]]), jnp.int32)
  params = model.get_initial_variables(jax.random.PRNGKey(0), {"targets": (2, 32)})["params"]
  batch, _ = model.prepare_batch(params, None, {"targets": targets}, jnp.asarray(0),
                                 jax.random.PRNGKey(1))
  loss, _ = model.loss_fn(params, batch, None)
  assert np.isfinite(float(loss))
