"""Device meshes and logical-axis sharding, the pjit way (``jax.jit`` with ``NamedSharding``).

The mesh has three axes:

- ``data``: pure data parallelism (parameters replicated);
- ``fsdp``: data parallelism with parameters and optimizer state sharded (ZeRO-3 / FSDP);
- ``tensor``: tensor (model) parallelism over heads, MLP width and vocabulary.

Each axis size is set in gin; ``-1`` means "all devices the other axes leave". Parameters and
activations carry logical names (``network``, ``encoder_decoder``, ``single_stack``);
``LOGICAL_AXIS_RULES`` maps them to mesh axes in this one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glauber_jax import errors

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_MESH_AXES = ("data", "fsdp")

LogicalRules = Sequence[tuple[str, Any]]

LOGICAL_AXIS_RULES: LogicalRules = (
    # Activations.
    ("activation_batch", BATCH_MESH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_vocab", "tensor"),
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("relpos_buckets", None),
    ("time_embed", None),
    ("time_mlp", None),
    ("modulation", None),
)


def maybe_initialize_distributed(enabled: Optional[bool] = None) -> None:
  """Calls ``jax.distributed.initialize()`` for multi-host runs, before devices are touched.

  With ``enabled=None`` it initialises when the environment names a cluster: SLURM with several
  tasks, a Kubernetes JobSet, a Cloud TPU slice, Open MPI, or an explicit coordinator
  (``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, which
  ``launch/`` sets where jax cannot detect the cluster itself). Explicit values win over jax's
  own cluster detection, which fills in the rest.
  """
  import os  # Local: only this function reads the environment.

  if enabled is None:
    markers = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "JOBSET_NAME",
               "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE")
    enabled = any(m in os.environ for m in markers)
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
      enabled = False
  if enabled:
    explicit: dict[str, Any] = {
        name: int(os.environ[variable]) for name, variable in
        (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
        if variable in os.environ}
    if len(explicit) == 2 and "JAX_COORDINATOR_ADDRESS" in os.environ:
      # Fully specified (launch/): jax's cluster detection would otherwise also pick the local
      # devices (one GPU per process under SLURM); JAX_LOCAL_DEVICE_IDS still applies.
      explicit["cluster_detection_method"] = "deactivate"
    jax.distributed.initialize(**explicit)
    logging.info("jax.distributed initialised: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces one ``-1`` entry by what the others leave and checks the product."""
  if len(mesh_shape) != len(MESH_AXES):
    raise ValueError(f"mesh_shape {tuple(mesh_shape)} must have {len(MESH_AXES)} entries "
                     f"{MESH_AXES}.")
  shape = list(mesh_shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh_shape {tuple(mesh_shape)}: at most one axis may be -1 (auto).")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh_shape {tuple(mesh_shape)}: sizes must be positive or -1.")
  fixed = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % fixed:
      raise ValueError(
          f"mesh_shape {tuple(mesh_shape)}: the fixed axes ({fixed} devices) do not divide the "
          f"{num_devices} available devices.")
    shape[shape.index(-1)] = num_devices // fixed
  if math.prod(shape) != num_devices:
    raise ValueError(
        f"mesh_shape {tuple(mesh_shape)} uses {math.prod(shape)} devices but {num_devices} are "
        f"available; the product of (data, fsdp, tensor) must equal the device count.")
  return tuple(shape)


def create_mesh(mesh_shape: Sequence[int], devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Builds a ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all devices)."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  try:
    from jax.experimental import mesh_utils  # Topology-aware device order where available.

    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


@gin.configurable
@dataclasses.dataclass
class Partitioner:
  """Owns the mesh and the logical rules; turns logical specs into ``NamedSharding``s.

  Attributes:
    mesh_shape: sizes of (data, fsdp, tensor); one may be -1 (auto).
    logical_axis_rules: logical name -> mesh axis (or tuple of axes, or None).
    devices: devices to use (default: all).
  """

  mesh_shape: Sequence[int] = (-1, 1, 1)
  logical_axis_rules: LogicalRules = LOGICAL_AXIS_RULES
  devices: Optional[Sequence[jax.Device]] = None

  def __post_init__(self) -> None:
    self.mesh = create_mesh(self.mesh_shape, self.devices)
    self.logical_axis_rules = tuple(tuple(r) for r in self.logical_axis_rules)

  @property
  def data_parallel_size(self) -> int:
    return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  @contextlib.contextmanager
  def context(self) -> Iterator[None]:
    """Mesh and rules in scope: needed while tracing code with logical constraints."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.logical_axis_rules):
      yield

  def sharding(self, spec: PartitionSpec) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def replicated(self) -> NamedSharding:
    return self.sharding(PartitionSpec())

  def logical_to_sharding(self, logical_specs: Any) -> Any:
    """Maps a tree of logical ``PartitionSpec``s to ``NamedSharding``s on this mesh."""
    mesh_specs = nn.logical_to_mesh(logical_specs, self.logical_axis_rules)
    return jax.tree.map(self.sharding, mesh_specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))

  def boxed_tree_shardings(self, boxed_tree: Any) -> Any:
    """Shardings for a tree whose leaves are (abstract) ``nn.LogicallyPartitioned`` boxes."""
    return self.logical_to_sharding(nn.get_partition_spec(boxed_tree))

  def batch_sharding(self, ndim: int = 2) -> NamedSharding:
    return self.sharding(PartitionSpec(BATCH_MESH_AXES, *([None] * (ndim - 1))))

  def check_batch_size(self, global_batch_size: int) -> None:
    if global_batch_size % self.data_parallel_size:
      raise errors.ConfigError(
          f"batch size {global_batch_size} is not divisible by the data-parallel size "
          f"{self.data_parallel_size} (data x fsdp of mesh {dict(self.mesh.shape)}).")

  def host_batch_to_global(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles each host's slice of the batch into globally sharded arrays."""
    return {
        name: jax.make_array_from_process_local_data(self.batch_sharding(value.ndim), value)
        for name, value in batch.items()
    }

  def jit(self, fn: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """``jax.jit`` whose tracing and execution happen with the mesh and rules in scope."""
    jitted = jax.jit(fn, **jit_kwargs)

    def run(*args: Any, **kwargs: Any) -> Any:
      with self.context():
        return jitted(*args, **kwargs)

    run.lower = lambda *a, **k: _lower_in(self, jitted, *a, **k)  # type: ignore[attr-defined]
    return run


def _lower_in(partitioner: Partitioner, jitted: Any, *args: Any, **kwargs: Any) -> Any:
  with partitioner.context():
    return jitted.lower(*args, **kwargs)
