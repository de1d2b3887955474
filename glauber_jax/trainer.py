"""The jitted training step: sharded state, gradient accumulation, buffer donation.

A step whose loss or gradient norm is not finite is not applied: inside the compiled step the
parameters, optimizer state and model state keep their previous values (only ``step``
advances, with the data), and the step's metrics say ``skipped_step = 1``. The training loop
counts skipped steps and stops after ``Trainer.max_consecutive_nonfinite_steps`` in a row.

The trainer knows a ``BaseModel`` (a loss that returns sums and ``weight_sum``), an optax
optimizer and a ``Partitioner``; nothing about which model family it trains.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from glauber_jax import checkpoints, models, optimizers, partitioning

Array = jax.Array
Shapes = Mapping[str, tuple[int, ...]]


@flax.struct.dataclass
class TrainState:
  """Everything a step updates, and everything a checkpoint must hold to resume exactly."""

  step: Array
  params: Any
  opt_state: Any
  model_state: Any = None


@gin.configurable
class Trainer:
  """Builds, shards and steps a ``TrainState``.

  Attributes:
    model: the model whose ``loss_fn`` is minimised.
    partitioner: mesh and sharding rules.
    learning_rate_fn: the schedule (default: gin's ``optimizers.learning_rate_schedule()``);
      logged every step.
    optimizer_fn: builds the optax transformation from the schedule (default: gin's
      ``optimizers.create_optimizer``).
    num_microbatches: gradient accumulation steps per batch (the batch is split evenly).
    seed: seeds parameter initialisation and the per-step dropout keys.
    max_consecutive_nonfinite_steps: the training loop stops after this many consecutive
      steps whose loss or gradient norm was not finite (each of them left the state as it was).
  """

  def __init__(self, model: models.BaseModel, partitioner: partitioning.Partitioner,
               learning_rate_fn: Optional[optax.Schedule] = None,
               optimizer_fn: Callable[..., optax.GradientTransformation] = (
                   optimizers.create_optimizer),
               num_microbatches: int = 1,
               seed: int = 0, max_consecutive_nonfinite_steps: int = 3) -> None:
    if num_microbatches < 1:
      raise ValueError(f"Trainer.num_microbatches must be >= 1, got {num_microbatches}.")
    if max_consecutive_nonfinite_steps < 1:
      raise ValueError("Trainer.max_consecutive_nonfinite_steps must be >= 1, got "
                       f"{max_consecutive_nonfinite_steps}.")
    self.model = model
    self.partitioner = partitioner
    self.learning_rate_fn = (learning_rate_fn if learning_rate_fn is not None
                             else optimizers.learning_rate_schedule())
    self.optimizer = optimizer_fn(schedule=self.learning_rate_fn)
    self.num_microbatches = num_microbatches
    self.seed = seed
    self.max_consecutive_nonfinite_steps = max_consecutive_nonfinite_steps
    self._step_fn: Optional[Callable[..., Any]] = None

  # ---- State construction -------------------------------------------------------------------

  def _init_state(self, input_shapes: Shapes, batch: Optional[Mapping[str, Array]] = None,
                  loaded_params: Any = None) -> TrainState:
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(self.seed))
    params = nn.meta.unbox(self.model.get_initial_variables(init_rng, input_shapes)["params"])
    if loaded_params is not None:  # Loaded leaves replace fresh ones; added ones stay fresh.
      params = checkpoints.merge_params(params, loaded_params)
    if batch is None:
      batch = {name: jnp.zeros(shape, jnp.int32) for name, shape in input_shapes.items()}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params),
                      model_state=self.model.init_model_state(params, batch, state_rng))

  def state_shardings(self, input_shapes: Shapes) -> tuple[TrainState, TrainState]:
    """``(abstract_state, shardings)``: shapes/dtypes and ``NamedSharding`` of every leaf.

    Parameters follow their logical axes; optimizer moments that mirror a parameter take its
    sharding, and anything else (counts, factored second moments) is replicated.
    """
    boxed = jax.eval_shape(lambda rng: self.model.get_initial_variables(rng, input_shapes),
                           jax.random.PRNGKey(0))["params"]
    param_shardings = self.partitioner.boxed_tree_shardings(boxed)
    abstract = jax.eval_shape(lambda: self._init_state(input_shapes))
    replicated = self.partitioner.replicated()

    def moment_sharding(leaf: Any, param: Any, sharding: Any) -> Any:
      return sharding if getattr(leaf, "shape", None) == param.shape else replicated

    opt_shardings = optax.tree_map_params(
        self.optimizer, moment_sharding, abstract.opt_state, abstract.params, param_shardings,
        transform_non_params=lambda _: replicated)
    model_state_shardings = self.model.model_state_shardings(
        abstract.model_state, param_shardings, self.partitioner.batch_sharding(), replicated)
    shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                           model_state=model_state_shardings)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return abstract, shardings

  def initialize(self, input_shapes: Shapes, first_batch: Optional[Mapping[str, Array]] = None,
                 params: Any = None) -> TrainState:
    """Fresh, sharded state: each device materialises only its own shards.

    ``first_batch`` (global arrays) seeds model state that starts from data (the Glauber
    chains); ``params`` replaces the random initialisation (e.g. a pretrained checkpoint)
    before the model state is built from them.
    """
    _, shardings = self.state_shardings(input_shapes)
    init = self.partitioner.jit(
        lambda batch, loaded: self._init_state(input_shapes, batch, loaded),
        out_shardings=shardings)
    return init(first_batch, params)

  # ---- The step ---------------------------------------------------------------------------

  def _grads_and_sums(self, params: Any, batch: Mapping[str, Array], rng: Array
                      ) -> tuple[Any, dict[str, Array]]:
    """Gradient of the summed loss and the summed metrics, accumulated over microbatches."""
    grad_fn = jax.grad(self.model.loss_fn, has_aux=True)
    if self.num_microbatches == 1:
      return grad_fn(params, batch, rng)
    size = next(iter(batch.values())).shape[0]
    if size % self.num_microbatches:
      raise ValueError(f"batch size {size} is not divisible by num_microbatches "
                       f"{self.num_microbatches}.")
    micro = jax.tree.map(
        lambda x: x.reshape((self.num_microbatches, size // self.num_microbatches) + x.shape[1:]),
        batch)

    def accumulate(carry: tuple[Any, Any], inputs: tuple[Array, Any]) -> tuple[Any, None]:
      index, microbatch = inputs
      grads, sums = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zero_grads = jax.tree.map(jnp.zeros_like, params)
    zero_sums = jax.tree.map(
        jnp.zeros_like,
        jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), rng)[1]))
    (grads, sums), _ = jax.lax.scan(
        accumulate, (zero_grads, zero_sums), (jnp.arange(self.num_microbatches), micro))
    return grads, sums

  def _train_step(self, state: TrainState, batch: Mapping[str, Array]
                  ) -> tuple[TrainState, dict[str, Array]]:
    rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), state.step)
    prepare_rng, loss_rng = jax.random.split(rng)
    batch, model_state = self.model.prepare_batch(state.params, state.model_state, batch,
                                                  state.step, prepare_rng)
    grads, sums = self._grads_and_sums(state.params, batch, loss_rng)
    weight = jnp.maximum(sums["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: g / weight, grads)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {name.removesuffix("_sum"): value / weight
               for name, value in sums.items() if name != "weight_sum"}
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm) & jnp.isfinite(metrics["loss"])
    metrics.update(
        grad_norm=grad_norm,
        learning_rate=jnp.asarray(self.learning_rate_fn(state.step), jnp.float32),
        target_tokens=sums["weight_sum"],
        skipped_step=jnp.where(finite, 0.0, 1.0))

    def keep_if_finite(new: Any, old: Any) -> Any:
      """``new`` where the step is finite, else ``old``: selected inside the compiled step."""
      return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    return TrainState(step=state.step + 1, params=keep_if_finite(params, state.params),
                      opt_state=keep_if_finite(opt_state, state.opt_state),
                      model_state=keep_if_finite(model_state, state.model_state)), metrics

  def train_step(self, state: TrainState, batch: Mapping[str, Array]
                 ) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step; ``state`` is donated (do not reuse the argument)."""
    if self._step_fn is None:
      shardings = jax.tree.map(lambda x: x.sharding, state)
      self._step_fn = self.partitioner.jit(
          self._train_step, in_shardings=(shardings, None), out_shardings=(shardings, None),
          donate_argnums=(0,))
    return self._step_fn(state, batch)
