"""Optimizer recipes: a frozen `Recipe` -> the optax transformation and its schedule.

    recipe = Recipe(learning_rate=0.1, num_epochs=182)     # the reference's downstream one
    tx = create_optimizer(recipe, steps_per_epoch=351)

A `Recipe` is a plain hashable dataclass (the experiment layer builds it from a config),
so equal recipes share one compiled train step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('sgd', 'lars')
SCHEDULES = ('constant', 'multistep', 'cosine', 'poly', 'yolov4_reference')


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a network is trained; the defaults are the reference's downstream recipe.

  (CV_LTH_Pre-training, main_imp_downstream.py: SGD, lr 0.1, momentum 0.9, coupled
  weight decay 2e-4, 182 epochs, lr x0.1 at epochs 91 and 136, one warm-up epoch.)

  Attributes:
    optimizer: 'sgd' (torch.optim.SGD) or 'lars'.
    learning_rate: the peak learning rate.
    momentum: heavy-ball momentum (0: none).
    nesterov: Nesterov momentum.
    weight_decay: coupled weight decay (added to the gradient, as torch's SGD).
    trust_coefficient: LARS's trust coefficient.
    schedule: 'constant', 'multistep' (x gamma from each milestone epoch), 'cosine'
      (to `final_learning_rate`), 'poly' ((1 - t / T) ** power, DeepLab's, never below
      `poly_min_learning_rate`) or 'yolov4_reference' (the reference detection's
      warm-up and cosine as its training loop steps them: see
      `create_learning_rate_schedule`).
    warmup_epochs: linear warm-up epochs (may be fractional).
    num_epochs: epochs of the run.
    milestones: 'multistep' epochs.
    gamma: 'multistep' factor.
    power: 'poly' exponent.
    final_learning_rate: where 'cosine' and 'poly' end (the backbone's; the head's is
      `head_lr_scale` times it); 'yolov4_reference''s lr_min.
    poly_min_learning_rate: 'poly' only: the least rate of every parameter group, the
      head's included (not scaled by `head_lr_scale`), as the reference's PolyLR
      (min_lr 1e-6).
    counter_divisor: 'yolov4_reference' only: an epoch advances the schedule's counter
      by (batches per epoch) / counter_divisor; the reference divides by its batch
      size, 8 (see `create_learning_rate_schedule`).
    head_lr_scale: learning-rate factor of the variables outside the backbone (a task's
      head); the reference's segmentation trains its head at 10x the backbone's rate.
    accumulate_steps: optimizer steps sum the gradients of this many batches, stepping
      at batches 0, k, 2k, ... of every epoch as the reference's detection does with
      k = 2 (see `create_optimizer`).
  """
  optimizer: str = 'sgd'
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 2e-4
  trust_coefficient: float = 0.001
  schedule: str = 'multistep'
  warmup_epochs: float = 1
  num_epochs: int = 182
  milestones: tuple[int, ...] = (91, 136)
  gamma: float = 0.1
  power: float = 0.9
  final_learning_rate: float = 0.0
  poly_min_learning_rate: float = 1e-6
  counter_divisor: int = 8
  head_lr_scale: float = 1.0
  accumulate_steps: int = 1

  def __post_init__(self):
    object.__setattr__(self, 'milestones', tuple(self.milestones))
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f'Unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}.')
    if self.schedule not in SCHEDULES:
      raise ValueError(f'Unknown schedule {self.schedule!r}; choose one of {SCHEDULES}.')
    if (self.num_epochs < 1 or self.learning_rate <= 0 or self.accumulate_steps < 1
        or self.counter_divisor < 1):
      raise ValueError(f'num_epochs ({self.num_epochs}), accumulate_steps '
                       f'({self.accumulate_steps}) and counter_divisor '
                       f'({self.counter_divisor}) must be >= 1 and learning_rate '
                       f'({self.learning_rate}) > 0.')


