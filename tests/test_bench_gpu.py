"""The one-run GPU benchmark (``bash bench/gpu.sh all``), checked end to end at tiny shapes.

Runs ``--tiny`` once (every required stage: ours and the Hugging Face peer) with TensorFlow and
seqio blocked in every process, as on the GPU image that has neither, and checks each JSON
line: the fields each benchmark promises, finite positive figures, the peer's shapes equal to
ours, both sampler paths (end to end and extrapolated), and the summary's ratios. The time
guard is checked by a run with no time at all. Smoke only: CPU figures say nothing of a GPU.
The tiny run takes about a minute of 2 CPUs, so it runs with ``GLAUBER_SLOW_TESTS=1`` only.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: The processes of the run import neither (``sys.modules`` entries of None).
BLOCKER = "import sys\nsys.modules['tensorflow'] = None\nsys.modules['seqio'] = None\n"
REQUIRED_STAGES = ("matmul_peak", "train_step/ours", "train_step/peer", "infill_forward/ours",
                   "infill_forward/peer", "causal_gen/ours", "causal_gen/peer",
                   "glauber_sampling/ours")
#: Fields every measured line of a benchmark carries, all finite and positive.
POSITIVE_FIELDS = {
    "matmul_peak": ("measured_peak_flops", "seconds_per_matmul"),
    "train_step": ("step_seconds", "tokens_per_second", "model_tflops_per_second",
                   "mfu_vs_measured_peak"),
    "infill_forward": ("seconds", "model_flops", "model_tflops_per_second",
                       "mfu_vs_measured_peak"),
    "causal_gen": ("seconds", "tokens_per_second", "new_tokens"),
    "glauber_sampling": ("seconds_per_batch", "seconds_per_infill_step", "causal_gen_seconds",
                         "timed_infill_steps"),
}
RATIOS = ("train_speedup_vs_peer_eager", "train_mfu_vs_measured_peak",
          "infill_speedup_vs_peer_eager", "causal_gen_speedup_vs_peer_eager",
          "n1_seconds_per_batch", "n3_seconds_per_batch")


def _environment(tmp_path: pathlib.Path) -> dict[str, str]:
  blocker = tmp_path / "blocker"
  blocker.mkdir(exist_ok=True)
  (blocker / "sitecustomize.py").write_text(BLOCKER, encoding="utf-8")
  return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)]),
          "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}


def _run(tmp_path: pathlib.Path, *flags: str) -> list[dict[str, Any]]:
  result = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "all", *flags],
                          env=_environment(tmp_path), capture_output=True, text=True,
                          timeout=1200, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  path = tmp_path / "out" / "gpu_all.jsonl"
  lines = [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]
  assert lines == [json.loads(text) for text in result.stdout.splitlines()]
  return lines


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  """The directory of one ``--tiny`` run (its output under ``out/``)."""
  if os.environ.get("GLAUBER_SLOW_TESTS") != "1":
    pytest.skip("eight benchmark processes (about a minute on 2 CPUs): set GLAUBER_SLOW_TESTS=1")
  path = tmp_path_factory.mktemp("bench_gpu")
  _run(path, "--tiny", "--skip_optional", "--total_seconds=1200", "--min_stage_seconds=0")
  return path


@pytest.fixture(scope="module")
def tiny_run(tiny_dir: pathlib.Path) -> list[dict[str, Any]]:
  text = (tiny_dir / "out" / "gpu_all.jsonl").read_text(encoding="utf-8")
  return [json.loads(line) for line in text.splitlines()]


def _positive(value: Any) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_blocker_hides_tensorflow_and_seqio(tmp_path: pathlib.Path) -> None:
  for module in ("tensorflow", "seqio"):
    result = subprocess.run([sys.executable, "-c", f"import {module}"],
                            env=_environment(tmp_path), capture_output=True, text=True,
                            check=False)
    assert result.returncode != 0 and "None in sys.modules" in result.stderr, module


def test_every_stage_measured(tiny_run: list[dict[str, Any]]) -> None:
  stages = [line["stage"] for line in tiny_run[:-1]]
  assert sorted(set(stages)) == sorted(REQUIRED_STAGES)
  for line in tiny_run[:-1]:
    assert "skipped" not in line and "error" not in line, line
    assert line["device"] == "cpu" and line["peak_memory_bytes"] is None, line
    for name in POSITIVE_FIELDS[line["benchmark"]]:
      assert _positive(line[name]), (line["stage"], name, line.get(name))


def test_peer_has_our_shapes(tiny_run: list[dict[str, Any]]) -> None:
  by_stage = {line["stage"]: line for line in tiny_run[:-1]}
  for benchmark in ("train_step", "infill_forward", "causal_gen"):
    ours, peer = by_stage[f"{benchmark}/ours"], by_stage[f"{benchmark}/peer"]
    assert peer["torch_compile"] is False
    for name in ("vocab_size", "batch_size"):
      assert ours[name] == peer[name], (benchmark, name)
  assert by_stage["causal_gen/ours"]["new_tokens"] == by_stage["causal_gen/peer"]["new_tokens"]
  measured_peak = by_stage["matmul_peak"]["measured_peak_flops"]
  train = by_stage["train_step/ours"]
  assert train["mfu_vs_measured_peak"] == pytest.approx(
      train["model_tflops_per_second"] * 1e12 / measured_peak, rel=0.01)


def test_sampler_end_to_end_and_extrapolated(tiny_run: list[dict[str, Any]]) -> None:
  sampling = {line["num_rounds"]: line for line in tiny_run
              if line["benchmark"] == "glauber_sampling"}
  assert sorted(sampling) == [1, 3]
  assert sampling[1]["extrapolated"] is False and sampling[3]["extrapolated"] is True
  assert sampling[3]["causal_gen_timed_in"] == "the causal_gen stage"
  expected = (sampling[3]["causal_gen_seconds"]
              + 3 * sampling[3]["seq_len"] * sampling[3]["seconds_per_infill_step"])
  assert sampling[3]["seconds_per_batch"] == pytest.approx(expected, rel=0.01, abs=1e-4)


def test_summary_ratios(tiny_run: list[dict[str, Any]]) -> None:
  summary = tiny_run[-1]
  assert summary["benchmark"] == "summary" and summary["tiny"] is True
  for name in RATIOS:
    assert _positive(summary[name]), (name, summary.get(name))
  assert summary["n3_extrapolated"] is True
  assert summary["infill_speedup_vs_peer_compiled"] is None  # --skip_optional.
  by_stage = {line["stage"]: line for line in tiny_run[:-1]}
  assert summary["infill_speedup_vs_peer_eager"] == pytest.approx(
      by_stage["infill_forward/peer"]["seconds"] / by_stage["infill_forward/ours"]["seconds"],
      rel=0.01)


def test_profiled_stages_write_traces(tiny_dir: pathlib.Path) -> None:
  for stage in ("infill_forward_ours", "glauber_sampling_ours"):
    traces = list((tiny_dir / "out" / "profile" / stage).rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0, stage


def test_time_budget_skips_rather_than_overruns(tmp_path: pathlib.Path) -> None:
  lines = _run(tmp_path, "--tiny", "--total_seconds=0")
  assert [line["stage"] for line in lines[:-1]] == list(REQUIRED_STAGES) + [
      "infill_forward/peer_compiled", "train_step/peer_compiled"]
  assert all(line["skipped"] == "time budget" for line in lines[:-1])
  assert lines[-1]["train_speedup_vs_peer_eager"] is None
