"""What the testbed runs: its rows, the presets' budgets and the gin configurables it reads.

The configurables are registered under the module ``glauber_jax.testbed`` (the package the
preset files import), so ``testbed.Budget.*``, ``testbed.compile_options.*``,
``testbed.configured_model.model`` and ``testbed.perturbation.*`` name them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import gin

#: The gin module of the configurables below (the package, not this submodule).
GIN_MODULE = "glauber_jax.testbed"

PRESETS = ("smoke", "quick", "full")
VARIANTS = ("hmm", "enum")
KINDS = ("causal_lm", "mdlm", "hybrid_epsilon", "hybrid_gamma", "prior", "glauber", "oracle",
         "perturbed")
#: Kinds trained from scratch on the ``lm`` task with the baseline budget, and their gin files.
BASELINE_FILES = {"causal_lm": "ar_tiny.gin", "mdlm": "mdlm_tiny.gin",
                  "hybrid_epsilon": "hybrid_epsilon_tiny.gin",
                  "hybrid_gamma": "hybrid_gamma_tiny.gin"}
#: Kinds that read the variant's shared UL2 (trained only when a selected row is one).
UL2_KINDS = ("prior", "glauber", "oracle")
#: Kinds whose samples are a CAUSAL-GEN draft plus reverse rounds (judged on both).
ROUNDS_KINDS = ("glauber", "oracle", "perturbed")
LOSS = "glauber_process.GlauberProcess.loss = '{}'"
#: Algorithm 1's fresh data row per pair: ``ce_all_sites`` memorises the buffer's few rows.
LITERAL = "glauber_process.GlauberProcess.training_mode = 'literal'"
#: ACS (the epsilon-hybrid's adaptive correction sampler) at one of the paper's rates.
ACS = "hybrid_process.EpsilonHybridProcess.eta = 0.05"
#: The gamma-hybrid on Block^8 hyperschedules (L = 32: four blocks of 16 levels, 64 calls, as
#: many as the flat rows): per-token time, annealed training (gin/hybrid_gamma_block_tiny.gin).
GAMMA_BLOCK = ("single_stack/network.NetworkConfig.time_per_token = True",
               "hybrid_process.GammaHybridProcess.annealed = True",
               "hybrid_process.GammaHybridProcess.train_schedule = 'block'",
               "hybrid_process.GammaHybridProcess.train_width = 8",
               "hybrid_process.GammaHybridProcess.train_levels = 16",
               "hybrid_process.GammaHybridProcess.schedule = 'block'",
               "hybrid_process.GammaHybridProcess.width = 8",
               "hybrid_process.GammaHybridProcess.num_levels = 16")
#: Drafts from the frozen pre-diffusion UL2 (the teacher); the DiT trains the reverse kernel only.
FROZEN_PRIOR = ("glauber_process.GlauberProcess.prior = 'frozen'",
                "glauber_process.GlauberProcess.prior_loss_weight = 0.0")


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the table.

  Attributes:
    kind: ``causal_lm``, ``mdlm``, ``hybrid_epsilon``, ``hybrid_gamma`` (the baselines,
      ``BASELINE_FILES``), ``prior`` (the UL2's CAUSAL-GEN), ``glauber`` (a Glauber DiT from the
      UL2, sampled with its ``NUM_ROUNDS``), ``oracle`` (the exact reverse process) or
      ``perturbed`` (the exact reverse process of a perturbed language's chain).
    bindings: gin bindings of this row's runs, after the variant's and the preset's.
    train: ``glauber`` only: False samples the DiT converted from the UL2 with no Glauber
      training (the UL2's own MASK-INFILL as the reverse kernel).
    source: ``oracle`` (required): the ``glauber`` row whose checkpoint holds the teacher (the
      forward kernel) and whose ``NUM_ROUNDS`` and permutations the oracle reverses; a baseline
      kind (optional): the row of the same kind whose checkpoint this row samples, with its
      own bindings added (a sampler setting; nothing is trained).
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
    if self.kind == "oracle" and self.source is None:
      raise ValueError("an oracle row names its source row.")
    if self.source is not None and self.kind != "oracle" and self.kind not in BASELINE_FILES:
      raise ValueError(f"a {self.kind!r} row names no source row (oracle and baseline rows "
                       "only).")


#: The rows, in the order they run (an oracle after its source). Adding a row is one line.
ROWS: dict[str, Row] = {
    "causal_lm": Row("causal_lm"),
    "mdlm": Row("mdlm"),
    "hybrid_epsilon_flat": Row("hybrid_epsilon"),
    "hybrid_epsilon_flat_acs": Row("hybrid_epsilon", (ACS,), source="hybrid_epsilon_flat"),
    "hybrid_gamma_flat": Row("hybrid_gamma"),
    "hybrid_gamma_block": Row("hybrid_gamma", GAMMA_BLOCK),
    "prior": Row("prior"),
    "teacher_gibbs_n1": Row("glauber", ("NUM_ROUNDS = 1",), train=False),
    "teacher_gibbs_n3": Row("glauber", ("NUM_ROUNDS = 3",), train=False),
    "glauber_ce_n1": Row("glauber", ("NUM_ROUNDS = 1", LOSS.format("ce"))),
    "glauber_ce_n3": Row("glauber", ("NUM_ROUNDS = 3", LOSS.format("ce"))),
    "glauber_ce_all_sites_n1": Row("glauber", ("NUM_ROUNDS = 1", LOSS.format("ce_all_sites"),
                                               LITERAL)),
    "glauber_ce_all_sites_n3": Row("glauber", ("NUM_ROUNDS = 3", LOSS.format("ce_all_sites"),
                                               LITERAL)),
    "glauber_ce_all_sites_frozen_n1": Row("glauber", ("NUM_ROUNDS = 1",
                                                      LOSS.format("ce_all_sites"), LITERAL,
                                                      *FROZEN_PRIOR)),
    "glauber_ce_all_sites_frozen_n3": Row("glauber", ("NUM_ROUNDS = 3",
                                                      LOSS.format("ce_all_sites"), LITERAL,
                                                      *FROZEN_PRIOR)),
    "glauber_se_n1": Row("glauber", ("NUM_ROUNDS = 1", LOSS.format("score_entropy"))),
    "glauber_se_n3": Row("glauber", ("NUM_ROUNDS = 3", LOSS.format("score_entropy"))),
    "oracle_n1": Row("oracle", source="glauber_ce_n1", variants=("enum",)),
    "oracle_n3": Row("oracle", source="glauber_ce_n3", variants=("enum",)),
    "perturbed_prior": Row("perturbed", variants=("enum",)),
    "perturbed_oracle_n1": Row("perturbed", variants=("enum",), rounds=1),
    "perturbed_oracle_n3": Row("perturbed", variants=("enum",), rounds=3),
}


@gin.configurable(module=GIN_MODULE)
def perturbation(strength: float = 0.5, seed: int = 1, concentration: float = 0.5
                 ) -> tuple[float, int, float]:
  """The perturbed language of the ``perturbed`` rows: ``language.perturbed(strength, seed,
  concentration)`` (``synthetic.HiddenMarkovLanguage.perturbed``)."""
  return strength, seed, concentration


@gin.configurable(module=GIN_MODULE)
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


@gin.configurable(module=GIN_MODULE)
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


@gin.configurable(module=GIN_MODULE)
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
            f"single_stack/network.NetworkConfig.vocab_size = {self.vocab_size}",
            f"single_stack/network.NetworkConfig.max_encoder_length = {self.seq_len}",
            f"network.NetworkConfig.vocab_size = {self.vocab_size}"]

  def ul2_bindings(self) -> list[str]:
    return [f"MIXTURE_OR_TASK_NAME = '{self.ul2_task}'",
            f"TASK_FEATURE_LENGTHS = {self.ul2_lengths!r}",
            f"network.NetworkConfig.vocab_size = {self.vocab_size}"]