def optimizer_steps_per_epoch(recipe: Recipe, steps_per_epoch: int) -> int:
  """Optimizer steps in an epoch of `steps_per_epoch` batches.

  With `accumulate_steps` = k the optimizer steps after batches 0, k, 2k, ... of every
  epoch (see `create_optimizer`): ceil(steps_per_epoch / k) steps.

  Args:
    recipe: the recipe.
    steps_per_epoch: batches per epoch.

  Returns:
    The number of optimizer steps.
  """
  return -(-steps_per_epoch // recipe.accumulate_steps)


def _warmup_steps(recipe: Recipe, optimizer_steps: int) -> int:
  return int(round(recipe.warmup_epochs * optimizer_steps))


def _yolov4_reference(recipe: Recipe, steps_per_epoch: int) -> optax.Schedule:
  # Detection/utils/cosine_lr_scheduler.py's CosineDecayLR (warm-up and T_max in
  # batches), which Detection/train_imp.py sets before batch i of epoch e at
  # t = len(loader) / BATCH_SIZE * e + i: the counter gains only len(loader) / 8 an
  # epoch, so each epoch restarts the warm-up until epoch 16 and the cosine stays near
  # its start. An optimizer step uses the rate set before the batch it is taken at.
  base, final = recipe.learning_rate, recipe.final_learning_rate
  warmup = recipe.warmup_epochs * steps_per_epoch
  total = recipe.num_epochs * steps_per_epoch
  per_epoch = optimizer_steps_per_epoch(recipe, steps_per_epoch)
  advance = steps_per_epoch / recipe.counter_divisor

  def schedule(count):
    epoch, step = jnp.divmod(count, per_epoch)
    t = advance * epoch + recipe.accumulate_steps * step
    warm = base * t / max(warmup, 1)
    cosine = final + 0.5 * (base - final) * (1 + jnp.cos((t - warmup) / (total - warmup)
                                                         * jnp.pi))
    return jnp.where(t < warmup, warm, cosine)

  return schedule


def _unfloored_schedule(recipe: Recipe, steps_per_epoch: int) -> optax.Schedule:
  if recipe.schedule == 'yolov4_reference':
    return _yolov4_reference(recipe, steps_per_epoch)
  base = recipe.learning_rate
  steps_per_epoch = optimizer_steps_per_epoch(recipe, steps_per_epoch)
  warmup_steps = _warmup_steps(recipe, steps_per_epoch)
  decay_steps = recipe.num_epochs * steps_per_epoch - warmup_steps
  if recipe.schedule == 'constant':
    main = optax.constant_schedule(base)
  elif recipe.schedule == 'multistep':
    milestones = list(recipe.milestones)
    if milestones != sorted(set(milestones)) or any(
        not recipe.warmup_epochs < m < recipe.num_epochs for m in milestones):
      raise ValueError(
          f'milestones {milestones} must be strictly increasing epochs between '
          f'warmup_epochs ({recipe.warmup_epochs}) and num_epochs ({recipe.num_epochs}).')
    # join_schedules hands the main schedule steps counted from the end of warm-up.
    main = optax.piecewise_constant_schedule(
        base, {m * steps_per_epoch - warmup_steps: recipe.gamma for m in milestones})
  elif recipe.schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, decay_steps=decay_steps,
                                       alpha=recipe.final_learning_rate / base)
  else:
    main = optax.polynomial_schedule(base, recipe.final_learning_rate, recipe.power,
                                     decay_steps)
  if warmup_steps == 0:
    return main
  warmup = lambda count: base * (count + 1) / warmup_steps
  return optax.join_schedules([warmup, main], [warmup_steps])


def _group_schedule(recipe: Recipe, steps_per_epoch: int, scale: float = 1.0
                    ) -> optax.Schedule:
  """The rate of a parameter group whose rate is `scale` x the recipe's."""
  schedule = _unfloored_schedule(recipe, steps_per_epoch)
  if recipe.schedule == 'poly':
    # PolyLR's max(base_lr * (1 - t / T) ** power, min_lr) holds for each group's base_lr.
    return lambda count: jnp.maximum(scale * schedule(count), recipe.poly_min_learning_rate)
  return schedule if scale == 1 else lambda count: scale * schedule(count)


