r"""Sampling and likelihood bounds from a Glauber DiT or a baseline checkpoint, with gin.

    python -m glauber_jax.infer --gin_file=gin/ul2_tiny_glauber.gin \
        --checkpoint=runs/ul2_tiny_glauber [--mode=sample|causal|bound] \
        [--gin.infer.num_samples=16] [--gin.infer.prompts="['To be, or not']"]

Modes:

- ``sample``: Algorithm 2 for the Glauber DiT: CAUSAL-GEN of ``L`` tokens at ``t = T``, then
  ``N`` reverse rounds of single-site MASK-INFILL, one compiled program per batch shape. With
  ``gin/ar_tiny.gin`` or ``gin/mdlm_tiny.gin``, the baseline's own sampler.
- ``causal``: the CAUSAL-GEN baseline alone. Pointed at a UL2 checkpoint (no time parameters)
  it is the pre-diffusion baseline; at a Glauber checkpoint the post-diffusion one.
- ``bound``: the likelihood bound (``PPL <= exp(-ELBO / L)``) on the task's held-out split
  (for the causal LM, its exact perplexity).

Samples go to a JSONL file (one line per sample: the prompt, the text, the continuation after
the prompt, token ids, the causal draft, the number of sites the rounds changed, and the
settings) and the first few are printed. Prompts come from ``infer.prompts`` and from
``infer.prompts_file`` (a ``.jsonl`` file with a ``prompt`` field per line, such as the puzzle
files of ``python -m tasks.puzzles``, or a text file with one prompt per line).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # Run as glauber_jax.infer, so gin and the registries see one module.
  from glauber_jax import infer as _entry_point
  sys.exit(_entry_point.main(sys.argv[1:]))

import json
import logging
import math
import os
import time
from typing import Any, Iterator, Optional, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import baselines, checkpoints, data, gin_utils, glauber_model, models, summaries

MODES = ("sample", "causal", "bound")
#: Models this CLI samples from: each has ``sample(params, rng, batch_size, prefix, num_rounds,
#: temperature, top_k, top_p, infill_temperature) -> (draft, final)``, ``seq_len`` and
#: ``vocabulary``. The baselines have no rounds: their draft is their sample.
SamplingModel = (glauber_model.GlauberDiffusionModel, baselines.CausalLMModel,
                 baselines.MDLMModel)


def load_inference_params(model: models.BaseModel, checkpoint: str, batch_size: int
                          ) -> tuple[Any, Any]:
  """``(params, teacher)`` from a run, or from a UL2 / Flan-T5 source checkpoint.

  A source checkpoint lacks the time parameters, which keep their (function-preserving) initial
  values, and has no teacher copy: the parameters then serve as their own teacher (models
  without a teacher get their parameters twice).
  """
  shapes = model.input_shapes(batch_size, {"targets": model.seq_len})
  abstract = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes))
  replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          nn.meta.unbox(abstract["params"]))
  try:
    params = checkpoints.load_params(checkpoint, abstract)
  except checkpoints.CheckpointError:  # A source checkpoint: no time parameters.
    fresh = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"])
    loaded = checkpoints.load_source_params(checkpoint, abstract, model.is_added_param)
    params = checkpoints.merge_params(fresh, loaded)
  try:
    teacher = checkpoints.load_params(checkpoint, abstract, key=("model_state", "teacher"))
  except checkpoints.CheckpointError:
    logging.info("No teacher copy in %s: the parameters are their own teacher.", checkpoint)
    teacher = params
  return params, teacher


def prompt_row_batches(prompt_ids: Sequence[Optional[list[int]]], num_samples: int, batch_size: int
                 ) -> Iterator[list[tuple[int, Optional[list[int]]]]]:
  """Batches of ``(prompt index, prefix ids)`` rows: ``num_samples`` rows per prompt, in prompt
  order, a batch holding rows of one prefix length only (one compiled shape per length)."""
  batch: list[tuple[int, Optional[list[int]]]] = []
  for index, ids in enumerate(prompt_ids):
    for _ in range(num_samples):
      if batch and (len(batch) == batch_size or len(batch[0][1] or ()) != len(ids or ())):
        yield batch
        batch = []
      batch.append((index, ids))
  if batch:
    yield batch


def decode_text(vocab: Any, ids: Sequence[int]) -> str:
  """Text of a sequence that may pack several documents: EOS becomes a blank line."""
  pieces, current = [], []
  for token in ids:
    if token == vocab.eos_id:
      pieces.append(vocab.decode(current))
      current = []
    else:
      current.append(token)
  return "\n\n".join(pieces + [vocab.decode(current)])


def read_prompts(path: str) -> list[str]:
  """Prompts from a file: the ``prompt`` field of each line of a ``.jsonl`` file (as
  ``python -m tasks.puzzles`` writes them), else one prompt per non-empty line."""
  if path.endswith(".jsonl"):
    return [record["prompt"] for record in
            summaries.read_jsonl(path, ("prompt",), "a prompts file")]
  with open(path, encoding="utf-8") as f:
    prompts = [line.rstrip("\n") for line in f if line.strip()]
  if not prompts:
    raise ValueError(f"prompts file {path} holds no prompt.")
  return prompts


def generate(model: Any, params: Any, *, mode: str,
             num_samples: int, batch_size: int, prompts: Sequence[str], num_rounds: Optional[int],
             temperature: float, top_k: int, top_p: float, infill_temperature: float,
             seed: int) -> Iterator[dict[str, Any]]:
  """Yields one JSON-ready record per sample, prompt by prompt (or unconditionally); rows of
  several prompts share a batch when their prefixes have the same number of tokens."""
  has_rounds = isinstance(model, glauber_model.GlauberDiffusionModel)
  rounds = 0 if mode == "causal" and has_rounds else num_rounds
  vocab = model.vocabulary
  if rounds is None:
    rounds = model.schedule.num_rounds if has_rounds else 0
  settings = {"mode": mode, "model": type(model).__name__, "num_rounds": rounds,
              "seq_len": model.seq_len, "temperature": temperature, "top_k": top_k,
              "top_p": top_p, "infill_temperature": infill_temperature, "seed": seed}
  rng = jax.random.PRNGKey(seed)
  prompts = list(prompts) or [None]
  prompt_ids = [None if prompt is None else [int(i) for i in vocab.encode(prompt)]
                for prompt in prompts]
  for index, ids in enumerate(prompt_ids):
    if ids is not None and len(ids) >= model.seq_len:
      logging.warning("prompt %d has %d tokens; its first %d are kept (L = %d).", index,
                      len(ids), model.seq_len - 1, model.seq_len)
      prompt_ids[index] = ids[: model.seq_len - 1]
  for batch_index, batch in enumerate(prompt_row_batches(prompt_ids, num_samples, batch_size)):
    rows, prefix_len = len(batch), len(batch[0][1] or ())
    prefix = jnp.asarray([ids for _, ids in batch], jnp.int32) if prefix_len else None
    start = time.perf_counter()
    draft, final = model.sample(params, jax.random.fold_in(rng, batch_index), rows, prefix,
                                rounds, temperature, top_k, top_p, infill_temperature)
    draft, final = np.asarray(draft), np.asarray(final)
    logging.info("batch of %d in %.2f s", rows, time.perf_counter() - start)
    for row, (prompt_index, _) in enumerate(batch):
      yield {
          "prompt": prompts[prompt_index],
          "text": decode_text(vocab, final[row].tolist()),
          "continuation": decode_text(vocab, final[row, prefix_len:].tolist()),
          "token_ids": final[row].tolist(),
          "causal_draft": decode_text(vocab, draft[row].tolist()),
          "causal_draft_ids": draft[row].tolist(),
          "sites_changed": int(np.sum(draft[row] != final[row])),
          "settings": settings,
      }


def sequence_bound(model: Any, params: Any, teacher: Any, tokens: jax.Array, key: jax.Array
                   ) -> jax.Array:
  """Per-sequence lower bound on ``log p`` (nats, ``[B]``): the Glauber ELBO, MDLM's NELBO
  (negated), or the causal LM's exact log-likelihood."""
  if isinstance(model, glauber_model.GlauberDiffusionModel):
    return model.likelihood_bound(params, teacher, tokens, key)
  if isinstance(model, baselines.MDLMModel):
    return model.likelihood_bound(params, tokens, key)
  return model.log_likelihood(params, tokens)


