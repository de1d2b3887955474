r"""The command line of ``glauber_jax.data``: list the registered tasks, or export one.

    python -m glauber_jax.data list
    python -m glauber_jax.data export --task=TASK --split=train --lengths=targets:64 \
        --output_dir=DIR [--seed=0] [--num_epochs=1 | --num_examples=N] [--noshuffle] \
        [--gin_file=PATH] [--gin.NAME=VALUE ...]

``export`` writes ``data.export_task``'s NumPy shards. The task registrations (``tasks``) are
imported here, before gin reads the bindings that configure them: the command line imports
them, the library (``glauber_jax.data``) never does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from glauber_jax import data, errors, gin_utils, summaries


def _parse_lengths(text: str) -> dict[str, int]:
  try:
    return {name: int(value) for name, value in (part.split(":") for part in text.split(","))}
  except ValueError:
    raise SystemExit(f"--lengths must look like inputs:512,targets:128, got {text!r}.") from None


def describe() -> str:
  """One line per registered task and mixture."""
  lines = [f"{name:28s} {data.get_task(name).preprocessor:10s} "
           f"{data.get_task(name).description}" for name in data.registered_task_names()]
  for name in data.registered_mixture_names():
    parts = ", ".join(f"{task} ({rate:g})" for task, rate in data.get_mixture(name).tasks)
    lines.append(f"{name:28s} {'mixture':10s} {parts}")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """``list`` the registered tasks, or ``export`` one (``--gin.NAME=VALUE`` bindings allowed,
  e.g. ``--gin.openwebtext_path.path="'/data/owt'"``)."""
  import tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  gin_files, bindings, rest = gin_utils.split_gin_args(list(argv or ()))
  parser = argparse.ArgumentParser(prog="python -m glauber_jax.data",
                                   description="List tasks or export one to NumPy shards.")
  commands = parser.add_subparsers(dest="command", required=True)
  commands.add_parser("list", help="registered tasks and mixtures")
  export = commands.add_parser("export", help="materialise a task's examples")
  export.add_argument("--task", required=True)
  export.add_argument("--split", default="train")
  export.add_argument("--lengths", required=True, help="e.g. inputs:512,targets:128")
  export.add_argument("--output_dir", required=True)
  export.add_argument("--seed", type=int, default=0)
  export.add_argument("--num_epochs", type=int, default=1)
  export.add_argument("--num_examples", type=int, default=None,
                      help="stop after this many examples (instead of whole epochs)")
  export.add_argument("--noshuffle", dest="shuffle", action="store_false")
  args = parser.parse_args(rest)
  summaries.configure_logging()
  if args.command == "list":
    print(describe())
    return
  lengths = _parse_lengths(args.lengths)
  with errors.one_line_errors():
    gin_utils.parse_gin(gin_files, bindings)
    data.export_task(args.task, args.split, lengths, args.output_dir,
                     seed=args.seed, num_epochs=args.num_epochs, num_examples=args.num_examples,
                     shuffle=args.shuffle)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
