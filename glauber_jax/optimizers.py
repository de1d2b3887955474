"""Optimizers and learning-rate schedules (optax), configured in gin."""

from __future__ import annotations

import gin
import jax
import optax

SCHEDULES = ("constant", "cosine", "linear", "rsqrt")
OPTIMIZERS = ("adamw", "adafactor")


@gin.configurable
def learning_rate_schedule(peak_learning_rate: float = 1e-3, warmup_steps: int = 1000,
                           decay: str = "cosine", total_steps: int = 100_000,
                           final_fraction: float = 0.1) -> optax.Schedule:
  """Linear warmup to ``peak_learning_rate`` then ``decay`` towards ``final_fraction`` of it.

  ``rsqrt`` is T5's inverse square root decay after warmup (no floor).
  """
  if decay not in SCHEDULES:
    raise ValueError(f"learning_rate_schedule.decay={decay!r}; expected one of {SCHEDULES}.")
  warmup = optax.linear_schedule(0.0, peak_learning_rate, max(warmup_steps, 1))
  decay_steps = max(total_steps - warmup_steps, 1)
  if decay == "constant":
    after = optax.constant_schedule(peak_learning_rate)
  elif decay == "cosine":
    after = optax.cosine_decay_schedule(peak_learning_rate, decay_steps, alpha=final_fraction)
  elif decay == "linear":
    after = optax.linear_schedule(peak_learning_rate, peak_learning_rate * final_fraction,
                                  decay_steps)
  else:
    offset = max(warmup_steps, 1)
    after = lambda step: peak_learning_rate * (offset / (step + offset)) ** 0.5  # noqa: E731
  return optax.join_schedules([warmup, after], [warmup_steps])


def _scheduled_weight_decay(schedule: optax.Schedule, rate: float
                            ) -> optax.GradientTransformation:
  """Adds ``-schedule(step) * rate * param`` to the updates of parameters with ndim > 1."""

  def init(params: optax.Params) -> optax.ScaleByScheduleState:
    del params
    return optax.ScaleByScheduleState(count=jax.numpy.zeros([], jax.numpy.int32))

  def update(updates: optax.Updates, state: optax.ScaleByScheduleState,
             params: optax.Params | None = None) -> tuple[optax.Updates, optax.ScaleByScheduleState]:
    step_size = schedule(state.count) * rate
    updates = jax.tree.map(lambda u, p: u - step_size * p if p.ndim > 1 else u, updates, params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


@gin.configurable
def create_optimizer(name: str = "adamw", schedule: optax.Schedule | None = None,
                     weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                     eps: float = 1e-8, clip_grad_norm: float | None = 1.0
                     ) -> optax.GradientTransformation:
  """AdamW or Adafactor behind global-norm gradient clipping.

  Weight decay (AdamW) skips one-dimensional parameters (norm scales, biases).
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"create_optimizer.name={name!r}; expected one of {OPTIMIZERS}.")
  schedule = schedule if schedule is not None else learning_rate_schedule()
  if name == "adamw":
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    base = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                       mask=decay_mask)
  else:
    # Adafactor's own weight_decay_rate is added after the learning rate (an absolute
    # shrink of ``rate`` per step); decay here is decoupled and follows the schedule, as AdamW's.
    base = optax.adafactor(learning_rate=schedule)
    if weight_decay:
      base = optax.chain(base, _scheduled_weight_decay(schedule, weight_decay))
  chain = [optax.clip_by_global_norm(clip_grad_norm)] if clip_grad_norm else []
  return optax.chain(*chain, base)