def likelihood_bound(model: Any, params: Any, teacher: Any, *,
                     task_name: str, split: str, batch_size: int, num_batches: int,
                     num_paths: int, seed: int) -> dict[str, Any]:
  """The ELBO averaged over ``num_batches`` held-out batches and ``num_paths`` forward paths."""
  iterator = data.get_batch_iterator(task_name, split, {"targets": model.seq_len}, batch_size,
                                     seed=seed, shuffle=False, repeat=False)
  totals, count = 0.0, 0
  for batch_index, batch in enumerate(iterator):
    if batch_index >= num_batches:
      break
    tokens = jnp.asarray(batch["targets"])
    for path in range(num_paths):
      key = jax.random.fold_in(jax.random.PRNGKey(seed), batch_index * num_paths + path)
      totals += float(jnp.sum(sequence_bound(model, params, teacher, tokens, key)))
      count += tokens.shape[0]
    logging.info("bound: %d sequences, running PPL <= %.3f", count // num_paths,
                 math.exp(-totals / count / model.seq_len))
  if count == 0:
    raise ValueError(f"task {task_name!r} split {split!r} gave no batch of {batch_size}.")
  elbo = totals / count
  return {"mode": "bound", "task": task_name, "split": split, "sequences": count // num_paths,
          "paths_per_sequence": num_paths, "elbo_nats_per_sequence": elbo,
          "nats_per_token": -elbo / model.seq_len,
          "perplexity_upper_bound": math.exp(-elbo / model.seq_len)}


