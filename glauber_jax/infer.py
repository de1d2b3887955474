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

The CLI knows models only through ``models.BaseModel``'s sampling interface: ``sample`` with
the model's own sampler options (``infer.temperature``/``top_k``/``top_p`` for every sampler,
the rest by name in ``infer.sampler_options``, e.g. ``{'num_rounds': 1}`` for the Glauber DiT or
``{'num_steps': 64}`` for MDLM; a name the model's sampler lacks is an error listing the valid
ones), ``likelihood_bound`` and the checkpoint-metadata check (a Glauber checkpoint's
permutations must match the configured ones).

Samples go to a JSONL file (one line per sample: the prompt, the text, the continuation after
the prompt, token ids, for a sampler with a draft (the Glauber DiT) the causal draft and the
number of sites the rounds changed, and the settings) and the first few are printed. Prompts
come from ``infer.prompts`` and from ``infer.prompts_file`` (a ``.jsonl`` file with a
``prompt`` field per line, such as the puzzle files of ``python -m tasks.puzzles``, or a text
file with one prompt per line).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # Run as glauber_jax.infer, so gin and the registries see one module.
  from glauber_jax import infer as _entry_point
  sys.exit(_entry_point.main(sys.argv[1:]))

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import checkpoints, data, gin_utils, models, sampling, summaries

MODES = ("sample", "causal", "bound")


def load_inference_params(model: models.BaseModel, checkpoint: str, batch_size: int
                          ) -> tuple[Any, dict[str, Any]]:
  """``(params, inference_state)`` from a run, or from a UL2 / Flan-T5 source checkpoint.

  The checkpoint's metadata must agree with the configured model
  (``model.check_checkpoint_metadata``: a Glauber run's permutations). A source checkpoint
  lacks the time parameters, which keep their (function-preserving) initial values, and has no
  model state: each of ``model.inference_state_names`` it lacks (the Glauber teacher copy) is
  the parameters themselves.
  """
  model.check_checkpoint_metadata(checkpoints.load_metadata(checkpoint))
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
  inference_state = {}
  for name in model.inference_state_names:
    try:
      inference_state[name] = checkpoints.load_params(checkpoint, abstract,
                                                      key=("model_state", name))
    except checkpoints.CheckpointError:
      logging.info("No %s in %s: the parameters stand in for it.", name, checkpoint)
      inference_state[name] = params
  return params, inference_state


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


def generate(model: models.BaseModel, params: Any, inference_state: Mapping[str, Any], *,
             mode: str, num_samples: int, batch_size: int, prompts: Sequence[str],
             options: sampling.SamplerOptions, seed: int) -> Iterator[dict[str, Any]]:
  """Yields one JSON-ready record per sample, prompt by prompt (or unconditionally); rows of
  several prompts share a batch when their prefixes have the same number of tokens.
  ``options`` are the model's checked sampler options (``model.sampler_options``),
  ``inference_state`` the checkpoint's (``load_inference_params``)."""
  vocab = model.vocabulary
  settings = {"mode": mode, "model": model.name, "seq_len": model.seq_len,
              **dataclasses.asdict(options), "seed": seed}
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
    samples = model.sample_with(params, jax.random.fold_in(rng, batch_index), rows, prefix,
                                options, inference_state)
    final = np.asarray(samples.final)
    draft = None if samples.draft is None else np.asarray(samples.draft)
    logging.info("batch of %d in %.2f s", rows, time.perf_counter() - start)
    for row, (prompt_index, _) in enumerate(batch):
      record = {
          "prompt": prompts[prompt_index],
          "text": decode_text(vocab, final[row].tolist()),
          "continuation": decode_text(vocab, final[row, prefix_len:].tolist()),
          "token_ids": final[row].tolist(),
      }
      if draft is not None:
        record.update({
            "causal_draft": decode_text(vocab, draft[row].tolist()),
            "causal_draft_ids": draft[row].tolist(),
            "sites_changed": int(np.sum(draft[row] != final[row])),
        })
      yield {**record, "settings": settings}


def likelihood_bound(model: models.BaseModel, params: Any, inference_state: Mapping[str, Any], *,
                     task_name: str, split: str, batch_size: int, num_batches: int,
                     num_paths: int, seed: int) -> dict[str, Any]:
  """``model.likelihood_bound`` averaged over ``num_batches`` held-out batches and ``num_paths``
  draws (forward paths) per sequence."""
  iterator = data.get_batch_iterator(task_name, split, {"targets": model.seq_len}, batch_size,
                                     seed=seed, shuffle=False, repeat=False)
  totals, count = 0.0, 0
  for batch_index, batch in enumerate(iterator):
    if batch_index >= num_batches:
      break
    tokens = jnp.asarray(batch["targets"])
    for path in range(num_paths):
      key = jax.random.fold_in(jax.random.PRNGKey(seed), batch_index * num_paths + path)
      totals += float(jnp.sum(model.likelihood_bound(params, tokens, key, inference_state)))
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
          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
          sampler_options: Optional[Mapping[str, Any]] = None, seed: int = 0,
          print_samples: int = 3,
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
    temperature, top_k, top_p: every sampler's draws (the Glauber DiT: its causal phase).
    sampler_options: the model's other sampler options by name (``sampling.SamplerOptions``
      subclasses): ``num_rounds`` (default: the trained ``N``) and ``infill_temperature`` for
      the Glauber DiT, ``num_steps`` for MDLM.
    seed: PRNG seed.
    print_samples: how many samples to print to stdout.
    mixture_or_task_name, eval_split, num_eval_batches, num_paths: the ``bound`` mode's data.
  """
  if mode not in MODES:
    raise ValueError(f"infer.mode={mode!r}; expected one of {MODES}.")
  options = model.sampler_options({"temperature": temperature, "top_k": top_k, "top_p": top_p,
                                   **(sampler_options or {})})
  if mode == "causal":
    options = model.draft_options(options)
  if prompts_file:
    prompts = [*prompts, *read_prompts(prompts_file)]
  params, inference_state = load_inference_params(model, checkpoint, batch_size)
  output_file = output_file or os.path.join(checkpoint, f"infer_{mode}.jsonl")
  if mode == "bound":
    if not mixture_or_task_name:
      raise ValueError("bound mode needs infer.mixture_or_task_name (a task with 'targets').")
    records = [likelihood_bound(model, params, inference_state, task_name=mixture_or_task_name,
                                split=eval_split, batch_size=batch_size,
                                num_batches=num_eval_batches, num_paths=num_paths, seed=seed)]
    print(json.dumps(records[0], indent=1))
  else:
    records = []
    for record in generate(model, params, inference_state, mode=mode, num_samples=num_samples,
                           batch_size=batch_size, prompts=prompts, options=options, seed=seed):
      records.append(record)
      if len(records) <= print_samples:
        changed = record.get("sites_changed")
        if changed is None:
          print(f"--- sample {len(records)}\n{record['text']}\n", flush=True)
        else:
          shown = (f"draft: {record['causal_draft']}\nfinal: {record['text']}" if changed
                   else record["text"])
          print(f"--- sample {len(records)} ({changed} sites changed by the rounds)\n"
                f"{shown}\n", flush=True)
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
  # The tasks gin names (MIXTURE_OR_TASK_NAME) register on import; the command line imports
  # them, the library never does.
  import tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  gin_utils.run_configured(gin_files, bindings, infer)
