"""What the lottery engines take: a fine-tuning callable and per-seed start variables.

IMP, transfer and the perturbation sweeps know nothing of data, models or tasks: they
call a `Finetune` (the experiment layer binds `lth_jax.training.fit` to a task's data,
loss and evaluator) and read the start variables of each seed through `per_seed`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
from jax.sharding import Mesh

from lth_jax.training import FitResult


class Finetune(Protocol):
  """Fine-tunes masked variables for one seed; resumable in `checkpoint_dir`.

  A `Scheduler` running several at once also passes `mesh=`, the devices of the run;
  a fine-tune that is never scheduled may leave it out of its signature.
  """

  def __call__(self, variables: Mapping[str, Any], masks: Any, *, seed: int,
               checkpoint_dir: str, rewind_step: int | None = None) -> FitResult:
    ...


def on_mesh(finetune: Finetune, mesh: Mesh | None) -> Finetune:
  """`finetune` bound to run on `mesh` (None: on its own mesh)."""
  return finetune if mesh is None else functools.partial(finetune, mesh=mesh)


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
