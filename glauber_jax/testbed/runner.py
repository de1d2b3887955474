"""The testbed's runner: trains, samples and judges every row of one invocation under gin.

Each run goes through the library's own entry points (``train.train``, ``infer.infer``) with the
row's gin files and bindings, in this process; the synthetic tasks' registry functions come in
from the command line (``synthetic_judge.SyntheticRegistry``), as the library never imports
``tasks``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import gin_utils, infer, summaries, synthetic, synthetic_judge, train
from glauber_jax.processes import hybrid_process
from glauber_jax.testbed import oracle, report
from glauber_jax.testbed.config import (BASELINE_FILES, ROUNDS_KINDS, ROWS, UL2_KINDS, Budget,
                                        Row, VariantSetup, compile_options, configured_model,
                                        perturbation)


class Testbed:
  """Runs the rows of one invocation and collects the table.

  Args:
    preset: the preset (``gin/testbed/<preset>.gin``).
    out: the directory of the table and every run.
    variants: the variants to run, of ``VARIANTS``.
    overrides: gin bindings every run applies last.
    command: the command line, for the table's header.
    registry: the synthetic tasks' functions (``tasks.registry``, from the command line).
    rows: the rows to run (all of ``ROWS`` if None).
  """

  def __init__(self, preset: str, out: str, variants: Sequence[str], overrides: Sequence[str],
               command: str, registry: synthetic_judge.SyntheticRegistry,
               rows: Optional[Sequence[str]] = None) -> None:
    self.preset = preset
    self.out = os.path.abspath(out)
    self.variants = list(variants)
    self.overrides = list(overrides)
    self.command = command
    self.registry = registry
    self.rows = list(ROWS) if rows is None else list(rows)
    unknown = [name for name in self.rows if name not in ROWS]
    if unknown:
      raise SystemExit(f"unknown rows {unknown}; the rows are {list(ROWS)}.")
    # Every run reads the gin files from a snapshot of gin/ taken at the start (DIR/gin), so
    # the whole invocation sees one configuration even if gin/ changes while it runs.
    self.gin_dir = os.path.join(self.out, "gin")
    self.preset_file = self.gin_path(f"testbed/{preset}.gin")
    self.glauber_file = self.gin_path("testbed/glauber.gin")
    self.start = time.perf_counter()

  # -- gin plumbing

  def gin_path(self, name: str) -> str:
    return os.path.join(self.gin_dir, name)

  def snapshot_gin(self) -> None:
    if os.path.isdir(self.gin_dir):
      shutil.rmtree(self.gin_dir)
    shutil.copytree(gin_utils.GIN_DIR, self.gin_dir)

  @contextlib.contextmanager
  def snapshot_first(self) -> Iterator[None]:
    """Includes (``include 'models/glauber.gin'``) resolve in the snapshot first: gin searches
    its location prefixes in order (``gin.config._LOCATION_PREFIXES``, ``''`` first)."""
    prefixes = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
    prefixes.insert(1, self.gin_dir)
    try:
      yield
    finally:
      prefixes.remove(self.gin_dir)

  def config_digest(self, gin_files: Sequence[str], bindings: Sequence[str]) -> str:
    """A digest of the configuration a run parses (every binding of every included file), so a
    rerun reuses a row only if its configuration is unchanged."""
    gin.clear_config()
    try:
      gin_utils.parse_gin([*gin_files, self.preset_file],
                          [*bindings, *self.overrides, "configured_model.model = %MODEL"])
      return hashlib.sha256(gin.config_str().encode("utf-8")).hexdigest()[:16]
    finally:
      gin.clear_config()

  def log(self, message: str) -> None:
    print(f"[testbed {time.perf_counter() - self.start:7.1f}s] {message}", flush=True)

  def run(self, gin_files: Sequence[str], bindings: Sequence[str],
          entry_point: Callable[[], Any]) -> Any:
    """Parses ``gin_files`` + the preset + ``bindings`` + the user's overrides, runs
    ``entry_point`` and clears the configuration."""
    gin.clear_config()
    try:
      return gin_utils.run_configured(
          [*gin_files, self.preset_file], [*bindings, *self.overrides,
                                           "configured_model.model = %MODEL"], entry_point)
    finally:
      gin.clear_config()

  def variant_setup(self, variant: str) -> VariantSetup:
    """The variant's lengths and vocabulary under the current gin configuration."""
    from glauber_jax import denoisers  # pylint: disable=import-outside-toplevel

    def query() -> VariantSetup:
      config = self.registry.synthetic_config(variant)
      length = config.sequence_length
      mixture = denoisers.ul2_denoisers()
      inputs = length + 2
      while denoisers.largest_chunk_length(mixture, inputs, length + 1) < length:
        inputs += 1
        if inputs > 8 * length + 64:
          raise ValueError(f"no UL2 inputs length makes a chunk of {length} tokens.")
      chunk = denoisers.largest_chunk_length(mixture, inputs, length + 1)
      if chunk != length:
        raise ValueError(f"the UL2 chunk is {chunk} tokens, not one sequence of {length}: keep "
                         "the S-denoiser in the mixture (it caps the chunk at targets - 1).")
      with gin.config_scope(variant):
        budget = Budget()
      prefix = "synthetic" if variant == "hmm" else "synthetic_enum"
      return VariantSetup(variant, f"{prefix}_lm", f"{prefix}_ul2", length,
                          {"inputs": inputs, "targets": length + 1},
                          self.registry.synthetic_vocabulary(variant).vocab_size, budget)

    gin.clear_config()
    try:
      gin_utils.parse_gin([self.gin_path("ul2_tiny.gin"), self.preset_file], self.overrides)
      return query()
    finally:
      gin.clear_config()

  # -- stages

  def train(self, gin_files: Sequence[str], bindings: Sequence[str], feature_lengths: dict
            ) -> dict[str, Any]:
    """Trains (or resumes, or finds finished) one run; returns its compute."""
    start = time.perf_counter()

    def entry() -> dict[str, Any]:
      result = train.train(show_progress=False)
      model = configured_model()
      steps, batch = int(gin.query_parameter("%TRAIN_STEPS")), int(
          gin.query_parameter("%BATCH_SIZE"))
      return {"parameters": int(sum(x.size for x in jax.tree.leaves(result.state.params))),
              "train_steps": steps, "batch_size": batch,
              "train_flops": float(model.num_flops_per_example(feature_lengths) * steps * batch),
              "last_metrics": result.last_metrics}

    compute = self.run(gin_files, bindings, entry)
    compute["seconds"] = time.perf_counter() - start
    return compute

  def sample(self, gin_files: Sequence[str], bindings: Sequence[str], checkpoint: str,
             mode: str, output_file: str, budget: Budget) -> tuple[list[dict[str, Any]], Any]:
    """Samples ``budget.num_samples`` sequences with ``infer``; returns the records and the
    model (for its vocabulary and sampling cost)."""

    def entry() -> tuple[list[dict[str, Any]], Any]:
      return infer.infer(), configured_model()

    return self.run(gin_files, [
        *bindings, f"infer.checkpoint = {json.dumps(checkpoint)}", f"infer.mode = '{mode}'",
        f"infer.output_file = {json.dumps(output_file)}",
        f"infer.num_samples = {budget.num_samples}",
        f"infer.batch_size = {budget.sample_batch_size}", "infer.print_samples = 0"], entry)

  def parameter_count(self, gin_files: Sequence[str], bindings: Sequence[str]) -> int:
    """Parameters of the configured model (for rows that train nothing of their own)."""

    def entry() -> int:
      model = configured_model()
      shapes = model.input_shapes(1, {"targets": model.seq_len})
      variables = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0),
                                                                     shapes))
      import flax.linen as nn  # pylint: disable=import-outside-toplevel
      return int(sum(x.size for x in jax.tree.leaves(nn.meta.unbox(variables["params"]))))

    return self.run(gin_files, bindings, entry)

  # -- rows

  def row_dir(self, variant: str, name: str) -> str:
    return os.path.join(self.out, variant, name)

  def check_spec(self, directory: str, spec: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The finished row in ``directory`` if its spec matches; raises if it differs."""
    os.makedirs(directory, exist_ok=True)
    spec = json.loads(json.dumps(spec))  # Tuples as lists, as read back.
    spec_path = os.path.join(directory, "spec.json")
    if os.path.exists(spec_path):
      with open(spec_path, encoding="utf-8") as f:
        previous = json.load(f)
      if previous != spec:
        raise SystemExit(f"{directory} was made with another configuration ({spec_path}); "
                         "delete it or use another --out.")
    else:
      with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=1)
    row_path = os.path.join(directory, "row.json")
    if os.path.exists(row_path):
      with open(row_path, encoding="utf-8") as f:
        return json.load(f)
    return None

  def ul2(self, setup: VariantSetup) -> dict[str, Any]:
    """The variant's UL2 (trained once, shared by the prior, Glauber and oracle rows)."""
    directory = self.row_dir(setup.name, "ul2")
    files, bindings = self.ul2_config(setup, directory)
    done = self.check_spec(directory, {"gin_files": files, "bindings": bindings,
                                       "overrides": self.overrides,
                                       "config": self.config_digest(files, bindings)})
    if done is not None:
      return done
    self.log(f"{setup.name}/ul2: UL2 pretraining, {setup.budget.ul2_steps} steps")
    compute = self.train(files, bindings, setup.ul2_lengths)
    self.log(f"{setup.name}/ul2: done in {compute['seconds']:.0f} s "
             f"({compute['parameters']:,} parameters)")
    with open(os.path.join(directory, "row.json"), "w", encoding="utf-8") as f:
      json.dump(compute, f, indent=1)
    return compute

  def ul2_config(self, setup: VariantSetup, directory: str) -> tuple[list[str], list[str]]:
    return [self.gin_path("ul2_tiny.gin")], [
        *setup.ul2_bindings(), f"MODEL_DIR = {json.dumps(directory)}",
        f"TRAIN_STEPS = {setup.budget.ul2_steps}", f"BATCH_SIZE = {setup.budget.batch_size}"]

  def glauber_config(self, setup: VariantSetup, row: Row, directory: str
                     ) -> tuple[list[str], list[str]]:
    ul2_dir = self.row_dir(setup.name, "ul2")
    return [self.gin_path("ul2_tiny_glauber.gin"), self.glauber_file], [
        *setup.lm_bindings(), f"MODEL_DIR = {json.dumps(directory)}",
        f"TRAIN_STEPS = {setup.budget.glauber_steps}", f"BATCH_SIZE = {setup.budget.batch_size}",
        f"train.initial_checkpoint = {json.dumps(ul2_dir)}", *row.bindings]

  def run_row(self, setup: VariantSetup, name: str, row: Row,
              finished: dict[str, dict[str, Any]]) -> dict[str, Any]:
    directory = self.row_dir(setup.name, name)
    budget = setup.budget
    if row.kind in BASELINE_FILES:
      files = [self.gin_path(BASELINE_FILES[row.kind])]
      source_bindings = () if row.source is None else ROWS[row.source].bindings
      bindings = [*setup.lm_bindings(), f"MODEL_DIR = {json.dumps(directory)}",
                  f"TRAIN_STEPS = {budget.baseline_steps}", f"BATCH_SIZE = {budget.batch_size}",
                  *source_bindings, *row.bindings]
    elif row.kind in ("prior", "glauber"):
      files, bindings = self.glauber_config(setup, row, directory)
    elif row.kind == "perturbed":
      files, bindings = [self.gin_path("ul2_tiny.gin")], list(row.bindings)
    else:
      source = ROWS[row.source]
      files, bindings = self.glauber_config(setup, source, self.row_dir(setup.name, row.source))
      bindings = [*bindings, *row.bindings]
    spec = {"row": dataclasses.asdict(row), "gin_files": files, "bindings": bindings,
            "overrides": self.overrides, "budget": dataclasses.asdict(budget),
            "config": self.config_digest(files, bindings)}
    done = self.check_spec(directory, spec)
    if done is not None:
      self.log(f"{setup.name}/{name}: finished before, reused ({directory}/row.json)")
      return done
    start = time.perf_counter()
    ul2 = finished.get("ul2")  # Trained when a selected row reads it (``UL2_KINDS``).
    compute: dict[str, Any] = {}
    samples_file = os.path.join(directory, "samples.jsonl")
    if row.kind in BASELINE_FILES:
      if row.source is None:
        self.log(f"{setup.name}/{name}: training, {budget.baseline_steps} steps")
        compute = self.train(files, bindings, {"targets": setup.seq_len})
        checkpoint = directory
        train_detail = f"{compute['train_steps']} x {compute['batch_size']}"
      else:  # Another sampler on the source row's checkpoint.
        if row.source not in finished:
          raise ValueError(f"row {name} samples the checkpoint of the row {row.source!r}; run "
                           "it before this one.")
        compute = {key: finished[row.source][key] for key in
                   ("parameters", "train_steps", "batch_size", "train_flops")}
        checkpoint = self.row_dir(setup.name, row.source)
        train_detail = f"the checkpoint of {row.source}"
      self.log(f"{setup.name}/{name}: sampling {budget.num_samples}")
      records, model = self.sample(files, bindings, checkpoint, "sample", samples_file, budget)
      if row.kind == "causal_lm":
        calls = setup.seq_len
      elif row.kind == "mdlm":
        calls = model.process.num_steps
      else:  # The hybrids: one call per step of their hyperschedule.
        process = model.process
        calls = process.hyperschedule(process.sampler_options(
            hybrid_process.HybridSamplerOptions())).num_calls
    elif row.kind == "prior" or (row.kind == "glauber" and not row.train):
      mode = "causal" if row.kind == "prior" else "sample"
      self.log(f"{setup.name}/{name}: sampling {budget.num_samples} from the UL2 ({mode})")
      ul2_dir = self.row_dir(setup.name, "ul2")
      records, model = self.sample(files, bindings, ul2_dir, mode, samples_file, budget)
      compute = {"parameters": (ul2["parameters"] if row.kind == "prior"
                                else self.parameter_count(files, bindings)),
                 "train_steps": ul2["train_steps"], "batch_size": ul2["batch_size"],
                 "train_flops": ul2["train_flops"]}
      rounds = 0 if row.kind == "prior" else model.process.schedule.num_rounds
      calls = setup.seq_len * (1 + rounds)
      train_detail = f"UL2 {ul2['train_steps']} x {ul2['batch_size']}"
      if row.kind == "prior":
        compute["seconds_ul2"] = ul2["seconds"]
        compute["teacher"] = self.teacher_diagnostics(setup, files, bindings, ul2_dir)
    elif row.kind == "glauber":
      self.log(f"{setup.name}/{name}: Glauber training, {budget.glauber_steps} steps")
      compute = self.train(files, bindings, {"targets": setup.seq_len})
      self.log(f"{setup.name}/{name}: sampling {budget.num_samples}")
      records, model = self.sample(files, bindings, directory, "sample", samples_file, budget)
      calls = setup.seq_len * (1 + model.process.schedule.num_rounds)
      train_detail = (f"UL2 {ul2['train_steps']} + Glauber {compute['train_steps']}, "
                      f"x {compute['batch_size']}")
      compute["train_steps"] += ul2["train_steps"]
      compute["train_flops"] += ul2["train_flops"]
    elif row.kind == "perturbed":
      records, vocabulary, exact = self.perturbed_row(setup, name, row, directory)
      compute = {"parameters": 0, "train_steps": 0, "batch_size": 0, "train_flops": 0.0,
                 "exact": exact}
      calls, train_detail = 0, "none: exact tables"
    else:
      records, model, calls = self.oracle_row(setup, name, row, directory, finished)
      source = finished[row.source]
      compute = {key: source[key] for key in ("parameters", "train_steps", "batch_size",
                                              "train_flops")}
      train_detail = f"the teacher of {row.source}"
    if row.kind != "perturbed":
      vocabulary = model.vocabulary
    result = self.judge(setup, name, row, records, vocabulary)
    result.update({
        "parameters": compute["parameters"], "train_steps": compute["train_steps"],
        "train_detail": train_detail, "batch_size": compute["batch_size"],
        "train_flops": compute.get("train_flops"), "sampling_calls": calls,
        "seconds": time.perf_counter() - start, **{k: v for k, v in compute.items()
                                                   if k == "seconds_ul2"},
        "bindings": list(row.bindings)})
    for part in ("teacher", "exact"):
      result.update(compute.get(part, {}))
    if "last_metrics" in compute:
      result["last_train_metrics"] = compute["last_metrics"]
    with open(os.path.join(directory, "row.json"), "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
    fmt = report.fmt
    self.log(f"{setup.name}/{name}: true_nll {fmt(result['true_nll'])} (data "
             f"{fmt(result['data_nll'])}, drafts {fmt(result.get('draft_true_nll'))}), "
             f"entropy {fmt(result['entropy'])}"
             + (f", tv {fmt(result.get('tv'))} (noise {fmt(result.get('tv_noise'))})"
                if setup.enumerable else "") + f"; {result['seconds']:.0f} s")
    return result

  def judge(self, setup: VariantSetup, name: str, row: Row, records: list[dict[str, Any]],
            vocabulary: Any) -> dict[str, Any]:
    """The exact judge's row for the samples, under the same gin configuration."""

    def entry() -> dict[str, Any]:
      language = self.registry.synthetic_language(setup.name)
      judged = synthetic_judge.exact_judge_row([r["token_ids"] for r in records], language,
                                               vocabulary, setup.enumerable)
      if row.kind in ROUNDS_KINDS:  # The same judge on the row's own drafts, before its rounds.
        drafts = [r["causal_draft_ids"] for r in records]
        of_drafts = synthetic_judge.exact_judge_row(drafts, language, vocabulary, setup.enumerable)
        judged.update({f"draft_{key}": of_drafts[key] for key in
                       ("true_nll", "true_nll_se", "entropy", "tv") if key in of_drafts})
        judged.update(synthetic_judge.paired_nll_change([r["token_ids"] for r in records],
                                                        drafts, language, vocabulary))
      return judged

    gin.clear_config()
    try:
      gin_utils.parse_gin([self.gin_path("ul2_tiny.gin"), self.preset_file], self.overrides)
      judged = entry()
    finally:
      gin.clear_config()
    changed = [r["sites_changed"] for r in records
               if "sites_changed" in r and row.kind in ("glauber", "oracle", "perturbed")]
    return {"model": name, "variant": setup.name, "kind": row.kind,
            "num_samples": len(records), **judged,
            "sites_changed": float(np.mean(changed)) if changed else None}

  def teacher_diagnostics(self, setup: VariantSetup, files: Sequence[str],
                          bindings: Sequence[str], checkpoint: str,
                          num_sequences: int = 512) -> dict[str, float]:
    """Can the UL2 serve as the chain's teacher? Its MASK-INFILL cross entropy (the forward
    kernel, mixing included) at one uniform site of ``num_sequences`` fresh data sequences,
    against the language's exact infill cross entropy on the same sites and its unigram
    entropy. A teacher near the unigram level redraws sites without regard to their context."""

    def entry() -> dict[str, float]:
      model = configured_model()
      teacher = infer.load_inference_params(model, checkpoint, num_sequences)[1]["teacher"]
      language = self.registry.synthetic_language(setup.name)
      rng = np.random.default_rng((0, 17))
      letters = language.sample(rng, num_sequences, setup.seq_len)
      sites = rng.integers(0, setup.seq_len, num_sequences)
      letter_tokens = np.asarray([model.vocabulary.encode(c)[0] for c in
                                  synthetic.alphabet(language.num_letters)], np.int32)
      tokens = letter_tokens[letters]
      teacher_fn = jax.jit(functools.partial(model.process.teacher_log_probs, model.denoiser))
      log_q = np.asarray(teacher_fn(teacher, jnp.asarray(tokens),
                                    jnp.asarray(sites, jnp.int32)), np.float64)
      rows = np.arange(num_sequences)
      truth = letters[rows, sites]
      exact = language.infill_log_probs(letters, sites)
      return {"teacher_infill_nll": float(-log_q[rows, letter_tokens[truth]].mean()),
              "exact_infill_nll": float(-exact[rows, truth].mean()),
              "unigram_entropy": language.unigram_entropy()}

    return self.run(files, bindings, entry)

  def oracle_row(self, setup: VariantSetup, name: str, row: Row, directory: str,
             finished: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], Any, int]:
    """The exact reverse process of the source row's chain, from the prior row's drafts."""
    if not setup.enumerable:
      raise ValueError(f"row {name}: the oracle needs the enumerable variant.")
    for needed in ("prior", row.source):
      if needed not in finished:
        raise ValueError(f"row {name}: the oracle needs the row {needed!r} (the prior's drafts "
                         "and the source's teacher); run it before this one.")
    source = ROWS[row.source]
    source_dir = (self.row_dir(setup.name, row.source) if source.train
                  else self.row_dir(setup.name, "ul2"))
    files, bindings = self.glauber_config(setup, source, source_dir)
    bindings = [*bindings, *row.bindings]
    budget = setup.budget
    self.log(f"{setup.name}/{name}: tabulating the teacher of {row.source}")

    def entry() -> tuple[Any, Any, np.ndarray]:
      model = configured_model()
      teacher = infer.load_inference_params(model, source_dir,
                                            budget.sample_batch_size)[1]["teacher"]
      return model, teacher, self.registry.synthetic_language(setup.name)

    model, teacher, language = self.run(files, bindings, entry)
    log_p = language.enumerate_log_probs(setup.seq_len)
    allowed = np.flatnonzero(model.denoiser.allowed_tokens)  # The values the chain can hold.
    num_values, length = len(allowed), setup.seq_len
    if num_values ** length > synthetic.MAX_ENUMERATION:
      raise ValueError(f"row {name}: {num_values} ** {length} states are too many to enumerate.")
    value_of_token = np.full(model.vocabulary.vocab_size, -1, np.int64)
    value_of_token[allowed] = np.arange(num_values)
    kernels = self.teacher_kernels(model, teacher, allowed, length, budget.oracle_batch_size)
    # p_0: the language's law over letter sequences, placed among the chain's states.
    letters = synthetic.sequences_of_indices(np.arange(log_p.size), language.num_letters, length)
    letter_tokens = np.asarray([model.vocabulary.encode(c)[0] for c in
                                synthetic.alphabet(language.num_letters)], np.int64)
    p_data = np.zeros(num_values ** length)
    states = oracle.state_index(value_of_token[letter_tokens[letters]], num_values)
    p_data[states] = np.exp(log_p)
    sites = model.process.schedule.sites()
    marginals = oracle.oracle_forward_marginals(p_data, kernels, sites, num_values, length)
    prior = [record["token_ids"] for record in summaries.read_jsonl(
        os.path.join(self.row_dir(setup.name, "prior"), "samples.jsonl"), ("token_ids",),
        "the prior row's samples")]
    drafts = value_of_token[np.asarray(prior, np.int64)]
    if np.any(drafts < 0):
      raise ValueError(f"row {name}: a prior sample holds a token the chain cannot hold.")
    rng = np.random.default_rng((0, model.process.schedule.num_rounds))
    final, undefined = oracle.oracle_reverse_sample(rng, drafts, marginals, sites, num_values)
    self.log(f"{setup.name}/{name}: {len(sites)} exact reverse steps on {len(final)} drafts "
             f"({undefined} undefined)")
    tokens = allowed[final]
    records = [{"token_ids": t.tolist(), "causal_draft_ids": p,
                "sites_changed": int(np.sum(np.asarray(p) != t)),
                "settings": {"mode": "oracle", "source": row.source,
                             "num_rounds": model.process.schedule.num_rounds}}
               for t, p in zip(tokens, prior)]
    summaries.write_jsonl(os.path.join(directory, "samples.jsonl"), records)
    p_end = marginals[-1]
    with open(os.path.join(directory, "oracle.json"), "w", encoding="utf-8") as f:
      json.dump({"undefined_steps": undefined, "num_values": num_values,
                 "tv_p_T_to_data": float(0.5 * np.abs(p_end - p_data).sum()),
                 "sites": sites.tolist()}, f, indent=1)
    return records, model, 0

  def perturbed_row(self, setup: VariantSetup, name: str, row: Row, directory: str
                ) -> tuple[list[dict[str, Any]], Any, dict[str, float]]:
    """The controlled rows: a teacher that is the exact conditional of a perturbed language
    ``p'``, drafts drawn from ``p'``, and ``row.rounds`` exact reverse rounds of the chain that
    starts at ``p_data`` (permutations ``GlauberSchedule.from_seed(L, N, seed)``). Returns the
    records, the vocabulary and the exact TVs: of the output law, of ``p'`` and of ``p_T``
    (each to ``p_data``)."""
    if not setup.enumerable:
      raise ValueError(f"row {name}: the perturbed rows need the enumerable variant.")
    from glauber_jax.processes import glauber  # pylint: disable=import-outside-toplevel

    def entry() -> tuple[Any, Any, tuple[float, int, float]]:
      return (self.registry.synthetic_language(setup.name),
              self.registry.synthetic_vocabulary(setup.name), perturbation())

    language, vocabulary, (strength, seed, concentration) = self.run(
        [self.gin_path("ul2_tiny.gin")], row.bindings, entry)
    other = language.perturbed(strength, seed, concentration)
    num_values, length = language.num_letters, setup.seq_len
    p_data = np.exp(language.enumerate_log_probs(length))
    p_prior = np.exp(other.enumerate_log_probs(length))
    rng = np.random.default_rng((seed, row.rounds))
    drafts = other.sample(rng, setup.budget.num_samples, length)
    exact = {"tv_exact_prior": float(0.5 * np.abs(p_prior - p_data).sum()),
             "perturbation_strength": strength}
    final, law = drafts, p_prior
    if row.rounds:
      sites = glauber.GlauberSchedule.from_seed(length, row.rounds, seed).sites()
      kernels = oracle.exact_conditional_kernels(p_prior, num_values, length)
      marginals = oracle.oracle_forward_marginals(p_data, kernels, sites, num_values, length)
      final, _ = oracle.oracle_reverse_sample(rng, drafts, marginals, sites, num_values)
      law = oracle.oracle_reverse_law(p_prior, marginals, sites, num_values, length)
      exact["tv_exact_p_T"] = float(0.5 * np.abs(marginals[-1] - p_data).sum())
    exact["tv_exact"] = float(0.5 * np.abs(law - p_data).sum())
    self.log(f"{setup.name}/{name}: exact TV to p_data {exact['tv_exact']:.4f} (the perturbed "
             f"prior's {exact['tv_exact_prior']:.4f})")
    letter_tokens = np.asarray([vocabulary.encode(c)[0] for c in
                                synthetic.alphabet(language.num_letters)], np.int64)
    records = [{"token_ids": letter_tokens[x].tolist(),
                "causal_draft_ids": letter_tokens[d].tolist(),
                "sites_changed": int(np.sum(x != d)),
                "settings": {"mode": "perturbed", "num_rounds": row.rounds}}
               for x, d in zip(final, drafts)]
    summaries.write_jsonl(os.path.join(directory, "samples.jsonl"), records)
    return records, vocabulary, exact

  @staticmethod
  def teacher_kernels(model: Any, teacher: Any, allowed: np.ndarray, length: int,
                      batch_size: int) -> list[np.ndarray]:
    """``kernels[k] [A ** (L - 1), A]``: the forward kernel ``q(x_k = . | x_{-k})`` of every
    site and context, in a few batched teacher calls (float64, renormalised over ``allowed``)."""
    num_values = len(allowed)
    contexts = oracle.all_states(num_values, length - 1)
    teacher_fn = jax.jit(functools.partial(model.process.teacher_log_probs, model.denoiser))
    kernels = []
    for site in range(length):
      values = np.insert(contexts, site, 0, axis=1)  # Site k holds any value: it is masked.
      tokens = allowed[values].astype(np.int32)
      rows = []
      for begin in range(0, len(tokens), batch_size):
        chunk = tokens[begin:begin + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk), 0)])
        n = len(padded)
        log_q = teacher_fn(teacher, jnp.asarray(padded), jnp.full((n,), site, jnp.int32))
        rows.append(np.asarray(log_q, np.float64)[:len(chunk)][:, allowed])
      q = np.exp(np.concatenate(rows))
      kernels.append(q / q.sum(-1, keepdims=True))
    return kernels

  # -- the whole run

  def configure_compilation(self) -> None:
    gin.clear_config()
    try:
      gin_utils.parse_gin([self.preset_file], self.overrides)
      persistent_cache, fast, min_seconds = compile_options()
    finally:
      gin.clear_config()
    if persistent_cache:
      jax.config.update("jax_compilation_cache_dir", os.path.join(self.out, ".jax_cache"))
      jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_seconds))
      jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if fast:
      jax.config.update("jax_disable_most_optimizations", True)
    self.log(f"compilation: persistent cache {'on' if persistent_cache else 'off'}, "
             f"{'fast' if fast else 'optimised'}")

  def run_all(self) -> list[dict[str, Any]]:
    os.makedirs(self.out, exist_ok=True)
    self.snapshot_gin()
    with self.snapshot_first():
      return self._run_all()

  def _run_all(self) -> list[dict[str, Any]]:
    self.configure_compilation()
    table: list[dict[str, Any]] = []
    for variant in self.variants:
      setup = self.variant_setup(variant)
      self.log(f"variant {variant}: L = {setup.seq_len}, vocab {setup.vocab_size}, UL2 lengths "
               f"{setup.ul2_lengths}, {setup.budget}")
      selected = {name: row for name, row in ROWS.items()
                  if variant in row.variants and name in self.rows}
      finished: dict[str, dict[str, Any]] = {}
      if any(row.kind in UL2_KINDS for row in selected.values()):
        finished["ul2"] = self.ul2(setup)
      for name, row in selected.items():
        finished[name] = self.run_row(setup, name, row, finished)
        table.append(finished[name])
      self.write(table)
    return table

  def write(self, table: list[dict[str, Any]]) -> None:
    os.makedirs(self.out, exist_ok=True)
    with open(os.path.join(self.out, "table.json"), "w", encoding="utf-8") as f:
      json.dump(table, f, indent=1)
    with open(os.path.join(self.out, "table.md"), "w", encoding="utf-8") as f:
      f.write(report.markdown_table(table, self.command, self.preset))
