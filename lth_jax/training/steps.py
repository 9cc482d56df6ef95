"""Sharded masked train steps: `TrainState`, the objective protocols, `make_train_steps`.

The steps are `jax.jit` over a one-axis ('data') mesh: the train state and masks are
replicated, batches split along their first dimension, and the state is donated. The
masks are an argument of the train step, never a constant inside it, so one compiled
step serves every round of an IMP run; `make_train_steps` memoises the jitted steps
per (model, recipe, steps per epoch, mesh, objective) so that successive `fit` calls
reuse them. The step zeroes the gradients of pruned weights before the optimizer and
the pruned weights after the update: with torch-style coupled weight decay
(g + wd * w, as torch.optim.SGD) pruned weights, their momentum and their decay stay
exactly zero.

Objectives with state of their own (`StatefulObjective`: SimCLR's and MoCo's PRNG
key, MoCo's key encoder and queue, a dropout key; see `lth_jax.objectives`) keep it in
`TrainState.extra`, which the same step carries, donates and checkpoints; they get the
masks after the optimizer step, so MoCo's key encoder is re-masked with the query
encoder's mask. Plain `Objective` functions (a task's loss) have no extra state.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from lth_jax import masks as masks_lib
from lth_jax.runtime import sharding
from lth_jax.training.optim import Recipe, batch_learning_rate, create_optimizer

Batch = Mapping[str, Any]
# objective(model, params, batch_stats, batch) -> (loss, (new_batch_stats, metrics)):
# the loss to differentiate, the updated BatchNorm statistics and scalar metrics
# (means over the global batch) to average over an epoch.
Objective = Callable[[nn.Module, Any, Any, Batch],
                     tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]
# The train step's metric that is 1 when the loss, params or BN statistics are not finite.
NONFINITE = 'nonfinite'


@struct.dataclass
class TrainState:
  """Everything a train step updates.

  Attributes:
    step: number of optimizer steps taken.
    params: model parameters (float32, pruned entries zero).
    batch_stats: BatchNorm running statistics.
    opt_state: optax state (momentum etc.).
    extra: the objective's own state (see `StatefulObjective`); None for plain
      objectives.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  extra: Any = None

  @property
  def variables(self) -> dict[str, Any]:
    """{'params', 'batch_stats'}, ready for `model.apply`."""
    return {'params': self.params, 'batch_stats': self.batch_stats}


def _masked(tree: Any, masks: Any | None) -> Any:
  """`masks_lib.apply`, or `tree` itself for dense training (masks None)."""
  return tree if masks is None else masks_lib.apply(tree, masks)


class StatefulObjective(Protocol):
  """An objective with state of its own, carried in `TrainState.extra`.

  Implementations are hashable (frozen dataclasses), so equal objectives share one
  compiled step; `lth_jax.objectives.SimCLR` and `MoCo` are the examples.
  """

  def init_extra(self, model: nn.Module, params: Any, batch_stats: Any, rng: jax.Array,
                 carry: Any | None = None) -> Any:
    """The state at the start of a run, from the masked params and a PRNG key.

    `carry` is the state a previous run ended with (`fit(carry_from=...)`): the
    objective keeps what the reference carries over (MoCo: the queue).
    """

  def __call__(self, model: nn.Module, params: Any, batch_stats: Any, batch: Batch,
               extra: Any) -> tuple[jax.Array, tuple[Any, Any, dict[str, jax.Array]]]:
    """(loss, (new_batch_stats, new_extra, metrics)); only params are differentiated."""

  def update_extra(self, extra: Any, params: Any, masks: Any | None) -> Any:
    """The state after the optimizer step, given the new, masked params."""


@dataclasses.dataclass(frozen=True)
class _Stateless:
  """A plain `Objective` as a `StatefulObjective` whose state is None."""
  objective: Objective

  def init_extra(self, model, params, batch_stats, rng, carry=None):
    del model, params, batch_stats, rng, carry

  def __call__(self, model, params, batch_stats, batch, extra):
    loss, (batch_stats, metrics) = self.objective(model, params, batch_stats, batch)
    return loss, (batch_stats, extra, metrics)

  def update_extra(self, extra, params, masks):
    del params, masks
    return extra


def _as_stateful(objective: Objective | StatefulObjective) -> StatefulObjective:
  return objective if hasattr(objective, 'init_extra') else _Stateless(objective)


def next_keys(extra: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
  """A stateful objective's key for this step and the next state key.

  The state keeps raw key data under 'rng' and every step splits it, a chain, so a
  resumed run draws exactly the keys the uninterrupted run would.

  Args:
    extra: the objective's state, {'rng': raw key data, ...}.

  Returns:
    (this step's key, the raw key data of the next state).
  """
  key, following = jax.random.split(jax.random.wrap_key_data(extra['rng']))
  return key, jax.random.key_data(following)


def _all_finite(*trees: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))