def create_learning_rate_schedule(recipe: Recipe, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate as a function of the optimizer step (0-based).

  An epoch of `steps_per_epoch` batches has `optimizer_steps_per_epoch` optimizer steps
  (one a batch without gradient accumulation). Warm-up follows the reference's
  classification: step t of the first `warmup_epochs` epochs uses
  lr * (t + 1) / warmup_steps. 'multistep' multiplies by `gamma` from the first step of
  each milestone epoch (torch's MultiStepLR stepped once per epoch); 'cosine' and 'poly'
  decay to `final_learning_rate` over the steps after warm-up, 'poly' never below
  `poly_min_learning_rate`.

  'yolov4_reference' is the reference detection's schedule as it runs
  (Detection/utils/cosine_lr_scheduler.py CosineDecayLR, set before each batch of
  Detection/train_imp.py): with B = steps_per_epoch, W = warmup_epochs * B and
  T = num_epochs * B, the rate at counter t is lr * t / W while t < W, then
  final + (lr - final) * (1 + cos(pi * (t - W) / (T - W))) / 2, and the optimizer step
  taken at batch i of epoch e (i = k x its index in the epoch, k = accumulate_steps)
  uses t = B / counter_divisor * e + i. With VOC07+12 (B = 2,069 batches of 8, 120
  epochs, lr 1e-4 to 1e-6, W = 2 epochs, counter_divisor 8) the warm-up is a saw-tooth:
  epoch e < 16 (0-based) starts again at e / 16 x lr and climbs (to lr from epoch 9 on);
  from epoch 16 the rate stays near lr, 0.97e-4 in the last epoch, where 'cosine'
  reaches 1e-6.

  Args:
    recipe: the recipe.
    steps_per_epoch: batches per epoch.

  Returns:
    An optax schedule: the backbone's rate (`head_lr_scale` scales the head's).
  """
  if steps_per_epoch < 1:
    raise ValueError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}.')
  per_epoch = optimizer_steps_per_epoch(recipe, steps_per_epoch)
  if not 0 <= _warmup_steps(recipe, per_epoch) < recipe.num_epochs * per_epoch:
    raise ValueError(f'warmup_epochs ({recipe.warmup_epochs}) must be >= 0 and below '
                     f'num_epochs ({recipe.num_epochs}).')
  return _group_schedule(recipe, steps_per_epoch)


def batch_learning_rate(recipe: Recipe, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate of the last optimizer step taken at or before each batch.

  Args:
    recipe: the recipe.
    steps_per_epoch: batches per epoch.

  Returns:
    batch (0-based, counted over the run) -> the backbone's learning rate.
  """
  schedule = create_learning_rate_schedule(recipe, steps_per_epoch)
  per_epoch = optimizer_steps_per_epoch(recipe, steps_per_epoch)

  def rate(batch):
    epoch, index = divmod(batch, steps_per_epoch)
    return schedule(epoch * per_epoch + index // recipe.accumulate_steps)

  return rate


def _batches_per_step(recipe: Recipe, steps_per_epoch: int) -> Callable[[Any], Any]:
  # Detection/train_imp.py steps `if i % accumulate == 0` and zeroes the gradients only
  # after a step: the run's first step takes batch 0 alone, an epoch's first step also
  # takes the batches after the previous epoch's last step, the others `accumulate`
  # batches; those after the run's last step are never applied.
  per_epoch = optimizer_steps_per_epoch(recipe, steps_per_epoch)
  carried = (steps_per_epoch - 1) % recipe.accumulate_steps
  return lambda step: jnp.where(step % per_epoch == 0, jnp.where(step == 0, 1, 1 + carried),
                                recipe.accumulate_steps)


def _optimizer(recipe: Recipe, schedule: optax.Schedule) -> optax.GradientTransformation:
  if recipe.optimizer == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(recipe.weight_decay),
        optax.sgd(schedule, momentum=recipe.momentum or None, nesterov=recipe.nesterov))
  matrices = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.lars(
      schedule, weight_decay=recipe.weight_decay, weight_decay_mask=matrices,
      trust_coefficient=recipe.trust_coefficient, trust_ratio_mask=matrices,
      momentum=recipe.momentum, nesterov=recipe.nesterov)


def create_optimizer(recipe: Recipe, steps_per_epoch: int,
                     is_head: Callable[[str], bool] | None = None
                     ) -> optax.GradientTransformation:
  """The optimizer of a recipe, with its learning-rate schedule.

  'sgd' is torch.optim.SGD: weight decay added to the gradient before momentum
  (coupled), dampening 0, optional Nesterov. 'lars' is optax's LARS with weight decay
  and trust ratio on weights of rank > 1 only (BatchNorm and biases excluded, as in
  SimCLR). With `head_lr_scale` != 1 the head's variables get their own copy of the
  optimizer at the scaled rate (`optax.multi_transform`). With `accumulate_steps` = k > 1
  the gradients are summed and the optimizer steps after batches 0, k, 2k, ... of
  every epoch, as the reference's detection: the run's first step takes batch 0 alone,
  an epoch's first step also the previous epoch's batches after its last step, the
  others k batches; the batches after the run's last step are never applied.

  Args:
    recipe: the recipe.
    steps_per_epoch: batches per epoch.
    is_head: top-level parameter name -> whether it belongs to the head (needed when
      `head_lr_scale` != 1), e.g. `lth_jax.models.is_head`.

  Returns:
    The optax transformation.
  """
  tx = _optimizer(recipe, create_learning_rate_schedule(recipe, steps_per_epoch))
  if recipe.head_lr_scale != 1:
    if is_head is None:
      raise ValueError('head_lr_scale != 1 needs is_head, which says which parameters '
                       'form the head.')
    head = _optimizer(recipe, _group_schedule(recipe, steps_per_epoch, recipe.head_lr_scale))
    tx = optax.multi_transform(
        {'backbone': tx, 'head': head},
        lambda params: {k: jax.tree.map(lambda _, h=is_head(k): 'head' if h else 'backbone',
                                        v) for k, v in params.items()})
  if recipe.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, _batches_per_step(recipe, steps_per_epoch),
                          use_grad_mean=False)
  return tx


def compute_dtype(half_precision: bool) -> Any:
  """The model's computation dtype: bfloat16 for `half_precision`, else float32.

  bfloat16 keeps float32's exponent range, so no loss scaling is needed; parameters
  and optimizer state stay float32 either way.
  """
  return jnp.bfloat16 if half_precision else jnp.float32
