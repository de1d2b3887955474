"""The testbed's command line (the package's docstring): ``python -m glauber_jax.testbed``.

The configurables live in ``glauber_jax.testbed.config``, which the package imports before this
module runs as ``__main__``, so gin and the registries see them once, as the preset files'
``import glauber_jax.testbed`` does. The task registrations (``tasks``) are imported here, in
``main``, before gin reads a binding, and handed to the runner.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any, Sequence

from glauber_jax import gin_utils, summaries, testbed
from glauber_jax.testbed.config import PRESETS, VARIANTS
from glauber_jax.testbed.runner import Testbed


def main(argv: Sequence[str]) -> list[dict[str, Any]]:
  """The command line (the package's docstring); returns the table's rows."""
  preset, out, variant, seed, rows = None, None, "both", None, None
  overrides: list[str] = []
  _, bindings, rest = gin_utils.split_gin_args(argv)
  overrides.extend(bindings)
  for arg in rest:
    name, _, value = arg.partition("=")
    if name == "--preset" and value:
      preset = value
    elif name == "--out" and value:
      out = value
    elif name == "--variant" and value:
      variant = value
    elif name == "--language_seed" and value:
      seed = int(value)
    elif name == "--rows" and value:
      rows = value.split(",")
    else:
      raise SystemExit(testbed.__doc__ if arg in ("-h", "--help") else
                       f"unknown flag {arg!r}; see `python -m glauber_jax.testbed --help`.")
  if preset not in PRESETS:
    raise SystemExit(f"--preset must be one of {PRESETS}, got {preset!r}.")
  if not out:
    raise SystemExit("give --out=DIR (the table and every run go there).")
  if variant not in (*VARIANTS, "both"):
    raise SystemExit(f"--variant must be hmm, enum or both, got {variant!r}.")
  if seed is not None:  # Before the user's bindings, which win.
    overrides[:0] = [f"synthetic_language_config.seed = {seed}",
                     f"synthetic_enum_config.seed = {seed}"]
  summaries.configure_logging()
  from tasks import registry  # pylint: disable=import-outside-toplevel
  command = "python -m glauber_jax.testbed " + " ".join(shlex.quote(a) for a in argv)
  bed = Testbed(preset, out, VARIANTS if variant == "both" else (variant,), overrides, command,
                registry, rows)
  table = bed.run_all()
  bed.log(f"wrote {os.path.join(bed.out, 'table.json')} and table.md")
  with open(os.path.join(bed.out, "table.md"), encoding="utf-8") as f:
    print(f.read(), flush=True)
  return table


if __name__ == "__main__":
  main(sys.argv[1:])
