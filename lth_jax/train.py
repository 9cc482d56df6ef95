"""Training: optimizer recipes, sharded masked train/eval steps, the fine-tuning loop.

The steps are `jax.jit` over a one-axis ('data') mesh: the train state and masks are
replicated, batches split along their first dimension, and the state is donated. The
masks are an argument of the train step, never a constant inside it, so one compiled
step serves every round of an IMP run; `make_train_steps` memoises the jitted steps
per (model, recipe, steps per epoch, mesh, objective) so that successive `fit` calls
reuse them. The step zeroes the gradients of pruned weights before the optimizer and
the pruned weights after the update: with torch-style coupled weight decay
(g + wd * w, as torch.optim.SGD) pruned weights, their momentum and their decay stay
exactly zero.

`fit` is the fine-tuning loop of one IMP round: it evaluates on 'val' every epoch,
on 'test' whenever validation accuracy improves (the reported number is the test
accuracy at the best validation epoch), writes an orbax checkpoint every epoch (and
every N steps if asked) and, called again on the same directory, resumes from the
latest checkpoint and ends bit-identical to an uninterrupted run.

Objectives with state of their own (`StatefulObjective`: SimCLR's and MoCo's PRNG
key, MoCo's key encoder and queue; see `lth_jax.objectives`) keep it in
`TrainState.extra`, which the same step carries, donates and checkpoints; they get
the masks after the optimizer step, so MoCo's key encoder is re-masked with the query
encoder's mask. Plain `Objective` functions (supervised cross-entropy) have no extra
state and compile to the same step as before.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from lth_jax import masks as masks_lib
from lth_jax import sharding
from lth_jax.errors import DivergenceError

if TYPE_CHECKING:
  from clu import metric_writers

Batch = Mapping[str, Any]
# evaluator(variables, split) -> {'accuracy', 'loss', ...} on 'val' or 'test'.
Evaluator = Callable[[Mapping[str, Any], str], Mapping[str, float]]
# objective(model, params, batch_stats, batch) -> (loss, (new_batch_stats, metrics)):
# the loss to differentiate, the updated BatchNorm statistics and scalar metrics
# (means over the global batch) to average over an epoch.
Objective = Callable[[nn.Module, Any, Any, Batch],
                     tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]

OPTIMIZERS = ('sgd', 'lars')
SCHEDULES = ('constant', 'multistep', 'cosine')
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


# ----------------------------------------------------------------------------------
# Optimizer recipes.
# ----------------------------------------------------------------------------------

def default_optimizer_config() -> ml_collections.ConfigDict:
  """The reference's downstream recipe (CV_LTH_Pre-training, main_imp_downstream.py).

  SGD, lr 0.1, momentum 0.9, coupled weight decay 2e-4, 182 epochs, lr x0.1 at
  epochs 91 and 136, one epoch of linear warm-up.

  Returns:
    A ConfigDict with every field `create_optimizer` reads.
  """
  return ml_collections.ConfigDict(dict(
      optimizer='sgd',            # 'sgd' or 'lars'
      learning_rate=0.1,
      momentum=0.9,
      nesterov=False,
      weight_decay=2e-4,
      trust_coefficient=0.001,    # lars only
      schedule='multistep',       # 'constant', 'multistep' or 'cosine'
      warmup_epochs=1,
      num_epochs=182,
      milestones=(91, 136),       # epochs (0-based) from which lr is scaled by gamma
      gamma=0.1,
  ))


def create_learning_rate_schedule(config: ml_collections.ConfigDict,
                                  steps_per_epoch: int) -> optax.Schedule:
  """The learning rate as a function of the optimizer step (0-based).

  Warm-up follows the reference: step t of the first `warmup_epochs` epochs uses
  lr * (t + 1) / warmup_steps. 'multistep' multiplies by `gamma` from the first step
  of each milestone epoch (torch's MultiStepLR stepped once per epoch); 'cosine'
  decays to zero over the steps after warm-up.

  Args:
    config: fields learning_rate, schedule, warmup_epochs, num_epochs, milestones,
      gamma (see `default_optimizer_config`).
    steps_per_epoch: optimizer steps per epoch.

  Returns:
    An optax schedule.
  """
  if steps_per_epoch < 1:
    raise ValueError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}.')
  base = config.learning_rate
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  total_steps = config.num_epochs * steps_per_epoch
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f'warmup_epochs ({config.warmup_epochs}) must be >= 0 and below '
                     f'num_epochs ({config.num_epochs}).')
  if config.schedule == 'constant':
    main = optax.constant_schedule(base)
  elif config.schedule == 'multistep':
    milestones = list(config.milestones)
    if milestones != sorted(set(milestones)) or any(
        not config.warmup_epochs < m < config.num_epochs for m in milestones):
      raise ValueError(
          f'milestones {milestones} must be strictly increasing epochs between '
          f'warmup_epochs ({config.warmup_epochs}) and num_epochs ({config.num_epochs}).')
    # join_schedules hands the main schedule steps counted from the end of warm-up.
    main = optax.piecewise_constant_schedule(
        base, {m * steps_per_epoch - warmup_steps: config.gamma for m in milestones})
  elif config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, decay_steps=total_steps - warmup_steps)
  else:
    raise ValueError(f'Unknown schedule {config.schedule!r}; choose one of {SCHEDULES}.')
  if warmup_steps == 0:
    return main
  warmup = lambda count: base * (count + 1) / warmup_steps
  return optax.join_schedules([warmup, main], [warmup_steps])


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """The optimizer of a recipe, with its learning-rate schedule.

  'sgd' is torch.optim.SGD: weight decay added to the gradient before momentum
  (coupled), dampening 0, optional Nesterov. 'lars' is optax's LARS with weight
  decay and trust ratio on weights of rank > 1 only (BatchNorm and biases
  excluded, as in SimCLR).

  Args:
    config: see `default_optimizer_config`.
    steps_per_epoch: optimizer steps per epoch (for the schedule).

  Returns:
    The optax transformation.
  """
  schedule = create_learning_rate_schedule(config, steps_per_epoch)
  if config.optimizer == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))
  if config.optimizer == 'lars':
    matrices = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.lars(
        schedule, weight_decay=config.weight_decay, weight_decay_mask=matrices,
        trust_coefficient=config.trust_coefficient, trust_ratio_mask=matrices,
        momentum=config.momentum, nesterov=config.nesterov)
  raise ValueError(f'Unknown optimizer {config.optimizer!r}; choose one of {OPTIMIZERS}.')


def compute_dtype(half_precision: bool) -> Any:
  """The model's computation dtype: bfloat16 for `half_precision`, else float32.

  bfloat16 keeps float32's exponent range, so no loss scaling is needed; parameters
  and optimizer state stay float32 either way.
  """
  return jnp.bfloat16 if half_precision else jnp.float32


# ----------------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------------

def cross_entropy_objective(model: nn.Module, params: Any, batch_stats: Any,
                            batch: Batch) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
  """Supervised softmax cross-entropy on {'image', 'label'} (an `Objective`)."""
  logits, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                                batch['image'], train=True, mutable=['batch_stats'])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
  accuracy = (jnp.argmax(logits, -1) == batch['label']).mean()
  return loss, (updates['batch_stats'], {'loss': loss, 'accuracy': accuracy})


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


def _eval_sums(model: nn.Module, variables: Any, batch: Batch) -> dict[str, jax.Array]:
  logits = model.apply(variables, batch['image'], train=False)
  weight = batch['mask'].astype(jnp.float32) if 'mask' in batch else jnp.ones(
      batch['label'].shape, jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  return {'correct': jnp.sum(weight * correct), 'loss': jnp.sum(weight * loss),
          'count': jnp.sum(weight)}


@dataclasses.dataclass(frozen=True)
class TrainSteps:
  """The jitted functions of one (model, recipe, mesh, objective).

  Attributes:
    mesh: the mesh they run on.
    schedule: the learning-rate schedule (step -> lr).
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
def _eval_step(model: nn.Module, mesh: Mesh) -> Callable[..., dict[str, jax.Array]]:
  replicated = sharding.replicated_sharding(mesh)
  return jax.jit(functools.partial(_eval_sums, model),
                 in_shardings=(replicated, sharding.batch_sharding(mesh)),
                 out_shardings=replicated)


@functools.lru_cache(maxsize=16)
def _build_steps(model: nn.Module, config: ml_collections.FrozenConfigDict,
                 steps_per_epoch: int, mesh: Mesh,
                 objective: Objective | StatefulObjective) -> TrainSteps:
  tx = create_optimizer(config, steps_per_epoch)
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
  return TrainSteps(mesh=mesh, schedule=create_learning_rate_schedule(config, steps_per_epoch),
                    init=init, train=train)


def make_train_steps(model: nn.Module, config: ml_collections.ConfigDict,
                     steps_per_epoch: int, mesh: Mesh | None = None,
                     objective: Objective | StatefulObjective = cross_entropy_objective
                     ) -> TrainSteps:
  """The jitted init and train functions, memoised so every IMP round shares them.

  Args:
    model: the Flax model (its dtype sets the computation precision).
    config: the optimizer recipe (see `default_optimizer_config`).
    steps_per_epoch: optimizer steps per epoch.
    mesh: the device mesh; all devices by default.
    objective: the training loss (an `Objective` or a `StatefulObjective`).

  Returns:
    The `TrainSteps`; calling this again with equal arguments returns the same
    object, whose functions are already compiled.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  return _build_steps(model, ml_collections.FrozenConfigDict(config), steps_per_epoch,
                      mesh, objective)


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


def _sum_sequentially(totals: dict[str, float], values: Iterable[Mapping[str, Any]]) -> None:
  """Adds device results into float64 totals in order (same order -> same bits)."""
  for item in jax.device_get(list(values)):
    for key, value in item.items():
      totals[key] = totals.get(key, 0.0) + float(value)


def evaluate(model: nn.Module, variables: Mapping[str, Any], batches: Iterable[Batch],
             mesh: Mesh | None = None) -> dict[str, float]:
  """Exact accuracy and mean loss over batches whose padding has 'mask' 0.

  Args:
    model: the Flax model.
    variables: {'params', 'batch_stats'}.
    batches: host-local numpy batches {'image', 'label', optional 'mask'}; padded
      examples carry mask 0 and do not count.
    mesh: the device mesh; all devices by default.

  Returns:
    {'accuracy', 'loss', 'count'} over the real examples.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  eval_step = _eval_step(model, mesh)
  variables = sharding.replicate(dict(variables), mesh)
  sums: dict[str, float] = {}
  _sum_sequentially(sums, (eval_step(variables, sharding.shard_batch(b, mesh))
                           for b in batches))
  if not sums.get('count'):
    raise ValueError('evaluate got no examples: the batches were empty or all padding.')
  return {'accuracy': sums['correct'] / sums['count'], 'loss': sums['loss'] / sums['count'],
          'count': sums['count']}


# ----------------------------------------------------------------------------------
# The fine-tuning loop.
# ----------------------------------------------------------------------------------

@dataclasses.dataclass
class FitResult:
  """What one fine-tuning run produced.

  Attributes:
    best_val_accuracy: the highest validation accuracy.
    best_epoch: the (1-based) epoch where it was first reached.
    test_accuracy: test accuracy after that epoch (the paper's number).
    history: one dict per epoch: epoch, step, learning_rate, train_<metric>,
      val_accuracy, val_loss, and test_accuracy/test_loss where validation improved.
    variables: final {'params', 'batch_stats'} (replicated jax arrays).
    rewind_variables: {'params', 'batch_stats'} after `rewind_step` optimizer steps,
      when asked for.
  """
  best_val_accuracy: float
  best_epoch: int
  test_accuracy: float
  history: list[dict[str, float]]
  variables: dict[str, Any]
  rewind_variables: dict[str, Any] | None


def _fresh_meta() -> dict[str, Any]:
  return {'epoch': 0, 'step': 0, 'history': [], 'best_val_accuracy': -1.0,
          'best_epoch': 0, 'test_accuracy': None, 'train_sums': {},
          'has_rewind': False}


def _save(manager: ocp.CheckpointManager, state: TrainState, meta: dict[str, Any],
          rewind: Any | None) -> None:
  # Host copies: the state is replicated, so one copy is the whole checkpoint, and
  # orbax then need not slice every replicated device array (several times slower).
  items = {'state': ocp.args.StandardSave(jax.device_get(state)),
           'meta': ocp.args.JsonSave(meta)}
  if rewind is not None:
    items['rewind'] = ocp.args.StandardSave(jax.device_get(rewind))
  manager.save(meta['step'], args=ocp.args.Composite(**items), force=True)


def _restore(manager: ocp.CheckpointManager, state: TrainState,
             mesh: Mesh) -> tuple[TrainState, dict[str, Any], Any | None]:
  step = manager.latest_step()
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  host_state = jax.device_get(state)
  items = {'state': ocp.args.StandardRestore(host_state)}
  if meta['has_rewind']:
    items['rewind'] = ocp.args.StandardRestore(host_state.variables)
  restored = sharding.replicate(dict(manager.restore(step, args=ocp.args.Composite(**items))),
                                mesh)
  return restored['state'], meta, restored.get('rewind')


def _restore_final_state(checkpoint_dir: str, like: TrainState, mesh: Mesh) -> TrainState:
  """The last state a finished (or interrupted) `fit` saved in `checkpoint_dir`."""
  manager = ocp.CheckpointManager(os.path.abspath(checkpoint_dir))
  try:
    if manager.latest_step() is None:
      raise ValueError(f'carry_from={checkpoint_dir!r} holds no checkpoint of a previous '
                       'run; pass the checkpoint_dir of a run that has trained.')
    return _restore(manager, like, mesh)[0]
  finally:
    manager.close()


def _copy(tree: Any) -> Any:
  # A snapshot must not share buffers with a state that the next step donates.
  return jax.tree.map(jnp.copy, tree)


def _end_of_epoch_record(state: TrainState, meta: dict[str, Any],
                         evaluator: Evaluator) -> dict[str, float]:
  """Validates (and tests, when validation improved), updating the best in `meta`."""
  val = evaluator(state.variables, 'val')
  record = {'val_accuracy': val['accuracy'], 'val_loss': val['loss']}
  if val['accuracy'] > meta['best_val_accuracy']:
    test = evaluator(state.variables, 'test')
    record.update(test_accuracy=test['accuracy'], test_loss=test['loss'])
    meta.update(best_val_accuracy=val['accuracy'], best_epoch=meta['epoch'] + 1,
                test_accuracy=test['accuracy'])
  return record


def fit(model: nn.Module, variables: Mapping[str, Any], masks: Any | None,
        config: ml_collections.ConfigDict, *,
        train_batches: Callable[[int, int], Iterable[Batch]],
        eval_batches: Callable[[str], Iterable[Batch]],
        steps_per_epoch: int, checkpoint_dir: str, mesh: Mesh | None = None,
        objective: Objective | StatefulObjective = cross_entropy_objective,
        writer: metric_writers.MetricWriter | None = None,
        checkpoint_every_steps: int | None = None,
        rewind_step: int | None = None, rng: jax.Array | None = None,
        evaluator: Evaluator | None = None,
        carry_from: str | None = None) -> FitResult:
  """Fine-tunes masked `variables` for `config.num_epochs` epochs, resumably.

  Args:
    model: the Flax model.
    variables: initial {'params', 'batch_stats'} (pruned entries are zeroed here too).
    masks: bool pytree parallel to params (all-True leaves are not pruned), or None
      for dense training. Pass all-True masks rather than None for a dense round of
      an IMP run, so that every round shares one compiled step.
    config: the optimizer recipe (see `default_optimizer_config`), including
      num_epochs.
    train_batches: (epoch, start_step) -> this host's training batches of that
      (0-based) epoch from step `start_step` on; the same arguments must give the
      same batches for resuming to be exact.
    eval_batches: split ('val' or 'test') -> this host's evaluation batches, padded
      examples marked by 'mask' 0 (every host yields the same number of batches).
    steps_per_epoch: optimizer steps per epoch (batches `train_batches` yields).
    checkpoint_dir: where the run's checkpoints live; an existing run there resumes.
    mesh: the device mesh; all devices by default.
    objective: the training loss (an `Objective` or a `StatefulObjective`).
    writer: optional clu metric writer for per-epoch scalars and steps/s.
    checkpoint_every_steps: also checkpoint every this many steps within an epoch.
    rewind_step: also return the variables after this many optimizer steps (0 gives
      the initial, masked variables): the late-rewinding point.
    rng: PRNG key of the objective's state (on-device augmentation); key(0) if None.
    evaluator: (variables, split) -> {'accuracy', 'loss'}, the per-epoch metric
      (e.g. kNN accuracy of self-supervised features); None: classification
      accuracy of the model on `eval_batches(split)`.
    carry_from: checkpoint_dir of an earlier run (the previous IMP round) whose final
      optimizer state, and what the objective keeps of its state, this run starts
      from instead of fresh ones (the reference's carry-over between rounds).

  Returns:
    The `FitResult`.

  Raises:
    DivergenceError: the loss, params or BatchNorm statistics became non-finite; it is
      raised before the next checkpoint, so the last one saved is finite, and it names
      the epoch, the step and its learning rate.
  """
  # clu imports tensorflow (seconds); workers that only need the steps skip it.
  from clu import periodic_actions

  if masks is not None:
    check_masks(variables['params'], masks)
  num_epochs = config.num_epochs
  total_steps = num_epochs * steps_per_epoch
  if rewind_step is not None and not 0 <= rewind_step <= total_steps:
    raise ValueError(f'rewind_step must be in [0, {total_steps}] (the run\'s steps), '
                     f'got {rewind_step}.')
  steps = make_train_steps(model, config, steps_per_epoch, mesh, objective)
  mesh = steps.mesh
  masks = None if masks is None else sharding.replicate(masks, mesh)
  if evaluator is None:
    evaluator = lambda v, split: evaluate(model, v, eval_batches(split), mesh)
  start = (sharding.replicate(variables['params'], mesh),
           sharding.replicate(variables['batch_stats'], mesh), masks, rng)
  state = steps.init(*start)

  manager = ocp.CheckpointManager(
      os.path.abspath(checkpoint_dir),
      # Synchronous: saves are small host copies, and nothing is left in flight when
      # fit returns or raises.
      options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False))
  rewind = None
  if manager.latest_step() is None:
    meta = _fresh_meta()
    if carry_from is not None:
      state = steps.init(*start, carry=_restore_final_state(carry_from, state, mesh))
  else:
    state, meta, rewind = _restore(manager, state, mesh)
    logging.info('Resuming %s at epoch %d, step %d.', checkpoint_dir, meta['epoch'],
                 meta['step'])
    if rewind is None and rewind_step is not None and rewind_step < meta['step']:
      raise ValueError(f'{checkpoint_dir} holds a run without rewind_step={rewind_step} '
                       f'that is past that step; use a new checkpoint_dir.')
  if rewind_step == 0 and rewind is None:
    rewind = _copy(state.variables)

  step = meta['step']
  report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                                    writer=writer)

  def absorb(pending: list[dict[str, jax.Array]], epoch: int) -> None:
    # The metrics of the steps since the last absorb, before anything is saved.
    metrics = jax.device_get(pending)
    for i, item in enumerate(metrics):
      if item.pop(NONFINITE):
        bad = step - len(metrics) + i + 1
        raise DivergenceError(checkpoint_dir, epoch=epoch + 1, step=bad,
                              learning_rate=float(steps.schedule(bad - 1)))
    _sum_sequentially(meta['train_sums'], metrics)
    pending.clear()

  for epoch in range(meta['epoch'], num_epochs):
    start = step - epoch * steps_per_epoch
    batches = iter(train_batches(epoch, start))
    pending = []
    for i in range(start, steps_per_epoch):
      batch = next(batches, None)
      if batch is None:
        raise ValueError(f'train_batches({epoch}, {start}) yielded {i - start} batches; '
                         f'steps_per_epoch={steps_per_epoch} needs {steps_per_epoch - start}.')
      state, metrics = steps.train(state, masks, sharding.shard_batch(batch, mesh))
      pending.append(metrics)
      step += 1
      if step == rewind_step:
        rewind = _copy(state.variables)
      report_progress(step)
      if checkpoint_every_steps and step % checkpoint_every_steps == 0 and (
          i + 1 < steps_per_epoch):
        absorb(pending, epoch)
        meta.update(step=step, has_rewind=rewind is not None)
        _save(manager, state, meta, rewind)
    absorb(pending, epoch)

    record = {'epoch': epoch + 1, 'step': step,
              'learning_rate': float(steps.schedule(step - 1)),
              **{f'train_{k}': v / steps_per_epoch for k, v in meta['train_sums'].items()}}
    with report_progress.timed('eval'):
      record.update(_end_of_epoch_record(state, meta, evaluator))
    meta['history'].append(record)
    meta.update(epoch=epoch + 1, step=step, train_sums={}, has_rewind=rewind is not None)
    _save(manager, state, meta, rewind)
    logging.info('Epoch %d/%d: %s', epoch + 1, num_epochs, record)
    if writer is not None:
      writer.write_scalars(step, {k: v for k, v in record.items() if k not in ('epoch', 'step')})
      writer.flush()
  manager.wait_until_finished()
  manager.close()
  return FitResult(best_val_accuracy=meta['best_val_accuracy'], best_epoch=meta['best_epoch'],
                   test_accuracy=meta['test_accuracy'], history=meta['history'],
                   variables=state.variables, rewind_variables=rewind)
