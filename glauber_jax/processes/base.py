"""The interface every discrete-diffusion family implements: ``Process``, and its ``Denoiser``.

A process is a family of discrete diffusion (Glauber dynamics, absorbing/MDLM masking, the
hybrid processes to come) written as static configuration plus pure functions of arrays, as
SEDD's ``Graph`` and T5X's ``BaseModel`` are. It never owns a network: every method takes the
*denoiser*, the object that turns parameters and noisy tokens into logits. The flax networks are
wrapped as denoisers in ``glauber_jax.denoiser_networks``; the exact-toy tests pass tables. Each
process states the read-outs it calls as a ``typing.Protocol`` next to it (MASK-INFILL and a
causal prior for Glauber, one logit per position for the absorbing process); ``Denoiser`` below
is what all of them share.

``models.DiffusionModel`` = denoiser + process is the one ``BaseModel`` the trainer and the
command lines drive for every family:

- **forward**: ``noise_levels(times [B]) -> [B, L]`` places a per-position noise level in
  ``[0, 1]`` (0: the data token, 1: fully noised) for the process's time index; ``forward``
  corrupts a data batch into the loss's batch (it carries ``levels``), possibly advancing
  training state (Glauber's chains and frozen teacher) that ``init_state`` creates;
- **loss**: ``loss`` returns summed losses and metrics with ``weight_sum`` (the trainer's
  convention: microbatches and data-parallel shards add up to the per-token mean);
- **sampler**: ``sample`` draws ``Samples`` in one compiled program with the process's own
  ``SamplerOptions`` subclass (``sampler_options`` resolves and checks them);
- **bound**: ``likelihood_bound`` is a one-draw lower bound on ``log p(x)`` in nats;
- **metadata**: ``metadata`` is saved with every checkpoint and ``check_metadata`` refuses a
  checkpoint whose saved facts contradict the configured process.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping, Optional, Protocol

import jax
import numpy as np

from glauber_jax import sampling

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]


class Denoiser(Protocol):
  """What every process needs from its denoiser (each process adds the read-outs it calls).

  Attributes:
    allowed_tokens: ``[V]`` bool, the ids a sample may hold; every draw and every loss gives
      the others probability zero.
  """

  allowed_tokens: np.ndarray

  def init_variables(self, rng: Array, batch_size: int, seq_len: int) -> dict[str, Any]:
    """The network's initial variables (``{"params": ...}``, logically partitioned leaves)."""

  def training_flops(self, input_length: int, output_length: int) -> float:
    """Training FLOPs (forward + backward) of one example of these lengths (0: unknown)."""

  def is_added_param(self, path: tuple[str, ...]) -> bool:
    """Whether the parameter at ``path`` is new to this denoiser, so absent from the source
    checkpoint it starts from (the DiT's time parameters)."""


