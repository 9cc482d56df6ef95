"""What the lottery engines take: a fine-tuning callable and per-seed start variables.

IMP, transfer and the perturbation sweeps know nothing of data, models or tasks: they
call a `Finetune` (the experiment layer binds `lth_jax.training.fit` to a task's data,
loss and evaluator) and read the start variables of each seed through `per_seed`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
from jax.sharding import Mesh

from lth_jax.training import FitResult


class Finetune(Protocol):
  """Fine-tunes masked variables for one seed; resumable in `checkpoint_dir`.

  `continue_from` is the run this one continues: IMP passes round k - 1's checkpoint
  folder of the same seed to round k once that run has finished (nothing for its first
  round, a seed that round did not train, or one still training beside it). A fine-tune
  that carries its optimizer state across rounds resumes it from there; others ignore
  it or leave it out of their signature. A `Scheduler` running several at once also passes
  `mesh=`, the devices of the run; a fine-tune that is never scheduled may leave it
  out of its signature.
  """

  def __call__(self, variables: Mapping[str, Any], masks: Any, *, seed: int,
               checkpoint_dir: str, rewind_step: int | None = None,
               continue_from: str | None = None) -> FitResult:
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


def takes_keyword(fn: Callable[..., Any], name: str) -> bool:
  """Whether `fn` accepts the keyword argument `name` (True when that cannot be told).

  Args:
    fn: a fine-tune (or any callable).
    name: the keyword.

  Returns:
    True when `fn` has a parameter `name` or takes **kwargs, or has no signature to read.
  """
  try:
    parameters = inspect.signature(fn).parameters.values()
  except (TypeError, ValueError):
    return True
  return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)
