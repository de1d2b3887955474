r"""Chaos check: the tiny model trained through K random SIGKILLs ends where an uninterrupted
run ends.

    python experiments/chaos.py --kills=10 [--workdir=/tmp/chaos] [--seed=0]

Trains a very small UL2 on the byte-level Shakespeare task twice with the same command line:
once uninterrupted (``reference``), once (``chaos``) killed with SIGKILL ``--kills`` times and
restarted each time. Every kill waits for the run to commit 1 or 2 checkpoints past the one it
resumed from, then lands either while the next step is still being written asynchronously
(orbax's ``*.orbax-checkpoint-tmp*`` directory present: a kill inside a save), or after a
random delay of up to 50 ms. The script then compares the two final checkpoints: every
parameter and optimizer array bit for bit, and the data position. It prints one JSON line per
kill and a summary, and exits 1 unless every resume was exact.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
# The smallest UL2 (gin/ul2_micro.gin): seconds per run on a CPU.
TINY_RUN = ["--gin_file=gin/ul2_micro.gin"]


def train_command(model_dir: pathlib.Path, steps: int, period: int) -> list[str]:
  return [sys.executable, "-m", "glauber_jax.train", *TINY_RUN, f"--gin.TRAIN_STEPS={steps}",
          f"--gin.Checkpointer.period={period}", f"--gin.MODEL_DIR='{model_dir}'"]


def _environment() -> dict[str, str]:
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def committed_steps(model_dir: pathlib.Path) -> list[int]:
  directory = model_dir / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def saving_now(model_dir: pathlib.Path) -> bool:
  """Whether an asynchronous save is under way (orbax's temporary step directory exists)."""
  directory = model_dir / "checkpoints"
  return directory.is_dir() and any("orbax-checkpoint-tmp" in p.name
                                    for p in directory.iterdir())


def kill_once(command: list[str], model_dir: pathlib.Path, period: int, rng: random.Random,
              log_path: pathlib.Path, timeout: float = 600) -> dict[str, Any]:
  """Starts ``command``, lets it commit 1 or 2 checkpoints past the last one, and kills it with
  SIGKILL: half of the time inside the next asynchronous save, else after a random delay of up
  to 50 ms; returns how it went."""
  before = (committed_steps(model_dir) or [0])[-1]
  target = (before // period + rng.randint(1, 2)) * period
  inside_save = rng.random() < 0.5
  with open(log_path, "w", encoding="utf-8") as log:
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env=_environment())
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline:
      last = (committed_steps(model_dir) or [0])[-1]
      if last >= target and (not inside_save or saving_now(model_dir)):
        break
      if last >= target + 2 * period:  # Saves too quick to catch: kill now (reported as such).
        break
      time.sleep(0.001)
    if not inside_save:
      time.sleep(rng.uniform(0.0, 0.05))
    landed_in_save = saving_now(model_dir)
    finished = process.poll() is not None
    if not finished:
      process.send_signal(signal.SIGKILL)
    process.wait()
  text = log_path.read_text(encoding="utf-8")
  restored = re.findall(r"Restored step (\d+)", text)
  return {"resumed_from": int(restored[-1]) if restored else None, "killed": not finished,
          "inside_save": landed_in_save and not finished, "exit": process.returncode,
          "last_committed_after_kill": (committed_steps(model_dir) or [None])[-1]}


def read_step(model_dir: pathlib.Path, step: int) -> tuple[dict[str, np.ndarray], Any]:
  """The saved state's arrays (by path) and the data position of one step."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  step_dir = model_dir / "checkpoints" / str(step)
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(str(step_dir / "state"))
  tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = checkpointer.restore(str(step_dir / "state"),
                               args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  arrays = {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)}
  data_state = json.loads((step_dir / "data" / "metadata").read_text(encoding="utf-8"))
  return arrays, data_state


def compare(reference: pathlib.Path, chaos: pathlib.Path, step: int) -> dict[str, Any]:
  """Max absolute difference over every saved array, and whether the data positions agree."""
  ref_arrays, ref_data = read_step(reference, step)
  arrays, data_state = read_step(chaos, step)
  if ref_arrays.keys() != arrays.keys():
    return {"same_arrays": False, "max_abs_difference": None, "same_data_position": False}
  difference = max(float(np.max(np.abs(ref_arrays[k].astype(np.float64) -
                                       arrays[k].astype(np.float64)), initial=0.0))
                   for k in arrays)
  return {"same_arrays": True, "arrays": len(arrays), "max_abs_difference": difference,
          "same_data_position": ref_data == data_state, "data_position": data_state}


def run_chaos(workdir: pathlib.Path, kills: int, steps: int, period: int, seed: int,
              echo: bool = True) -> dict[str, Any]:
  """The reference run, ``kills`` killed runs and the finishing run; returns the summary."""
  rng = random.Random(seed)
  reference, chaos = workdir / "reference", workdir / "chaos"
  started = time.time()
  done = subprocess.run(train_command(reference, steps, period), cwd=REPO, env=_environment(),
                        capture_output=True, text=True)
  if done.returncode != 0:
    raise RuntimeError(f"the reference run failed:\n{done.stderr[-3000:]}")
  events = []
  for index in range(kills):
    event = kill_once(train_command(chaos, steps, period), chaos, period, rng,
                      workdir / f"chaos_run_{index}.log")
    events.append(event)
    if echo:
      print(json.dumps({"kill": index + 1, **event}), flush=True)
    if not event["killed"]:
      break
  final = subprocess.run(train_command(chaos, steps, period), cwd=REPO, env=_environment(),
                         capture_output=True, text=True)
  restored = re.findall(r"Restored step (\d+)", final.stderr)
  summary: dict[str, Any] = {
      "kills": sum(e["killed"] for e in events),
      "kills_inside_save": sum(e["inside_save"] for e in events),
      "restarts_that_resumed": sum(e["resumed_from"] is not None for e in events[1:]) + bool(
          restored),
      "final_exit": final.returncode, "final_resumed_from": int(restored[-1]) if restored else None,
      "seconds": round(time.time() - started, 1)}
  if final.returncode == 0:
    summary.update(compare(reference, chaos, steps))
  summary["exact"] = bool(
      final.returncode == 0 and summary.get("same_arrays") and
      summary.get("max_abs_difference") == 0.0 and summary.get("same_data_position") and
      summary["kills"] == kills)
  if echo:
    print(json.dumps(summary), flush=True)
  return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--period", type=int, default=4, help="checkpoint period (steps)")
  parser.add_argument("--steps", type=int, default=None,
                      help="TRAIN_STEPS (default: enough for every kill, period * (4 kills + 2))")
  parser.add_argument("--seed", type=int, default=0, help="seed of the kill timings")
  parser.add_argument("--workdir", default="/tmp/glauber_jax_chaos")
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir).resolve()
  if workdir.exists() and any(workdir.iterdir()):
    parser.error(f"--workdir {workdir} is not empty.")
  workdir.mkdir(parents=True, exist_ok=True)
  steps = args.steps or args.period * (4 * args.kills + 2)
  summary = run_chaos(workdir, args.kills, steps, args.period, args.seed)
  return 0 if summary["exact"] else 1


if __name__ == "__main__":
  sys.exit(main())
