"""What the lottery engines take: a fine-tuning callable and per-seed start variables.

IMP, transfer and the perturbation sweeps know nothing of data, models or tasks: they
call a `Finetune` (the experiment layer binds `lth_jax.training.fit` to a task's data,
loss and evaluator) and read the start variables of each seed through `per_seed`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax

from lth_jax.training import FitResult


class Finetune(Protocol):
  """Fine-tunes masked variables for one seed; resumable in `checkpoint_dir`."""

  def __call__(self, variables: Mapping[str, Any], masks: Any, *, seed: int,
               checkpoint_dir: str, rewind_step: int | None = None) -> FitResult:
    ...


StartVariables = Mapping[str, Any] | Callable[[int], Mapping[str, Any]]


def per_seed(variables: StartVariables) -> Callable[[int], dict[str, Any]]:
  """Variables as a function of the fine-tuning seed.

  Runs start from θ_p, whose pre-trained parts are the same for every seed while the
  parts a checkpoint does not provide (a task's head, a CIFAR stem) are drawn per seed,
  so that seeds are independent runs rather than data orders of one init.

  Args:
    variables: {'params', 'batch_stats'} shared by every seed, or seed -> variables.

  Returns:
    seed -> {'params', 'batch_stats'} as numpy trees.
  """
  if callable(variables):
    return lambda seed: jax.device_get(dict(variables(seed)))
  shared = jax.device_get(dict(variables))
  return lambda seed: shared
