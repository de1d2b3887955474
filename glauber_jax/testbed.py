r"""The synthetic testbed: every sampler against the exact truth, at matched size and compute.

    python -m glauber_jax.testbed --preset=smoke|quick|full --out=DIR \
        [--variant=hmm|enum|both] [--language_seed=S] [--rows=NAME,NAME] [--gin.NAME=VALUE ...]

For each variant (``hmm``: the hidden Markov language of ``synthetic_lm``/``synthetic_ul2``, 64
letters, ``L = 32``; ``enum``: the enumerable 4-letter Markov chain of ``synthetic_enum_*``,
``L = 6``) it trains and samples every row of ``ROWS`` in this process, through the library's
own entry points (``train.train`` and ``infer.infer`` under gin, as ``glauber_jax.quickstart``
does), judges every row's samples with ``synthetic.exact_judge_row`` and writes
``DIR/table.json`` (one dict per row) and ``DIR/table.md`` (a table per variant, with the
command and the date on top).

Rows (``ROWS``; a row is one line there: its kind and its extra gin bindings):

- ``causal_lm``, ``mdlm``: the baselines (``gin/ar_tiny.gin``, ``gin/mdlm_tiny.gin``) on the
  ``lm`` task.
- ``prior``: CAUSAL-GEN of the UL2 pretrained on the ``ul2`` task (``gin/ul2_tiny.gin``),
  sampled as ``infer --mode=causal`` does for a UL2 checkpoint.
- ``teacher_gibbs_n<N>``: that draft plus ``N`` reverse rounds whose kernel is the UL2's own
  MASK-INFILL: the Glauber DiT converted from the UL2 with no Glauber training.
- ``glauber_<loss>_n<N>``: Glauber DiTs (``gin/ul2_tiny_glauber.gin``) trained from the UL2 with
  that loss on the ``N``-round chain, each sampled with its own ``N`` (``ce_all_sites`` in the
  ``literal`` training mode: with the trajectory buffer it memorises the few data rows the
  chains hold, ``docs/results.md``).
- ``oracle_n<N>`` (``enum`` only): the exact reverse process of the ``N``-round chain whose
  forward kernel is the trained DiT's teacher (``oracle_forward_marginals``,
  ``oracle_reverse_sample``), started from the ``prior`` row's drafts.
- ``perturbed_prior``, ``perturbed_oracle_n<N>`` (``enum`` only; NumPy, no model): the
  controlled case with a known error to correct. The teacher is the exact conditional of a
  perturbed language ``p'`` (``perturbation``), the prior draws from ``p'`` itself (the paper's
  premise: CAUSAL-GEN samples the energy model's own law), and ``N`` exact reverse rounds of the
  chain started from ``p_data`` carry the drafts back towards ``p_data``. These rows also give
  ``tv_exact``, the total variation of the row's exact output law (no sampling noise).

Sizes (steps, batch, samples, model dimensions) come from ``gin/testbed/<preset>.gin``
(``Budget`` and the networks' shapes; ``<variant>/Budget.*`` scopes set a variant's own
budget); settings every Glauber row shares from ``gin/testbed/glauber.gin``. ``--gin.X=Y``
bindings apply to every run (``--language_seed=S`` is ``synthetic_language_config.seed`` and
``synthetic_enum_config.seed``); ``--rows=a,b`` runs only those rows. Everything goes under
``DIR/<variant>/<row>`` (the shared UL2 in ``DIR/<variant>/ul2``). The gin files are read from
a snapshot of ``gin/`` taken at the start (``DIR/gin``), so one invocation sees one
configuration. A finished row is reused by a rerun whose configuration for it is unchanged
(its ``spec.json`` holds a digest of every parsed binding; ``row.json`` the result), an
unfinished one resumes from its checkpoints, and a row whose configuration changed is refused
(delete its directory or pick another ``--out``).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # Run as glauber_jax.testbed, so gin and the registries see one module.
  from glauber_jax import testbed as _entry_point
  _entry_point.main(sys.argv[1:])
  sys.exit(0)

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import itertools
import json
import math
import os
import shlex
import shutil
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from glauber_jax import gin_utils, infer, summaries, synthetic, train

PRESETS = ("smoke", "quick", "full")
VARIANTS = ("hmm", "enum")
KINDS = ("causal_lm", "mdlm", "prior", "glauber", "oracle", "perturbed")
#: Kinds whose samples are a CAUSAL-GEN draft plus reverse rounds (judged on both).
ROUNDS_KINDS = ("glauber", "oracle", "perturbed")
LOSS = "glauber_process.GlauberProcess.loss = '{}'"
#: Algorithm 1's fresh data row per pair: ``ce_all_sites`` memorises the buffer's few rows.
LITERAL = "glauber_process.GlauberProcess.training_mode = 'literal'"


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the table.

  Attributes:
    kind: ``causal_lm``, ``mdlm``, ``prior`` (the UL2's CAUSAL-GEN), ``glauber`` (a Glauber DiT
      from the UL2, sampled with its ``NUM_ROUNDS``), ``oracle`` (the exact reverse process) or
      ``perturbed`` (the exact reverse process of a perturbed language's chain).
    bindings: gin bindings of this row's runs, after the variant's and the preset's.
    train: ``glauber`` only: False samples the DiT converted from the UL2 with no Glauber
      training (the UL2's own MASK-INFILL as the reverse kernel).
    source: ``oracle`` only: the ``glauber`` row whose checkpoint holds the teacher (the
      forward kernel) and whose ``NUM_ROUNDS`` and permutations the oracle reverses.
    variants: the variants that have this row.
    rounds: ``perturbed`` only: the rounds ``N`` of its chain (0: the perturbed prior's drafts).
  """

  kind: str
  bindings: tuple[str, ...] = ()
  train: bool = True
  source: Optional[str] = None
  variants: tuple[str, ...] = VARIANTS
  rounds: int = 0

  def __post_init__(self) -> None:
    if self.kind not in KINDS:
      raise ValueError(f"row kind {self.kind!r} not in {KINDS}.")
    if (self.kind == "oracle") != (self.source is not None):
      raise ValueError("an oracle row, and only an oracle row, names a source row.")


