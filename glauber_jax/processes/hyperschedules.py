"""Hyperschedules: per-position noise levels for each model call (Fathi et al. 2025, sec. 3.1).

A hyperschedule gives every position ``i`` of a length-``d`` sequence a level ``l_c^i`` in
``{0 .. num_levels}`` at each model call ``c = 1 .. T`` (0: clean, ``num_levels``: full noise).
One object covers the families of the paper (the exact formulas are the reference code's,
``/work/shared/design/hybrid.md`` section 1):

- **block** (width ``w``): block ``b = (c - 1) // num_levels`` is denoised at level
  ``num_levels - 1 - (c - 1) % num_levels``; blocks before it are clean, after it fully noised.
  ``T = num_levels * ceil(d / w)``.
- **flat**: block with ``w = d``; every position at ``num_levels - c``, ``T = num_levels``.
- **quench** (autoregressive): block with ``w = 1`` and ``num_levels = 1``: call ``c`` writes
  position ``c - 1`` in one go, ``T = d``.
- **slide** (width ``w``): a window of ``w`` positions with the levels
  ``m_j = round(j (num_levels - 1) / (w - 1))`` (half to even) moves one position per call;
  ``T = d + w - 1``. Needs ``num_levels >= w`` (otherwise the window jumps) and, for ``w = 1``,
  ``num_levels = 1`` (the reference's window ``(num_levels - 1,)`` never reaches level 0).

Each call partitions the positions into *settled* (the first ``num_settled(c)``, clean and
final), *idle* (at level ``num_levels``, not yet touched: hidden from attention) and *active*
(the rest, at most ``w``). An active position at level 0 is in its last call: the sampler must
leave no MASK there. ``times`` maps levels to the diffusion times the networks and noise
schedules read; ``attention_mask`` is the mask these partitions need.

Everything here is NumPy on static shapes: the samplers turn the tables into constants of their
compiled loops.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

#: The kinds of hyperschedule.
KINDS = ("flat", "block", "slide", "quench")
#: Attention among settled positions.
CONTEXTS = ("causal", "block_causal", "full")


@dataclasses.dataclass(frozen=True)
class Hyperschedule:
  """One hyperschedule (hashable: samplers compile once per value).

  Attributes:
    kind: one of ``KINDS``.
    seq_len: ``d``.
    num_levels: the number of noise levels ``num_levels`` (the reference's ``tau``); 1 for quench.
    width: ``w``, the block or window width (``d`` for flat, 1 for quench).
    time_epsilon: the reference's ``sampling_eps``: settled positions sit at this time, idle
      ones at ``1 - time_epsilon``, and active ones in ``[10 eps, 1 - 10 eps]``.
  """

  kind: str
  seq_len: int
  num_levels: int
  width: int
  time_epsilon: float = 1e-4

  def __post_init__(self) -> None:
    if self.kind not in KINDS:
      raise ValueError(f"hyperschedule kind must be one of {KINDS}, got {self.kind!r}.")
    if self.seq_len < 1 or self.num_levels < 1 or not 1 <= self.width <= self.seq_len:
      raise ValueError(f"need seq_len >= 1, num_levels >= 1 and width in [1, seq_len], got "
                       f"{self.seq_len}, {self.num_levels}, {self.width}.")
    if self.kind == "flat" and self.width != self.seq_len:
      raise ValueError("a flat hyperschedule has width = seq_len (use make()).")
    if self.kind == "quench" and (self.width, self.num_levels) != (1, 1):
      raise ValueError("a quench hyperschedule has width = num_levels = 1 (use make()).")
    if self.kind == "slide" and self.num_levels < self.width:
      raise ValueError(f"a slide hyperschedule needs num_levels >= width, got "
                       f"{self.num_levels} < {self.width}.")
    if self.kind == "slide" and self.width == 1 and self.num_levels != 1:
      raise ValueError("a slide of width 1 never reaches level 0 unless num_levels = 1.")
    if not 0.0 < self.time_epsilon < 0.05:
      raise ValueError(f"time_epsilon must be in (0, 0.05), got {self.time_epsilon}.")

  # ---- Levels and partitions ------------------------------------------------------------------

  @property
  def num_calls(self) -> int:
    """``T``, the number of model calls."""
    if self.kind == "slide":
      return self.seq_len + self.width - 1
    return self.num_levels * math.ceil(self.seq_len / self.width)

  def window_levels(self) -> np.ndarray:
    """Slide: the ``w`` levels of the window, ``m_j``, lowest (oldest position) first."""
    if self.width == 1:
      return np.array([self.num_levels - 1])
    return np.array([round(j * (self.num_levels - 1) / (self.width - 1))
                     for j in range(self.width)])

  def num_settled(self, call: int) -> int:
    """Positions ``[0, num_settled)`` are settled at call ``call`` (1-based)."""
    self._check_call(call)
    if self.kind == "slide":
      return max(0, call - self.width)
    return (call - 1) // self.num_levels * self.width

  def levels(self, call: int) -> np.ndarray:
    """int32 ``[d]``: each position's level at call ``call`` (1-based)."""
    self._check_call(call)
    positions = np.arange(self.seq_len)
    if self.kind == "slide":
      offset = positions - (call - self.width)
      window = self.window_levels()[np.clip(offset, 0, self.width - 1)]
      return np.where(offset < 0, 0,
                      np.where(offset >= self.width, self.num_levels, window)).astype(np.int32)
    block, step = divmod(call - 1, self.num_levels)
    position_block = positions // self.width
    return np.where(position_block < block, 0,
                    np.where(position_block == block, self.num_levels - 1 - step,
                             self.num_levels)).astype(np.int32)

  def partition(self, call: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bool ``[d]`` masks ``(settled, active, idle)`` at call ``call``: disjoint, covering."""
    settled = np.arange(self.seq_len) < self.num_settled(call)
    idle = (self.levels(call) == self.num_levels) & ~settled
    return settled, ~settled & ~idle, idle

  def times(self, call: int) -> np.ndarray:
    """float32 ``[d]`` diffusion times of call ``call``: settled ``eps``, idle ``1 - eps``,
    active ``a + l (1 - 2a) / (num_levels - 1)`` with ``a = 10 eps`` (``a`` when there is one
    level), clipped to ``[eps, 1 - eps]``."""
    settled, active, _ = self.partition(call)
    eps = self.time_epsilon
    times = np.where(settled, eps, np.where(active, self.active_times(self.levels(call)),
                                            1 - eps))
    return times.astype(np.float32)

  def active_times(self, levels: Any, xp: Any = np) -> Any:
    """Float32 diffusion times of active positions at ``levels`` (any shape; ``xp``: NumPy or
    ``jax.numpy``): ``a + l (1 - 2a) / (num_levels - 1)``, ``a = 10 eps``, clipped to
    ``[eps, 1 - eps]``."""
    eps = self.time_epsilon
    low = 10 * eps
    spacing = (1 - 2 * low) / (self.num_levels - 1) if self.num_levels > 1 else 0.0
    return xp.clip(low + xp.asarray(levels) * spacing, eps, 1 - eps).astype(xp.float32)

  def tables(self) -> dict[str, np.ndarray]:
    """Every call at once, ``[T, d]``: ``levels``, ``settled``, ``active``, ``times`` and
    ``final`` (active at level 0: the position's last call)."""
    calls = range(1, self.num_calls + 1)
    partitions = [self.partition(c) for c in calls]
    levels = np.stack([self.levels(c) for c in calls])
    active = np.stack([p[1] for p in partitions])
    return {"levels": levels, "settled": np.stack([p[0] for p in partitions]),
            "active": active, "times": np.stack([self.times(c) for c in calls]),
            "final": active & (levels == 0)}

  def _check_call(self, call: int) -> None:
    if not 1 <= call <= self.num_calls:
      raise ValueError(f"call must be in [1, {self.num_calls}], got {call}.")

  # ---- Attention ------------------------------------------------------------------------------

  def attention_mask(self, call: int, context: str = "block_causal") -> np.ndarray:
    """Bool ``[d, d]`` (rows: queries; True: may attend) at call ``call``.

    Settled rows see settled columns under ``context`` (``causal``: ``j <= i``;
    ``block_causal``: ``j // w <= i // w``; ``full``); active rows see every settled and active
    column; idle rows and columns see and are seen by nothing. Settled rows never see active
    columns, so their keys and values do not depend on the noisy tokens (what KV caching needs).
    An idle row is all False: the network must not normalise it (its output is unused).
    """
    settled, active, _ = self.partition(call)
    return partition_attention_mask(settled, active, context, self.width)

  def sampling_context(self) -> str:
    """The context of the samplers' and the masked training's attention: ``causal`` for slide
    (its settled prefix grows one position at a time), ``block_causal`` otherwise."""
    return "causal" if self.kind == "slide" else "block_causal"


def make(kind: str, seq_len: int, num_levels: int, width: int | None = None,
         time_epsilon: float = 1e-4) -> Hyperschedule:
  """A hyperschedule with the kind's implied settings: flat has ``width = seq_len``, quench
  ``width = num_levels = 1`` (its ``num_levels`` argument is ignored); block and slide need
  ``width``."""
  if kind == "flat":
    width = seq_len
  elif kind == "quench":
    width, num_levels = 1, 1
  elif width is None:
    raise ValueError(f"a {kind} hyperschedule needs a width.")
  return Hyperschedule(kind, seq_len, num_levels, width, time_epsilon)


def block_weighting(seq_len: int, width: int) -> np.ndarray:
  """float32 ``[d]``: eq. 11's settled-token cross-entropy weights ``(i // w) / (ceil(d / w) -
  1)`` (all ones when there is a single block)."""
  num_blocks = math.ceil(seq_len / width)
  if num_blocks == 1:
    return np.ones(seq_len, np.float32)
  return (np.arange(seq_len) // width / (num_blocks - 1)).astype(np.float32)


def context_mask(seq_len: int, context: str, width: int, xp: Any = np) -> Any:
  """Bool ``[d, d]``: which settled column each settled row sees under ``context``
  (``causal``: ``j <= i``; ``block_causal``: ``j // width <= i // width``; ``full``)."""
  if context not in CONTEXTS:
    raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}.")
  positions = xp.arange(seq_len)
  if context == "causal":
    return positions[None, :] <= positions[:, None]
  if context == "block_causal":
    blocks = positions // width
    return blocks[None, :] <= blocks[:, None]
  return xp.ones((seq_len, seq_len), bool)


def partition_attention_mask(settled: Any, active: Any, context: str, width: int,
                             xp: Any = np) -> Any:
  """``Hyperschedule.attention_mask`` from the partition: bool ``[..., d, d]`` of ``settled`` and
  ``active`` (bool ``[..., d]``, e.g. rows of ``tables()`` indexed by a traced call; ``xp``:
  NumPy or ``jax.numpy``)."""
  among_settled = context_mask(settled.shape[-1], context, width, xp)
  settled_rows = settled[..., :, None] & settled[..., None, :] & among_settled
  active_rows = active[..., :, None] & (settled | active)[..., None, :]
  return settled_rows | active_rows


def efficient_attention_mask(chunk_start: Any, context: str, width: int, xp: Any = np) -> Any:
  """Bool ``[..., 2d, 2d]`` (rows: queries; True: may attend) of the efficient training layout
  (``/work/shared/design/hybrid.md`` sec. 5): the input is ``[y; x]`` at positions
  ``[0 .. d-1; 0 .. d-1]``, the clean sequence ``y`` then a noisy copy ``x`` cut into chunks,
  each chunk at the levels of its own call.

  Args:
    chunk_start: int ``[..., d]``: for each position of the noisy half, the first position of
      its chunk (a block schedule's bucket ``b`` starts at ``b w``).
    context: the clean half's attention among itself, ``causal`` or ``block_causal`` (with
      ``width``): both are prefix-closed, so a chunk starting at ``s`` sees the clean context
      ``[0, s)`` exactly as the settled rows of its standard-mask call do.
    width: the block width of ``block_causal``.
    xp: NumPy or ``jax.numpy``.

  A clean row sees the clean columns under ``context`` and no noisy one; a noisy row sees the
  clean columns before its chunk's start and the noisy columns of its chunk. So the noisy half's
  outputs equal, chunk by chunk, the standard-mask forwards of the chunks' calls.
  """
  if context not in ("causal", "block_causal"):
    raise ValueError(f"the efficient layout needs a causal or block_causal context, got "
                     f"{context!r}.")
  chunk_start = xp.asarray(chunk_start)
  *lead, seq_len = chunk_start.shape
  square = (*lead, seq_len, seq_len)
  clean = xp.concatenate([xp.broadcast_to(context_mask(seq_len, context, width, xp), square),
                          xp.zeros(square, bool)], axis=-1)
  noisy = xp.concatenate([xp.arange(seq_len) < chunk_start[..., :, None],
                          chunk_start[..., :, None] == chunk_start[..., None, :]], axis=-1)
  return xp.concatenate([clean, noisy], axis=-2)