@gin.configurable
def infer(*, model: models.BaseModel = gin.REQUIRED,
          checkpoint: str = gin.REQUIRED, mode: str = "sample",
          output_file: Optional[str] = None, num_samples: int = 8, batch_size: int = 8,
          prompts: Sequence[str] = (), prompts_file: Optional[str] = None,
          num_rounds: Optional[int] = None,
          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
          infill_temperature: float = 1.0, seed: int = 0, print_samples: int = 3,
          mixture_or_task_name: Optional[str] = None, eval_split: str = "validation",
          num_eval_batches: int = 4, num_paths: int = 1) -> list[dict[str, Any]]:
  """Samples or bounds likelihoods from ``checkpoint``; all arguments come from gin.

  Args:
    model: the run's model (``%MODEL`` of its gin file): the Glauber DiT or a baseline.
    checkpoint: a Glauber run's model dir, or a UL2 / converted Flan-T5 checkpoint.
    mode: ``sample``, ``causal`` or ``bound`` (see the module docstring).
    output_file: JSONL destination (default ``<checkpoint>/infer_<mode>.jsonl``).
    num_samples: samples per prompt (or in all, unconditionally).
    batch_size: rows per compiled call.
    prompts: texts whose tokens are frozen as the prefix; empty: unconditional.
    prompts_file: more prompts, read by ``read_prompts`` (e.g. puzzles to solve).
    num_rounds: reverse rounds (default: the trained ``N``).
    temperature, top_k, top_p: the causal phase's sampling.
    infill_temperature: temperature of the MASK-INFILL draws.
    seed: PRNG seed.
    print_samples: how many samples to print to stdout.
    mixture_or_task_name, eval_split, num_eval_batches, num_paths: the ``bound`` mode's data.
  """
  if mode not in MODES:
    raise ValueError(f"infer.mode={mode!r}; expected one of {MODES}.")
  if not isinstance(model, SamplingModel):
    raise ValueError(f"infer samples from {[m.__name__ for m in SamplingModel]}; the gin files "
                     f"give {type(model).__name__} (use a *_glauber.gin, ar or mdlm file).")
  if prompts_file:
    prompts = [*prompts, *read_prompts(prompts_file)]
  params, teacher = load_inference_params(model, checkpoint, batch_size)
  output_file = output_file or os.path.join(checkpoint, f"infer_{mode}.jsonl")
  if mode == "bound":
    if not mixture_or_task_name:
      raise ValueError("bound mode needs infer.mixture_or_task_name (a task with 'targets').")
    records = [likelihood_bound(model, params, teacher, task_name=mixture_or_task_name,
                                split=eval_split, batch_size=batch_size,
                                num_batches=num_eval_batches, num_paths=num_paths, seed=seed)]
    print(json.dumps(records[0], indent=1))
  else:
    records = []
    for record in generate(model, params, mode=mode, num_samples=num_samples,
                           batch_size=batch_size, prompts=prompts, num_rounds=num_rounds,
                           temperature=temperature, top_k=top_k, top_p=top_p,
                           infill_temperature=infill_temperature, seed=seed):
      records.append(record)
      if len(records) <= print_samples:
        shown = (f"draft: {record['causal_draft']}\nfinal: {record['text']}"
                 if record["sites_changed"] else record["text"])
        print(f"--- sample {len(records)} ({record['sites_changed']} sites changed by the "
              f"rounds)\n{shown}\n", flush=True)
  summaries.write_jsonl(output_file, records)
  return records


def main(argv: Sequence[str]) -> None:
  gin_files, bindings, rest = gin_utils.split_gin_args(argv)
  for arg in rest:
    name, _, value = arg.partition("=")
    if name in ("--checkpoint", "--mode", "--output_file") and value:
      bindings.append(f"infer.{name[2:]} = {json.dumps(value)}")
    else:
      raise SystemExit(__doc__ if arg in ("-h", "--help") else
                       f"unknown flag {arg!r}; see `python -m glauber_jax.infer --help`.")
  if not gin_files:
    raise SystemExit("give the run's --gin_file (e.g. --gin_file=gin/ul2_tiny_glauber.gin).")
  summaries.configure_logging()
  gin_utils.run_configured(gin_files, bindings, infer)