#: The rows, in the order they run (an oracle after its source). Adding a row is one line.
ROWS: dict[str, Row] = {
    "causal_lm": Row("causal_lm"),
    "mdlm": Row("mdlm"),
    "prior": Row("prior"),
    "teacher_gibbs_n1": Row("glauber", ("NUM_ROUNDS = 1",), train=False),
    "teacher_gibbs_n3": Row("glauber", ("NUM_ROUNDS = 3",), train=False),
    "glauber_ce_n1": Row("glauber", ("NUM_ROUNDS = 1", LOSS.format("ce"))),
    "glauber_ce_n3": Row("glauber", ("NUM_ROUNDS = 3", LOSS.format("ce"))),
    "glauber_ce_all_sites_n1": Row("glauber", ("NUM_ROUNDS = 1", LOSS.format("ce_all_sites"),
                                               LITERAL)),
    "glauber_ce_all_sites_n3": Row("glauber", ("NUM_ROUNDS = 3", LOSS.format("ce_all_sites"),
                                               LITERAL)),
    "glauber_se_n1": Row("glauber", ("NUM_ROUNDS = 1", LOSS.format("score_entropy"))),
    "glauber_se_n3": Row("glauber", ("NUM_ROUNDS = 3", LOSS.format("score_entropy"))),
    "oracle_n1": Row("oracle", source="glauber_ce_n1", variants=("enum",)),
    "oracle_n3": Row("oracle", source="glauber_ce_n3", variants=("enum",)),
    "perturbed_prior": Row("perturbed", variants=("enum",)),
    "perturbed_oracle_n1": Row("perturbed", variants=("enum",), rounds=1),
    "perturbed_oracle_n3": Row("perturbed", variants=("enum",), rounds=3),
}


