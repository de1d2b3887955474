"""What the benchmarks of bench/ share: timing, device memory, MFU fields and the JSON line.

Every benchmark prints one JSON line per figure (``emit``). Utilisation is reported against
two peaks: the chip's bf16 matmul peak measured in the same run (``bench/matmul_peak.py``,
passed as ``--measured_peak_flops``) and the data-sheet peak of ``glauber_jax.throughput``.
``--profile_dir`` adds a profiler trace of one more call. Peak device memory is the process's
peak (each stage runs in a process of its own, ``bench/gpu_all.py``); None where the backend
does not report it (CPUs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from typing import Any, Callable, Optional


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
  """``--measured_peak_flops`` and ``--time_budget``, which every stage accepts."""
  parser.add_argument("--measured_peak_flops", type=float, default=None,
                      help="the chip's measured bf16 matmul FLOP/s (bench/matmul_peak.py)")
  parser.add_argument("--time_budget", type=float, default=math.inf,
                      help="seconds this stage may take; it times fewer repeats, or "
                           "extrapolates, rather than overrun")
  parser.add_argument("--profile_dir", default=None,
                      help="write a JAX profiler trace of one extra, untimed call here")


def traced(fn: Callable[[], Any], profile_dir: Optional[str]) -> None:
  """One untimed call of ``fn`` under the JAX profiler, written to ``profile_dir`` (if set):
  where the time of a figure goes (kernels, loop, host syncs), for TensorBoard or Perfetto.
  Called after the figures are printed; a profiler that cannot start is reported on stderr."""
  if not profile_dir:
    return
  import jax

  try:
    with jax.profiler.trace(profile_dir):
      jax.block_until_ready(fn())
  except Exception as error:  # pylint: disable=broad-except  A diagnostic, after the figures.
    print(f"no profiler trace: {error!r}", file=sys.stderr)


def timed(fn: Callable[[], Any], sync: Callable[[Any], Any], repeats: int
          ) -> tuple[float, float]:
  """``(first_call_seconds, mean_seconds_per_later_call)`` of ``fn``; ``sync`` waits for a
  result (``jax.block_until_ready``, or a CUDA synchronisation)."""
  start = time.perf_counter()
  sync(fn())
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(repeats):
    sync(fn())
  return first, (time.perf_counter() - start) / max(repeats, 1)


def repeats_within(seconds_per_call: float, budget_seconds: float, wanted: int) -> int:
  """How many of ``wanted`` repeats fit ``budget_seconds`` (at least 1)."""
  if seconds_per_call <= 0 or math.isinf(budget_seconds):
    return wanted
  return max(1, min(wanted, int(budget_seconds / seconds_per_call)))


def jax_peak_memory_bytes() -> Optional[int]:
  """The first device's ``peak_bytes_in_use`` in this process; None where unreported."""
  import jax

  stats = jax.devices()[0].memory_stats()
  return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def datasheet_peak(device_kind: str) -> Optional[float]:
  """``glauber_jax.throughput``'s data-sheet bf16 peak for a device name (torch's or jax's)."""
  from glauber_jax import throughput

  for name, flops in throughput.PEAK_BF16_FLOPS.items():
    if name.lower() in device_kind.lower():
      return flops
  return None


def significant(value: float, digits: int = 4) -> float:
  """``value`` rounded to ``digits`` significant digits (tiny and huge figures alike)."""
  return float(f"{value:.{digits}g}")


def utilisation(flops_per_second: float, measured_peak: Optional[float],
                datasheet_peak: Optional[float]) -> dict[str, Optional[float]]:
  """Model TFLOP/s and MFU against the measured and the data-sheet peaks (None if unknown)."""
  return {
      "model_tflops_per_second": significant(flops_per_second / 1e12),
      "mfu_vs_measured_peak": (None if not measured_peak else
                               significant(flops_per_second / measured_peak)),
      "mfu_vs_datasheet_peak": (None if not datasheet_peak else
                                significant(flops_per_second / datasheet_peak)),
  }


def emit(benchmark: str, system: str, device: str, **fields: Any) -> None:
  """Prints one JSON line: the benchmark, whose system (``ours`` / ``peer``), device, date."""
  line = {"benchmark": benchmark, "system": system, "device": device,
          "date": datetime.date.today().isoformat(), **fields}
  print(json.dumps(line), flush=True)