class Process(abc.ABC):
  """One discrete-diffusion family behind the interface ``models.DiffusionModel`` drives.

  Attributes:
    name: the family's name, saved in checkpoint metadata (``"glauber"``, ``"absorbing"``).
    sampler_options_type: the sampler's settings, a ``sampling.SamplerOptions`` subclass.
    inference_state_names: training-state entries inference needs besides the parameters (a
      checkpoint that lacks one, as a source checkpoint does, falls back to the parameters).
    seq_len: ``L``, the length of the sequences the process corrupts and samples.
  """

  name: ClassVar[str]
  sampler_options_type: ClassVar[type[sampling.SamplerOptions]]
  inference_state_names: ClassVar[tuple[str, ...]] = ()
  seq_len: int

  def check_denoiser(self, denoiser: Any) -> None:
    """Raises ValueError if ``denoiser`` cannot serve this process (a missing read-out, a
    network too short for ``L``). Nothing to check by default."""
    del denoiser

  # ---- Forward process and training -----------------------------------------------------------

  @abc.abstractmethod
  def noise_levels(self, times: Array) -> Array:
    """Per-position noise levels ``[B, L]`` in ``[0, 1]`` at the process times ``[B]``."""

  def init_state(self, denoiser: Any, params: Params, data: Array, rng: Array) -> Any:
    """Training state carried between steps and checkpointed (None: none)."""
    del denoiser, params, data, rng
    return None

  def state_shardings(self, abstract_state: Any, param_shardings: Any, batch_sharding: Any
                      ) -> Any:
    """Shardings of ``init_state``'s output, from the parameters' and the batch's."""
    del abstract_state, param_shardings, batch_sharding
    return None

  def start_report(self, denoiser: Any, params: Params, state: Any, data: Array, rng: Array
                   ) -> dict[str, float]:
    """Diagnostics logged before the first step of a fresh run; may raise to refuse a run
    that cannot work. None by default."""
    del denoiser, params, state, data, rng
    return {}

  @abc.abstractmethod
  def forward(self, denoiser: Any, params: Params, state: Any, data: Array, step: Array,
              rng: Array) -> tuple[Batch, Any]:
    """Corrupts the data rows ``[B, L]`` into the loss's batch (with ``levels [B, L]``) and
    returns the next training state (not differentiated)."""

  @abc.abstractmethod
  def loss(self, denoiser: Any, params: Params, batch: Batch, rng: Optional[Array]
           ) -> tuple[Array, dict[str, Array]]:
    """Summed loss and summed metrics, ``weight_sum`` among them. ``rng`` None: no dropout."""

  @abc.abstractmethod
  def training_flops(self, denoiser: Any) -> float:
    """Training FLOPs per data row (every network pass the loss and ``forward`` make)."""

  # ---- Sampling and the bound -----------------------------------------------------------------

  def sampler_options(self, options: sampling.SamplerOptions) -> sampling.SamplerOptions:
    """``options`` with configuration-dependent defaults resolved and ranges checked."""
    return options

  def draft_options(self, options: sampling.SamplerOptions) -> sampling.SamplerOptions:
    """``options`` for the first draft alone (``infer --mode=causal``): the same options for
    samplers without a refinement stage."""
    return options

  @abc.abstractmethod
  def sample(self, denoiser: Any, params: Params, rng: Array, batch_size: int,
             prefix: Optional[Array], options: sampling.SamplerOptions,
             inference_state: Mapping[str, Params]) -> sampling.Samples:
    """``batch_size`` samples, the first ``P`` tokens equal to ``prefix [B, P]`` and never
    resampled; traced inside one compiled program (``models.BaseModel.sample_with``).
    ``inference_state`` holds the ``inference_state_names`` entries (missing ones: the
    parameters)."""

  @abc.abstractmethod
  def likelihood_bound(self, denoiser: Any, params: Params, tokens: Array, rng: Array,
                       inference_state: Mapping[str, Params]) -> Array:
    """A one-draw lower bound ``[B]`` (nats) on ``log p(tokens [B, L])``; its mean over
    draws is at most the model's log-likelihood."""

  def conditional_likelihood_bound(self, denoiser: Any, params: Params, tokens: Array,
                                   free: Array, rng: Array,
                                   inference_state: Mapping[str, Params]) -> Array:
    """A one-draw lower bound ``[B]`` (nats) on ``log p(tokens[free] | tokens[~free])``
    (``free [B, L]`` bool) under the process's sampler with the other sites kept, as a
    prompt is (zero-shot multiple choice). Processes without it raise ValueError."""
    del denoiser, params, tokens, free, rng, inference_state
    raise ValueError(f"the {self.name!r} process has no conditional likelihood bound.")

  def score(self, denoiser: Any, params: Params, tokens: Array) -> Array:
    """Per-sequence scores ``[B]`` for evaluation: ``likelihood_bound`` with a fixed key and
    the parameters as every inference state."""
    return self.likelihood_bound(denoiser, params, tokens, jax.random.PRNGKey(0), {})

  # ---- Checkpoints ----------------------------------------------------------------------------

  def metadata(self) -> dict[str, Any]:
    """JSON-serialisable facts saved with every checkpoint."""
    return {"process": self.name}

  def check_metadata(self, saved: Mapping[str, Any]) -> None:
    """Raises ValueError if a checkpoint's saved ``metadata`` contradicts this process. A
    checkpoint without a ``process`` entry (a UL2, a converted source or an older run) passes."""
    trained = saved.get("process")
    if trained is not None and trained != self.name:
      raise ValueError(f"the checkpoint was trained with the {trained!r} process but the gin "
                       f"configuration builds the {self.name!r} process.")
