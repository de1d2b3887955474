r"""Every GPU figure of docs/benchmarks.md in one run, ours and the PyTorch peer side by side.

  python bench/gpu_all.py --out=bench_results            # on the GPU (bash bench/gpu.sh all)
  python bench/gpu_all.py --out=/tmp/smoke --tiny        # the CPU check at tiny shapes

Runs the stages of ``STAGES`` in order, each in a process of its own (so that each peak-memory
figure is its own and a failure stops nothing else), and appends their JSON lines, tagged with
the stage, to ``OUT/gpu_all.jsonl`` (stderr to ``OUT/logs/``). The chip's measured bf16 matmul
peak (first stage) is every later stage's MFU denominator, and the CAUSAL-GEN figure is reused
by the sampling stage. The stages of ``PROFILED`` also write a JAX profiler trace of one more,
untimed call to ``OUT/profile/STAGE`` (where the time goes). A last ``summary`` line holds the
ratios against the peer and the goals.

Time budget: the run ends within ``--total_seconds`` (default 450, under the issue's 8 minutes).
Each stage gets ``min(its cap, the time left)``; it times fewer repeats, or extrapolates the
sampler, to fit (``--time_budget``), and is killed at its limit. A stage without
``--min_stage_seconds`` left, or killed, is recorded as ``"skipped": "time budget"`` rather than
overrunning. Optional stages (the ``torch.compile`` peer) run only with time left over.
``--tiny`` runs the same stages at the shapes of ``gin/bench_tiny.gin`` (smoke, not figures), the
sampler end to end for N = 1 and extrapolated for N = 3, so that both paths run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The shapes of the issue: UL2-medium training at the reference's vocabulary, and the Glauber
#: DiT at L = 1024 with batch 64; and their tiny CPU stand-ins.
SHAPES = {
    "full": {
        "train": ("--gin_file=gin/ul2_medium.gin", "--gin.network.NetworkConfig.vocab_size=32128",
                  "--batch_size=16", "--inputs_length=1024", "--targets_length=128"),
        "glauber": ("--gin_file=gin/ul2_medium_glauber.gin", "--batch_size=64"),
        "matmul": ("--size=8192",),
        "sampling": ("--infill_steps=32",),
    },
    "tiny": {
        "train": ("--gin_file=gin/ul2_tiny.gin", "--gin_file=gin/bench_tiny.gin", "--batch_size=2",
                  "--inputs_length=32", "--targets_length=8", "--steps=3", "--warmup=1"),
        "glauber": ("--gin_file=gin/ul2_tiny_glauber.gin", "--gin_file=gin/bench_tiny.gin",
                    "--gin.SEQ_LEN=16", "--gin.NUM_ROUNDS=3", "--batch_size=2", "--repeats=2"),
        "matmul": ("--size=256",),
        "sampling": ("--infill_steps=4", "--max_end_to_end_rounds=1"),
    },
}


@dataclasses.dataclass(frozen=True)
class Stage:
  """One benchmark process: ``python bench/SCRIPT ARGS`` with the shapes of ``shapes``.

  Attributes:
    name: the stage's name in the output (``benchmark/system``).
    script: the script under bench/.
    args: its arguments before the shapes.
    shapes: the ``SHAPES`` entry it reads.
    cap_seconds: the most it may take on the GPU (its share of the run).
    optional: run only when the required stages have all had their turn.
  """

  name: str
  script: str
  args: tuple[str, ...]
  shapes: str
  cap_seconds: float
  optional: bool = False


STAGES = (
    Stage("matmul_peak", "matmul_peak.py", (), "matmul", 25),
    Stage("train_step/ours", "train_throughput.py", (), "train", 100),
    Stage("train_step/peer", "hf_peer.py", ("train",), "train", 45),
    Stage("infill_forward/ours", "glauber_sampling.py", ("infill_forward",), "glauber", 45),
    Stage("infill_forward/peer", "hf_peer.py", ("infill_forward",), "glauber", 35),
    Stage("causal_gen/ours", "glauber_sampling.py", ("causal_gen",), "glauber", 60),
    Stage("causal_gen/peer", "hf_peer.py", ("causal_gen",), "glauber", 75),
    Stage("glauber_sampling/ours", "glauber_sampling.py",
          ("sampling", "--num_rounds=1", "--num_rounds=3"), "glauber", 240),
    Stage("infill_forward/peer_compiled", "hf_peer.py", ("infill_forward", "--compile"),
          "glauber", 60, optional=True),
    Stage("train_step/peer_compiled", "hf_peer.py", ("train", "--compile"), "train", 60,
          optional=True),
)

#: Stages that also write a profiler trace (``OUT/profile/``): where the time of the figures
#: with goals goes (the MASK-INFILL forward, the compiled infill steps of the sampler).
PROFILED = ("infill_forward/ours", "glauber_sampling/ours")

#: The goals of docs/benchmarks.md that the summary line checks.
GOALS = {"train_mfu": 0.45, "infill_speedup_vs_peer_eager": 8.0,
         "infill_speedup_vs_peer_compiled": 3.0, "n3_seconds_per_batch": 240.0}


def stage_command(stage: Stage, tiny: bool, results: list[dict[str, Any]],
                  time_budget: float, out_dir: str) -> list[str]:
  """The stage's command line, with the measured peak and the CAUSAL-GEN time once known."""
  command = [sys.executable, os.path.join(ROOT, "bench", stage.script), *stage.args,
             *SHAPES["tiny" if tiny else "full"][stage.shapes]]
  if stage.name.startswith("glauber_sampling"):
    command += SHAPES["tiny" if tiny else "full"]["sampling"]
    causal = find(results, "causal_gen", "ours")
    if causal is not None:
      command.append(f"--causal_gen_seconds={causal['seconds']}")
  if stage.name in PROFILED:
    command.append("--profile_dir=" + os.path.join(out_dir, "profile",
                                                  stage.name.replace("/", "_")))
  peak = find(results, "matmul_peak", "ours")
  if peak is not None:
    command.append(f"--measured_peak_flops={peak['measured_peak_flops']}")
  return command + [f"--time_budget={time_budget:.0f}"]


