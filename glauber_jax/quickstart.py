r"""The whole pipeline on the bundled default, in one command (the README's main job):

    python -m glauber_jax.quickstart [--synthetic] [--model_dir=DIR] [--gin.NAME=value ...]

1. pretrains the tiny UL2 (``gin/ul2_tiny.gin``) on the Shakespeare corpus;
2. turns it into the Glauber DiT and trains that on the Glauber chain
   (``gin/ul2_tiny_glauber.gin``, starting from step 1's checkpoint);
3. samples with Algorithm 2 (CAUSAL-GEN, then MASK-INFILL rounds) and prints a few samples,
   each as its draft, its final text and the number of sites the rounds changed.

``--synthetic`` runs the same stages on the synthetic hidden Markov language
(``gin/synthetic_ul2_tiny.gin``, ``gin/synthetic_ul2_tiny_glauber.gin``: the pre-diffusion UL2
kept as the prior) and ends with 4., the exact judge: the true NLL per token of the drafts and
of the final samples, the rounds' paired change and the data's own NLL. Text at the quick
start's budget has no judge that could show what the rounds do; the synthetic language has an
exact one.

Each stage writes under ``--model_dir`` (default ``runs/quickstart``, ``runs/quickstart_synthetic``
with ``--synthetic``) and resumes if run again; ``--gin.NAME=value`` overrides apply to every
stage (e.g. ``--gin.TRAIN_STEPS=50`` for a smoke run, with ``--gin.ALLOW_CONTEXT_BLIND_TEACHER=True``
since so short a UL2 cannot infill yet).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional, Sequence

import gin

from glauber_jax import gin_utils, infer, summaries, synthetic_judge, train

#: The gin files of each pipeline: (UL2, Glauber DiT).
PIPELINES = {"shakespeare": ("gin/ul2_tiny.gin", "gin/ul2_tiny_glauber.gin"),
             "synthetic": ("gin/synthetic_ul2_tiny.gin", "gin/synthetic_ul2_tiny_glauber.gin")}


def exact_judge_line(records: Sequence[dict[str, Any]],
                     registry: synthetic_judge.SyntheticRegistry) -> str:
  """The exact judge's verdict on Algorithm 2's samples of the synthetic language (under the
  current gin configuration of its tasks): drafts against final samples."""
  language, vocabulary = registry.synthetic_language("hmm"), registry.synthetic_vocabulary("hmm")
  finals = [record["token_ids"] for record in records]
  drafts = [record["causal_draft_ids"] for record in records]
  final = synthetic_judge.exact_judge_row(finals, language, vocabulary, enumerable=False)
  draft = synthetic_judge.exact_judge_row(drafts, language, vocabulary, enumerable=False)
  change = synthetic_judge.paired_nll_change(finals, drafts, language, vocabulary)
  return (f"exact judge, nats/token over {len(records)} samples: CAUSAL-GEN drafts "
          f"{draft['true_nll']:.3f} -> after the rounds {final['true_nll']:.3f} (paired change "
          f"{change['rounds_effect']:+.3f} +- {change['rounds_effect_se']:.3f}; negative is "
          f"closer to the data); data {final['data_nll']:.3f}; token entropy "
          f"{final['entropy']:.3f} (data {final['data_entropy']:.3f})")


def run(model_dir: str, overrides: Sequence[str], pipeline: str = "shakespeare",
        registry: Optional[synthetic_judge.SyntheticRegistry] = None) -> None:
  """Runs the stages in this process (the gin config is reset between them); the synthetic
  pipeline's exact judge needs ``registry``."""
  if pipeline == "synthetic" and registry is None:
    raise ValueError("the synthetic pipeline's exact judge needs the task registry.")
  ul2_gin, glauber_gin = PIPELINES[pipeline]
  ul2_dir = os.path.join(model_dir, "ul2_tiny")
  glauber_dir = os.path.join(model_dir, "ul2_tiny_glauber")
  sample_argv = [f"--gin_file={glauber_gin}", f"--gin.MODEL_DIR='{glauber_dir}'",
                 f"--checkpoint={glauber_dir}"]
  stages = [
      ("UL2 pretraining", train.main,
       [f"--gin_file={ul2_gin}", f"--gin.MODEL_DIR='{ul2_dir}'"]),
      ("Glauber DiT training", train.main,
       [f"--gin_file={glauber_gin}", f"--gin.MODEL_DIR='{glauber_dir}'",
        f"--gin.train.initial_checkpoint='{ul2_dir}'"]),
      ("Glauber sampling", infer.main, sample_argv),
  ]
  num_stages = len(stages) + (pipeline == "synthetic")
  for index, (title, entry_point, argv) in enumerate(stages, 1):
    logging.info("==== %d/%d %s ====", index, num_stages, title)
    gin.clear_config()
    entry_point([*argv, *overrides])
  if pipeline == "synthetic":
    logging.info("==== %d/%d exact judge ====", num_stages, num_stages)
    gin.clear_config()
    records = summaries.read_jsonl(os.path.join(glauber_dir, "infer_sample.jsonl"),
                                   ("token_ids", "causal_draft_ids"), "a Glauber samples file")
    bindings = gin_utils.split_gin_args(overrides)[1]  # The language's settings, if overridden.
    gin_utils.run_configured([glauber_gin], bindings,
                             lambda: print(exact_judge_line(records, registry), flush=True))


def main(argv: Sequence[str]) -> None:
  model_dir = None
  pipeline = "shakespeare"
  overrides = []
  for arg in argv:
    if arg.startswith("--model_dir="):
      model_dir = arg.split("=", 1)[1]
    elif arg == "--synthetic":
      pipeline = "synthetic"
    elif arg.startswith("--gin."):
      overrides.append(arg)
    else:
      raise SystemExit(__doc__)
  default_dir = "runs/quickstart" if pipeline == "shakespeare" else "runs/quickstart_synthetic"
  from tasks import registry  # pylint: disable=import-outside-toplevel
  run(model_dir or default_dir, overrides, pipeline, registry)


if __name__ == "__main__":
  main(sys.argv[1:])
