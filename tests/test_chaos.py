"""The chaos check, short: two SIGKILLs (one timed inside an asynchronous save when the save
can be caught) and the run still ends bit for bit where an uninterrupted run ends, data
position included; the same command once more then has nothing to do and says so.
``experiments/chaos.py --kills=10`` is the long version (docs/status.md)."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def _chaos_module():
  spec = importlib.util.spec_from_file_location("chaos", REPO / "experiments" / "chaos.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_two_sigkills_resume_exactly(tmp_path: pathlib.Path) -> None:
  chaos = _chaos_module()
  summary = chaos.run_chaos(tmp_path, kills=2, steps=40, period=4, seed=0, echo=False)
  assert summary["kills"] == 2, summary
  assert summary["final_exit"] == 0 and summary["final_resumed_from"] is not None, summary
  assert summary["same_arrays"] and summary["max_abs_difference"] == 0.0, summary
  assert summary["same_data_position"], summary
  assert summary["exact"], summary
  chaos_dir = tmp_path / "chaos"
  assert (chaos_dir / "config.gin").exists()
  again = subprocess.run(chaos.train_command(chaos_dir, 40, 4), cwd=REPO, capture_output=True,
                         text=True, env=chaos._environment())  # pylint: disable=protected-access
  assert again.returncode == 0 and "nothing to do" in again.stderr  # Finished: says so.