def _train_step(model: nn.Module, tx: optax.GradientTransformation,
                objective: StatefulObjective, state: TrainState, masks: Any | None,
                batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
  grad_fn = jax.value_and_grad(
      lambda p: objective(model, p, state.batch_stats, batch, state.extra), has_aux=True)
  (loss, (batch_stats, extra, metrics)), grads = grad_fn(state.params)
  grads = _masked(grads, masks)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # Re-masking guards against any update that is not zero where the gradient is
  # (e.g. weights that were non-zero in the initial variables).
  params = _masked(optax.apply_updates(state.params, updates), masks)
  # Checked on the host before anything is saved or evaluated (see `fit`): a NaN loss
  # would otherwise read as an accuracy (argmax of NaN logits is class 0) and a NaN
  # weight as the largest magnitude.
  metrics = {**metrics, NONFINITE: 1 - _all_finite(loss, params, batch_stats).astype(jnp.int32)}
  return TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                    opt_state=opt_state,
                    extra=objective.update_extra(extra, params, masks)), metrics


def _init_state(tx: optax.GradientTransformation, model: nn.Module,
                objective: StatefulObjective, params: Any, batch_stats: Any,
                masks: Any | None, rng_data: jax.Array,
                carry: TrainState | None) -> TrainState:
  params = _masked(params, masks)
  # The state is donated to the train step, so it must own its buffers: a copy keeps
  # the caller's batch_stats (e.g. the rewind point) alive.
  batch_stats = jax.tree.map(jnp.copy, batch_stats)
  extra = objective.init_extra(model, params, batch_stats, jax.random.wrap_key_data(rng_data),
                               None if carry is None else carry.extra)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params) if carry is None else carry.opt_state,
                    extra=extra)


@dataclasses.dataclass(frozen=True)
class TrainSteps:
  """The jitted functions of one (model, recipe, mesh, objective).

  Attributes:
    mesh: the mesh they run on.
    schedule: the learning rate of each batch step (0-based).
    init: (params, batch_stats, masks, rng=None, carry=None) -> TrainState, params
      masked, replicated; `rng` (a PRNG key, default key(0)) seeds the objective's
      state; `carry`, a previous run's final state, gives the optimizer state and
      what the objective keeps of its state.
    train: (state, masks, batch) -> (state, metrics); state donated, batch from
      `sharding.shard_batch`, masks a replicated bool pytree or None (dense).
  """
  mesh: Mesh
  schedule: optax.Schedule
  init: Callable[..., TrainState]
  train: Callable[..., tuple[TrainState, dict[str, jax.Array]]]


@functools.lru_cache(maxsize=16)
def _build_steps(model: nn.Module, recipe: Recipe, steps_per_epoch: int, mesh: Mesh,
                 objective: Objective | StatefulObjective,
                 is_head: Callable[[str], bool] | None) -> TrainSteps:
  tx = create_optimizer(recipe, steps_per_epoch, is_head)
  objective = _as_stateful(objective)
  replicated = sharding.replicated_sharding(mesh)
  init_state = jax.jit(functools.partial(_init_state, tx, model, objective),
                       in_shardings=replicated, out_shardings=replicated)

  def init(params, batch_stats, masks, rng=None, carry=None):
    # Raw key data: a host array that `replicate` can place on every process.
    rng_data = np.asarray(jax.random.key_data(jax.random.key(0) if rng is None else rng))
    return init_state(params, batch_stats, masks, sharding.replicate(rng_data, mesh), carry)

  train = jax.jit(functools.partial(_train_step, model, tx, objective),
                  in_shardings=(replicated, replicated, sharding.batch_sharding(mesh)),
                  out_shardings=(replicated, replicated), donate_argnums=0)
  return TrainSteps(mesh=mesh, schedule=batch_learning_rate(recipe, steps_per_epoch),
                    init=init, train=train)


def make_train_steps(model: nn.Module, recipe: Recipe, steps_per_epoch: int,
                     mesh: Mesh | None = None, *, objective: Objective | StatefulObjective,
                     is_head: Callable[[str], bool] | None = None) -> TrainSteps:
  """The jitted init and train functions, memoised so every IMP round shares them.

  Args:
    model: the Flax model (its dtype sets the computation precision).
    recipe: the optimizer recipe.
    steps_per_epoch: batches per epoch.
    mesh: the device mesh; all devices by default.
    objective: the training loss (an `Objective` or a `StatefulObjective`).
    is_head: top-level parameter name -> whether it is the head's (for
      `Recipe.head_lr_scale`); a module-level function, so that it caches.

  Returns:
    The `TrainSteps`; calling this again with equal arguments returns the same
    object, whose functions are already compiled.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  return _build_steps(model, recipe, steps_per_epoch, mesh, objective, is_head)


def check_masks(params: Any, masks: Any) -> None:
  """Raises a ValueError unless `masks` is a pytree parallel to `params`.

  Args:
    params: the parameter tree.
    masks: a tree with the same structure and leaf shapes (bool or integer leaves).
  """
  if jax.tree.structure(params) != jax.tree.structure(masks):
    raise ValueError(
        'masks must have the same tree structure as params (every leaf present, '
        'all-True for leaves that are not pruned); got masks with structure '
        f'{jax.tree.structure(masks)} for params {jax.tree.structure(params)}.')
  for (path, p), m in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree.leaves(masks)):
    if np.shape(p) != np.shape(m):
      raise ValueError(f'Mask of {jax.tree_util.keystr(path)} has shape {np.shape(m)}, '
                       f'the parameter has {np.shape(p)}.')