@gin.configurable
def perturbation(strength: float = 0.5, seed: int = 1, concentration: float = 0.5
                 ) -> tuple[float, int, float]:
  """The perturbed language of the ``perturbed`` rows: ``language.perturbed(strength, seed,
  concentration)`` (``synthetic.HiddenMarkovLanguage.perturbed``)."""
  return strength, seed, concentration


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Budget:
  """A preset's budget for one variant (``gin/testbed/<preset>.gin``; ``hmm/Budget.x`` and
  ``enum/Budget.x`` scope a value to one variant).

  Attributes:
    ul2_steps: UL2 pretraining steps (shared by ``prior``, the Glauber rows and the oracles).
    baseline_steps: training steps of ``causal_lm`` and ``mdlm``.
    glauber_steps: Glauber training steps of each trained ``glauber`` row (after the UL2's).
    batch_size: ``BATCH_SIZE`` of every training run.
    num_samples: samples per row (every row the same).
    sample_batch_size: rows per compiled sampling call.
    oracle_batch_size: teacher calls per batch when the oracle tabulates the forward kernel.
  """

  ul2_steps: int = 100
  baseline_steps: int = 100
  glauber_steps: int = 100
  batch_size: int = 32
  num_samples: int = 256
  sample_batch_size: int = 128
  oracle_batch_size: int = 4096


@gin.configurable
def compile_options(persistent_cache: bool = False, fast: bool = False,
                    cache_min_compile_seconds: float = 1.0) -> tuple[bool, bool, float]:
  """How this process compiles (a preset's setting; the smoke preset turns both on).

  Args:
    persistent_cache: keep compiled programs in ``DIR/.jax_cache`` (JAX's persistent
      compilation cache, keyed by the program), so rows and variants whose programs are the same
      (the smoke preset gives both variants one shape) and reruns compile once.
    fast: ``jax_disable_most_optimizations``: compiles about twice as fast, runs slower; the
      results are the same.
    cache_min_compile_seconds: cache only programs that took this long to compile (0: every
      program, the eager initialisation's small ones too, which pays when both variants share
      their shapes, as in the smoke preset).
  """
  return persistent_cache, fast, cache_min_compile_seconds


@gin.configurable
def configured_model(model: Any = gin.REQUIRED) -> Any:
  """The ``%MODEL`` of the parsed configuration (``configured_model.model = %MODEL``)."""
  return model


@dataclasses.dataclass(frozen=True)
class VariantSetup:
  """What one variant's runs share: the tasks, lengths and vocabulary size (from gin)."""

  name: str
  lm_task: str
  ul2_task: str
  seq_len: int
  ul2_lengths: dict[str, int]
  vocab_size: int
  budget: Budget

  @property
  def enumerable(self) -> bool:
    return self.name == "enum"

  def lm_bindings(self) -> list[str]:
    return [f"MIXTURE_OR_TASK_NAME = '{self.lm_task}'", f"SEQ_LEN = {self.seq_len}",
            f"single_stack.SingleStackConfig.vocab_size = {self.vocab_size}",
            f"single_stack.SingleStackConfig.max_length = {self.seq_len}",
            f"network.NetworkConfig.vocab_size = {self.vocab_size}"]

  def ul2_bindings(self) -> list[str]:
    return [f"MIXTURE_OR_TASK_NAME = '{self.ul2_task}'",
            f"TASK_FEATURE_LENGTHS = {self.ul2_lengths!r}",
            f"network.NetworkConfig.vocab_size = {self.vocab_size}"]


# ---- The exact oracle (NumPy) ------------------------------------------------------------------


def state_index(values: np.ndarray, num_values: int) -> np.ndarray:
  """Index of each row of ``values [n, L]`` (ints in ``0..A-1``) among the ``A ** L`` states,
  first site most significant (row-major order of an ``[A] * L`` array)."""
  values = np.asarray(values, np.int64)
  powers = num_values ** np.arange(values.shape[-1] - 1, -1, -1, dtype=np.int64)
  return values @ powers


def context_index(values: np.ndarray, site: int, num_values: int) -> np.ndarray:
  """Index of ``x_{-site}`` among the ``A ** (L - 1)`` contexts (the other sites in order)."""
  return state_index(np.delete(np.asarray(values), site, axis=-1), num_values)