def find(results: list[dict[str, Any]], benchmark: str, system: str,
         **match: Any) -> Optional[dict[str, Any]]:
  """The first measured line of ``benchmark`` by ``system`` whose fields equal ``match``."""
  for line in results:
    if (line.get("benchmark") == benchmark and line.get("system") == system
        and "skipped" not in line and "error" not in line
        and all(line.get(key) == value for key, value in match.items())):
      return line
  return None


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
  if not numerator or not denominator:
    return None
  return round(numerator / denominator, 3)


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
  """Ours against the peer (speed-ups > 1 mean ours is faster) and against the goals."""
  def field(benchmark: str, system: str, name: str, **match: Any) -> Optional[float]:
    line = find(results, benchmark, system, **match)
    return None if line is None else line.get(name)

  n3 = find(results, "glauber_sampling", "ours", num_rounds=3)
  return {
      "train_speedup_vs_peer_eager": ratio(
          field("train_step", "ours", "tokens_per_second"),
          field("train_step", "peer", "tokens_per_second", torch_compile=False)),
      "train_speedup_vs_peer_compiled": ratio(
          field("train_step", "ours", "tokens_per_second"),
          field("train_step", "peer", "tokens_per_second", torch_compile=True)),
      "train_mfu_vs_measured_peak": field("train_step", "ours", "mfu_vs_measured_peak"),
      "infill_speedup_vs_peer_eager": ratio(
          field("infill_forward", "peer", "seconds", torch_compile=False),
          field("infill_forward", "ours", "seconds")),
      "infill_speedup_vs_peer_compiled": ratio(
          field("infill_forward", "peer", "seconds", torch_compile=True),
          field("infill_forward", "ours", "seconds")),
      "causal_gen_speedup_vs_peer_eager": ratio(
          field("causal_gen", "peer", "seconds"), field("causal_gen", "ours", "seconds")),
      "n1_seconds_per_batch": field("glauber_sampling", "ours", "seconds_per_batch",
                                    num_rounds=1),
      "n3_seconds_per_batch": None if n3 is None else n3["seconds_per_batch"],
      "n3_extrapolated": None if n3 is None else n3["extrapolated"],
      "goals": GOALS,
  }


def run_stage(stage: Stage, command: list[str], timeout: float, out_dir: str
              ) -> list[dict[str, Any]]:
  """The stage's JSON lines, or one line saying why there are none."""
  benchmark, system = stage.name.split("/") if "/" in stage.name else (stage.name, "ours")
  failed = {"benchmark": benchmark, "system": system}
  log_path = os.path.join(out_dir, "logs", stage.name.replace("/", "_") + ".log")
  with open(log_path, "w", encoding="utf-8") as log:
    try:
      done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True,
                            timeout=timeout, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
      return [{**failed, "skipped": f"time budget (stopped after {timeout:.0f} s)"}]
  lines = [json.loads(text) for text in done.stdout.splitlines() if text.startswith("{")]
  if done.returncode != 0:
    with open(log_path, encoding="utf-8") as log:
      tail = log.read().strip().splitlines()[-1:] or [""]
    lines.append({**failed, "error": f"exit {done.returncode}: {tail[0][:300]}"})
  return lines


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", default="bench_results")
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--total_seconds", type=float, default=450.0)
  parser.add_argument("--min_stage_seconds", type=float, default=20.0)
  parser.add_argument("--only", action="append", help="run only these stages (by name)")
  parser.add_argument("--skip_optional", action="store_true",
                      help="leave out the optional stages (torch.compile: minutes on a CPU)")
  args = parser.parse_args(argv)
  args.out = os.path.abspath(args.out)
  os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
  deadline = time.monotonic() + args.total_seconds
  os.environ["PYTHONPATH"] = os.pathsep.join(
      [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
  results: list[dict[str, Any]] = []
  out_path = os.path.join(args.out, "gpu_all.jsonl")
  with open(out_path, "a", encoding="utf-8") as out:
    for stage in sorted(STAGES, key=lambda s: s.optional):
      if (args.only and stage.name not in args.only) or (stage.optional and args.skip_optional):
        continue
      left = deadline - time.monotonic()
      timeout = left if args.tiny else min(stage.cap_seconds, left)
      start = time.monotonic()
      if timeout < args.min_stage_seconds:
        benchmark, _, system = stage.name.partition("/")
        lines = [{"benchmark": benchmark, "system": system or "ours",
                  "skipped": "time budget"}]
      else:
        command = stage_command(stage, args.tiny, results, max(timeout - 15, timeout / 2),
                                args.out)
        lines = run_stage(stage, command, timeout, args.out)
      for line in lines:
        line.update(stage=stage.name, stage_wall_seconds=round(time.monotonic() - start, 1))
        results.append(line)
        out.write(json.dumps(line) + "\n")
        out.flush()
        print(json.dumps(line), flush=True)
    line = {"benchmark": "summary", "tiny": args.tiny,
            "total_wall_seconds": round(args.total_seconds - (deadline - time.monotonic()), 1),
            **summary(results)}
    out.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
