"""The chaos check, short: two SIGKILLs (one timed inside an asynchronous save when the save
can be caught) and the run still ends bit for bit where an uninterrupted run ends, data
position included. ``experiments/chaos.py --kills=10`` is the long version (docs/status.md)."""

from __future__ import annotations

import importlib.util
import pathlib

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