def all_states(num_values: int, length: int) -> np.ndarray:
  """``[A ** L, L]``: every state in ``state_index`` order."""
  return np.asarray(list(itertools.product(range(num_values), repeat=length)), np.int64).reshape(
      num_values ** length, length)


def oracle_forward_marginals(p_data: np.ndarray, kernels: Sequence[np.ndarray],
                             sites: Sequence[int], num_values: int, length: int) -> np.ndarray:
  """Exact forward marginals ``[T + 1, A ** L]`` of the Glauber chain.

  ``p_data [A ** L]`` is ``p_0``; ``kernels[k] [A ** (L - 1), A]`` is the forward kernel of site
  ``k``, ``q(x_k = . | x_{-k})`` by ``context_index``; step ``t`` redraws site ``sites[t - 1]``:
  ``p_t(y) = sum_a p_{t-1}(y_{-k}, a) q(y_k | y_{-k})``.
  """
  shape = (num_values,) * length
  marginals = [np.asarray(p_data, np.float64)]
  for site in sites:
    p = np.moveaxis(marginals[-1].reshape(shape), site, -1).reshape(-1, num_values)
    p = p.sum(-1, keepdims=True) * kernels[site]
    marginals.append(np.moveaxis(p.reshape(shape), -1, site).reshape(-1))
  return np.stack(marginals)


def oracle_reverse_sample(rng: np.random.Generator, values: np.ndarray, marginals: np.ndarray,
                          sites: Sequence[int], num_values: int) -> tuple[np.ndarray, int]:
  """The exact reverse process from ``values [n, L]`` (a prior's draws, ints ``0..A-1``).

  For ``t = T..1`` redraws site ``k = sites[t - 1]`` from ``p_{t-1}(x_k = . | x_{-k})``, i.e.
  proportional to ``p_{t-1}(x_{-k}, .)`` (``marginals`` from ``oracle_forward_marginals``).
  A context of probability zero under ``p_{t-1}`` (a prior off the chain's support) leaves the
  site as it is; returns the samples and how many such undefined steps there were.
  """
  values = np.array(values, np.int64)
  length = values.shape[1]
  shape = (num_values,) * length
  undefined = 0
  for t in range(len(sites), 0, -1):
    site = int(sites[t - 1])
    table = np.moveaxis(marginals[t - 1].reshape(shape), site, -1).reshape(-1, num_values)
    rows = table[context_index(values, site, num_values)]
    mass = rows.sum(-1)
    defined = mass > 0
    undefined += int(np.sum(~defined))
    cumulative = np.cumsum(rows[defined], -1) / mass[defined, None]
    draws = (rng.random((int(defined.sum()), 1)) < cumulative).argmax(-1)
    values[defined, site] = draws
  return values, undefined


def oracle_reverse_law(start: np.ndarray, marginals: np.ndarray, sites: Sequence[int],
                       num_values: int, length: int) -> np.ndarray:
  """The exact law ``[A ** L]`` of ``oracle_reverse_sample``'s output when its input has law
  ``start``: each step replaces site ``k``'s value by a draw from ``p_{t-1}(x_k | x_{-k})``, and
  a context of probability zero under ``p_{t-1}`` keeps its value."""
  shape = (num_values,) * length
  law = np.asarray(start, np.float64)
  for t in range(len(sites), 0, -1):
    site = int(sites[t - 1])
    table = np.moveaxis(marginals[t - 1].reshape(shape), site, -1).reshape(-1, num_values)
    current = np.moveaxis(law.reshape(shape), site, -1).reshape(-1, num_values)
    mass = table.sum(-1, keepdims=True)
    redrawn = current.sum(-1, keepdims=True) * table / np.where(mass > 0, mass, 1.0)
    law = np.moveaxis(np.where(mass > 0, redrawn, current).reshape(shape), -1, site).reshape(-1)
  return law


