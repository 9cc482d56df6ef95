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
SCHEDULES = ('constant', 'multistep', 'cosine', 'poly')


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
      (to `final_learning_rate`) or 'poly' ((1 - t / T) ** power, DeepLab's).
    warmup_epochs: linear warm-up epochs (may be fractional).
    num_epochs: epochs of the run.
    milestones: 'multistep' epochs.
    gamma: 'multistep' factor.
    power: 'poly' exponent.
    final_learning_rate: where 'cosine' and 'poly' end.
    head_lr_scale: learning-rate factor of the variables outside the backbone (a task's
      head); the reference's segmentation trains its head at 10x the backbone's rate.
    accumulate_steps: optimizer steps sum the gradients of this many batches (the
      reference's detection trains with 2).
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
  head_lr_scale: float = 1.0
  accumulate_steps: int = 1

  def __post_init__(self):
    object.__setattr__(self, 'milestones', tuple(self.milestones))
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f'Unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}.')
    if self.schedule not in SCHEDULES:
      raise ValueError(f'Unknown schedule {self.schedule!r}; choose one of {SCHEDULES}.')
    if self.num_epochs < 1 or self.learning_rate <= 0 or self.accumulate_steps < 1:
      raise ValueError(f'num_epochs ({self.num_epochs}) and accumulate_steps '
                       f'({self.accumulate_steps}) must be >= 1 and learning_rate '
                       f'({self.learning_rate}) > 0.')


def create_learning_rate_schedule(recipe: Recipe, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate as a function of the optimizer step (0-based).

  Warm-up follows the reference: step t of the first `warmup_epochs` epochs uses
  lr * (t + 1) / warmup_steps. 'multistep' multiplies by `gamma` from the first step
  of each milestone epoch (torch's MultiStepLR stepped once per epoch); 'cosine' and
  'poly' decay to `final_learning_rate` over the steps after warm-up.

  Args:
    recipe: the recipe.
    steps_per_epoch: optimizer steps per epoch.

  Returns:
    An optax schedule.
  """
  if steps_per_epoch < 1:
    raise ValueError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}.')
  base = recipe.learning_rate
  warmup_steps = int(round(recipe.warmup_epochs * steps_per_epoch))
  total_steps = recipe.num_epochs * steps_per_epoch
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f'warmup_epochs ({recipe.warmup_epochs}) must be >= 0 and below '
                     f'num_epochs ({recipe.num_epochs}).')
  decay_steps = total_steps - warmup_steps
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
  optimizer at the scaled rate (`optax.multi_transform`); with `accumulate_steps` > 1
  every optimizer step applies the summed gradients of that many batches.

  Args:
    recipe: the recipe.
    steps_per_epoch: batches per epoch.
    is_head: top-level parameter name -> whether it belongs to the head (needed when
      `head_lr_scale` != 1), e.g. `lth_jax.models.is_head`.

  Returns:
    The optax transformation.
  """
  # The schedule counts optimizer steps, one every `accumulate_steps` batches.
  schedule = create_learning_rate_schedule(
      recipe, max(1, steps_per_epoch // recipe.accumulate_steps))
  tx = _optimizer(recipe, schedule)
  if recipe.head_lr_scale != 1:
    if is_head is None:
      raise ValueError('head_lr_scale != 1 needs is_head, which says which parameters '
                       'form the head.')
    head = _optimizer(recipe, lambda step: recipe.head_lr_scale * schedule(step))
    tx = optax.multi_transform(
        {'backbone': tx, 'head': head},
        lambda params: {k: jax.tree.map(lambda _, h=is_head(k): 'head' if h else 'backbone',
                                        v) for k, v in params.items()})
  if recipe.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, recipe.accumulate_steps, use_grad_mean=False)
  return tx


def compute_dtype(half_precision: bool) -> Any:
  """The model's computation dtype: bfloat16 for `half_precision`, else float32.

  bfloat16 keeps float32's exponent range, so no loss scaling is needed; parameters
  and optimizer state stay float32 either way.
  """
  return jnp.bfloat16 if half_precision else jnp.float32
