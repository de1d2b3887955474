r"""Held-out reverse cross entropy of a Glauber run, round by round, against its teacher's.

    python experiments/reverse_cross_entropy.py --run_dir=DIR [--num_sequences=1024] \
        [--batch_size=256] [--split=validation]

Reads the run's operative gin configuration (``DIR/config.gin``, written by ``train``), loads
its parameters and frozen teacher with ``infer.load_inference_params``, draws held-out rows of
its task, runs the forward chain with the teacher's kernel (``GlauberProcess.teacher_log_probs``,
``glauber.forward_step``) for ``t = 1..T``, and scores the value each step overwrote under the
student's reverse kernel at time ``t`` and under the teacher's at the same ``t`` (the DiT before
Glauber training, whose output does not depend on ``t``). Prints, per round, the mean cross
entropy of both (nats) and the prior's NLL on the rows. The rounds can only improve a draft
where the student's reverse kernel beats the teacher's conditional (``docs/results.md``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np

import tasks  # noqa: F401  Registers the task the run trained on.
from glauber_jax import data, gin_utils, infer, train  # noqa: F401  train: its configurables.
from glauber_jax.processes import glauber


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run_dir", required=True)
  parser.add_argument("--num_sequences", type=int, default=1024)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--split", default="validation")
  args = parser.parse_args(argv)
  gin_utils.parse_gin([os.path.join(args.run_dir, "config.gin")], [])
  model = gin.query_parameter("train.model").scoped_configurable_fn()
  process, denoiser = model.process, model.denoiser
  params, state = infer.load_inference_params(model, args.run_dir, args.batch_size)
  teacher = state["teacher"]
  task = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
  batches = data.get_batch_iterator(task, args.split, {"targets": model.seq_len},
                                    args.batch_size, seed=1, shuffle=False, repeat=False)
  sites = jnp.asarray(process.schedule.sites())
  seq_len, num_steps = model.seq_len, process.num_steps

  @jax.jit
  def chain_scores(tokens: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-step reverse cross entropies ``[T, B]`` of the student and the teacher, and the
    prior's per-token NLL ``[B]``."""
    teacher_fn = functools.partial(process.teacher_log_probs, denoiser, teacher)

    def step(x: jax.Array, t: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
      site = jnp.full((x.shape[0],), sites[t - 1], jnp.int32)
      previous = glauber.get_sites(x, site)[:, None]
      x_next = glauber.forward_step(jax.random.fold_in(rng, t), x, site, teacher_fn(x, site))
      student = process.infill_log_probs(denoiser, params, x_next, site,
                                         jnp.full_like(site, t))
      reference = process.infill_log_probs(denoiser, teacher, x_next, site,
                                           jnp.full_like(site, t))
      return x_next, (-jnp.take_along_axis(student, previous, axis=-1)[:, 0],
                      -jnp.take_along_axis(reference, previous, axis=-1)[:, 0])

    _, (student, reference) = jax.lax.scan(step, tokens,
                                           jnp.arange(1, num_steps + 1, dtype=jnp.int32))
    prior = -process.prior_log_prob(denoiser, params, tokens) / seq_len
    return student, reference, prior

  student, reference, prior = [], [], []
  seen = 0
  for index, batch in enumerate(batches):
    if seen >= args.num_sequences:
      break
    scores = chain_scores(jnp.asarray(batch["targets"]), jax.random.PRNGKey(index))
    for store, value in zip((student, reference, prior), scores):
      store.append(np.asarray(value))
    seen += batch["targets"].shape[0]
  if not seen:
    raise SystemExit(f"task {task!r} split {args.split!r} gave no batch of {args.batch_size}.")
  student = np.concatenate(student, axis=1).reshape(process.schedule.num_rounds, seq_len, -1)
  reference = np.concatenate(reference, axis=1).reshape(process.schedule.num_rounds, seq_len,
                                                         -1)
  print(f"{seen} held-out sequences of {task!r}; prior NLL {np.concatenate(prior).mean():.3f} "
        "nats/token")
  for n in range(process.schedule.num_rounds):
    print(f"round {n + 1}: reverse cross entropy {student[n].mean():.3f} nats (the teacher's "
          f"MASK-INFILL as the reverse kernel: {reference[n].mean():.3f})")


if __name__ == "__main__":
  main(sys.argv[1:])