def exact_conditional_kernels(p: np.ndarray, num_values: int, length: int) -> list[np.ndarray]:
  """``kernels[k] [A ** (L - 1), A]``: the exact ``p(x_k = . | x_{-k})`` of a table ``p``."""
  shape = (num_values,) * length
  kernels = []
  for site in range(length):
    joint = np.moveaxis(np.asarray(p, np.float64).reshape(shape), site, -1).reshape(
        -1, num_values)
    mass = joint.sum(-1, keepdims=True)
    kernels.append(np.where(mass > 0, joint / np.where(mass > 0, mass, 1.0), 1.0 / num_values))
  return kernels


def total_variation(values: np.ndarray, p: np.ndarray, num_values: int) -> float:
  """TV between the empirical law of ``values [n, L]`` and ``p [A ** L]``."""
  counts = np.bincount(state_index(values, num_values), minlength=p.size)
  return float(0.5 * np.abs(counts / len(values) - p).sum())


# ---- Running rows ------------------------------------------------------------------------------


class Testbed:
  """Runs the rows of one invocation and collects the table."""

  def __init__(self, preset: str, out: str, variants: Sequence[str], overrides: Sequence[str],
               command: str, rows: Optional[Sequence[str]] = None) -> None:
    self.preset = preset
    self.out = os.path.abspath(out)
    self.variants = list(variants)
    self.overrides = list(overrides)
    self.command = command
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
    from tasks import registry  # pylint: disable=import-outside-toplevel
    from glauber_jax import denoisers  # pylint: disable=import-outside-toplevel

    def query() -> VariantSetup:
      config = registry.synthetic_config(variant)
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
                          registry.synthetic_vocabulary(variant).vocab_size, budget)

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
    if row.kind in ("causal_lm", "mdlm"):
      files = [self.gin_path("ar_tiny.gin" if row.kind == "causal_lm" else "mdlm_tiny.gin")]
      bindings = [*setup.lm_bindings(), f"MODEL_DIR = {json.dumps(directory)}",
                  f"TRAIN_STEPS = {budget.baseline_steps}", f"BATCH_SIZE = {budget.batch_size}",
                  *row.bindings]
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
    ul2 = finished["ul2"]
    compute: dict[str, Any] = {}
    samples_file = os.path.join(directory, "samples.jsonl")
    if row.kind in ("causal_lm", "mdlm"):
      self.log(f"{setup.name}/{name}: training, {budget.baseline_steps} steps")
      compute = self.train(files, bindings, {"targets": setup.seq_len})
      self.log(f"{setup.name}/{name}: sampling {budget.num_samples}")
      records, model = self.sample(files, bindings, directory, "sample", samples_file, budget)
      calls = model.process.num_steps if row.kind == "mdlm" else setup.seq_len
      train_detail = f"{compute['train_steps']} x {compute['batch_size']}"
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
      records, vocabulary, exact = self.perturbed(setup, name, row, directory)
      compute = {"parameters": 0, "train_steps": 0, "batch_size": 0, "train_flops": 0.0,
                 "exact": exact}
      calls, train_detail = 0, "none: exact tables"
    else:
      records, model, calls = self.oracle(setup, name, row, directory, finished)
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
    for report in ("teacher", "exact"):
      result.update(compute.get(report, {}))
    if "last_metrics" in compute:
      result["last_train_metrics"] = compute["last_metrics"]
    with open(os.path.join(directory, "row.json"), "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
    self.log(f"{setup.name}/{name}: true_nll {_fmt(result['true_nll'])} (data "
             f"{_fmt(result['data_nll'])}, drafts {_fmt(result.get('draft_true_nll'))}), "
             f"entropy {_fmt(result['entropy'])}"
             + (f", tv {_fmt(result.get('tv'))} (noise {_fmt(result.get('tv_noise'))})"
                if setup.enumerable else "") + f"; {result['seconds']:.0f} s")
    return result

  def judge(self, setup: VariantSetup, name: str, row: Row, records: list[dict[str, Any]],
            vocabulary: Any) -> dict[str, Any]:
    """The exact judge's row for the samples, under the same gin configuration."""
    from tasks import registry  # pylint: disable=import-outside-toplevel

    def entry() -> dict[str, Any]:
      language = registry.synthetic_language(setup.name)
      judged = synthetic.exact_judge_row([r["token_ids"] for r in records], language,
                                         vocabulary, setup.enumerable)
      if row.kind in ROUNDS_KINDS:  # The same judge on the row's own drafts, before its rounds.
        drafts = [r["causal_draft_ids"] for r in records]
        of_drafts = synthetic.exact_judge_row(drafts, language, vocabulary, setup.enumerable)
        judged.update({f"draft_{key}": of_drafts[key] for key in
                       ("true_nll", "true_nll_se", "entropy", "tv") if key in of_drafts})
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
      from tasks import registry  # pylint: disable=import-outside-toplevel
      model = configured_model()
      teacher = infer.load_inference_params(model, checkpoint, num_sequences)[1]["teacher"]
      language = registry.synthetic_language(setup.name)
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

  def oracle(self, setup: VariantSetup, name: str, row: Row, directory: str,
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
      from tasks import registry  # pylint: disable=import-outside-toplevel
      model = configured_model()
      teacher = infer.load_inference_params(model, source_dir,
                                            budget.sample_batch_size)[1]["teacher"]
      return model, teacher, registry.synthetic_language(setup.name)

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
    p_data[state_index(value_of_token[letter_tokens[letters]], num_values)] = np.exp(log_p)
    sites = model.process.schedule.sites()
    marginals = oracle_forward_marginals(p_data, kernels, sites, num_values, length)
    with open(os.path.join(self.row_dir(setup.name, "prior"), "samples.jsonl"),
              encoding="utf-8") as f:
      prior = [json.loads(line)["token_ids"] for line in f if line.strip()]
    drafts = value_of_token[np.asarray(prior, np.int64)]
    if np.any(drafts < 0):
      raise ValueError(f"row {name}: a prior sample holds a token the chain cannot hold.")
    rng = np.random.default_rng((0, model.process.schedule.num_rounds))
    final, undefined = oracle_reverse_sample(rng, drafts, marginals, sites, num_values)
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

  def perturbed(self, setup: VariantSetup, name: str, row: Row, directory: str
                ) -> tuple[list[dict[str, Any]], Any, dict[str, float]]:
    """The controlled rows: a teacher that is the exact conditional of a perturbed language
    ``p'``, drafts drawn from ``p'``, and ``row.rounds`` exact reverse rounds of the chain that
    starts at ``p_data`` (permutations ``GlauberSchedule.from_seed(L, N, seed)``). Returns the
    records, the vocabulary and the exact TVs: of the output law, of ``p'`` and of ``p_T``
    (each to ``p_data``)."""
    if not setup.enumerable:
      raise ValueError(f"row {name}: the perturbed rows need the enumerable variant.")
    from tasks import registry  # pylint: disable=import-outside-toplevel
    from glauber_jax.processes import glauber  # pylint: disable=import-outside-toplevel

    def entry() -> tuple[Any, Any, tuple[float, int, float]]:
      return (registry.synthetic_language(setup.name), registry.synthetic_vocabulary(setup.name),
              perturbation())

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
      kernels = exact_conditional_kernels(p_prior, num_values, length)
      marginals = oracle_forward_marginals(p_data, kernels, sites, num_values, length)
      final, _ = oracle_reverse_sample(rng, drafts, marginals, sites, num_values)
      law = oracle_reverse_law(p_prior, marginals, sites, num_values, length)
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
    contexts = all_states(num_values, length - 1)
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
      finished: dict[str, dict[str, Any]] = {"ul2": self.ul2(setup)}
      for name, row in ROWS.items():
        if variant not in row.variants or name not in self.rows:
          continue
        finished[name] = self.run_row(setup, name, row, finished)
        table.append(finished[name])
      self.write(table)
    return table

  def write(self, table: list[dict[str, Any]]) -> None:
    os.makedirs(self.out, exist_ok=True)
    with open(os.path.join(self.out, "table.json"), "w", encoding="utf-8") as f:
      json.dump(table, f, indent=1)
    with open(os.path.join(self.out, "table.md"), "w", encoding="utf-8") as f:
      f.write(markdown_table(table, self.command, self.preset))


def _fmt(value: Any, digits: int = 3) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    if math.isnan(value):
      return "nan"
    return f"{value:.{digits}f}"
  return str(value)


def markdown_table(table: Sequence[dict[str, Any]], command: str, preset: str) -> str:
  """``table.md``: the command and date, then one table per variant."""
  lines = [f"# Synthetic testbed ({preset})", "",
           f"Command: `{command}`", "",
           f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}", "",
           "`true_nll`: mean exact `-log p(x) / L` of the samples (nats/token; +- standard "
           "error), `draft_nll` the same for the row's own CAUSAL-GEN drafts before its rounds, "
           "`data_nll` for data; `entropy`: token entropy of the samples "
           "(`data_entropy` of as many data sequences); `tv`: total variation to the exact law, "
           "with `tv_noise` the floor of a perfect sampler of as many samples; `invalid`: "
           "samples holding a non-letter; `changed`: mean sites the rounds changed; `calls`: "
           "model calls per sample; `train steps`: optimizer steps behind the row (batch in "
           "`training`); `seconds`: this row's own wall time (the UL2's pretraining is "
           "counted in `prior`).", ""]
  for variant in VARIANTS:
    rows = [r for r in table if r["variant"] == variant]
    if not rows:
      continue
    enumerable = any("tv" in r for r in rows)
    header = ["model", "true_nll", "draft_nll", "data_nll", "entropy", "data_entropy"]
    if enumerable:
      header += ["tv", "draft_tv", "tv_noise"]
    header += ["invalid", "changed", "calls", "samples", "train steps", "training",
               "parameters", "seconds"]
    lines += [f"## {variant} (L = {rows[0]['sequence_length']})", "",
              "| " + " | ".join(header) + " |",
              "| --- |" + " ---: |" * (len(header) - 1)]
    for r in rows:
      nll = _fmt(r["true_nll"]) + (f" +- {r['true_nll_se']:.3f}" if r.get("true_nll_se")
                                   else "")
      cells = [r["model"], nll, _fmt(r.get("draft_true_nll")),
               f"{_fmt(r['data_nll'])} +- {_fmt(r['data_nll_se'])}",
               _fmt(r["entropy"]), _fmt(r["data_entropy"])]
      if enumerable:
        cells += [_fmt(r.get("tv")), _fmt(r.get("draft_tv")), _fmt(r.get("tv_noise"))]
      seconds = r["seconds"] + r.get("seconds_ul2", 0.0)
      cells += [_fmt(r["invalid_fraction"]), _fmt(r.get("sites_changed"), 1),
                str(r["sampling_calls"] or "exact"), str(r["num_samples"]),
                str(r["train_steps"]), r["train_detail"], f"{r['parameters']:,}",
                f"{seconds:.0f}"]
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in rows:
      if r.get("teacher_infill_nll") is not None:
        lines += [f"The UL2 as the chain's teacher (`{r['model']}` row's model): MASK-INFILL "
                  f"cross entropy {r['teacher_infill_nll']:.3f} nats at a uniform site of "
                  f"fresh data, against the language's exact infill "
                  f"{r['exact_infill_nll']:.3f} and its unigram entropy "
                  f"{r['unigram_entropy']:.3f}.", ""]
  return "\n".join(lines)


def main(argv: Sequence[str]) -> list[dict[str, Any]]:
  """The command line (module docstring); returns the table's rows."""
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
      raise SystemExit(__doc__ if arg in ("-h", "--help") else
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
  import tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  command = "python -m glauber_jax.testbed " + " ".join(shlex.quote(a) for a in argv)
  bed = Testbed(preset, out, VARIANTS if variant == "both" else (variant,), overrides, command,
                rows)
  table = bed.run_all()
  bed.log(f"wrote {os.path.join(bed.out, 'table.json')} and table.md")
  with open(os.path.join(bed.out, "table.md"), encoding="utf-8") as f:
    print(f.read(), flush=True)
  return table
