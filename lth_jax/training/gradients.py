"""The gradient of a training objective over a few batches, for saliency criteria (SNIP).

    gradient = gradients.summed_gradient(model, objective, batches, mesh, batch_stats,
                                         num_batches=4, rng=jax.random.key(0))
    gradient(params)   # host params tree: dL/dparams summed over the batches

Train mode, as the first steps of a run see the network: BatchNorm normalises by the
batch, and a stateful objective (`StatefulObjective`: SimCLR's view key, MoCo's key
encoder and queue) starts its state at `params` and carries it from batch to batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
from flax import linen as nn
from jax.sharding import Mesh

from lth_jax.runtime import sharding
from lth_jax.training.steps import Objective, StatefulObjective


def summed_gradient(model: nn.Module, objective: Objective | StatefulObjective,
                    batches: Callable[[], Iterable[Any]], mesh: Mesh, batch_stats: Any, *,
                    num_batches: int, rng: jax.Array) -> Callable[[Any], Any]:
  """params -> the objective's gradient at params, summed over the first batches.

  Args:
    model: the network.
    objective: its training loss (plain or stateful).
    batches: () -> a fresh iterator of host batches (the first `num_batches` are read).
    mesh: the device mesh (batches are sharded over it).
    batch_stats: BatchNorm statistics of the model (train mode does not read their
      values).
    num_batches: how many batches the gradient sums over.
    rng: PRNG key of a stateful objective's state.

  Returns:
    The gradient function (params tree in, host params tree out).
  """
  stateful = hasattr(objective, 'init_extra')
  replicated, batched = sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)

  def loss(params, batch_stats, extra, batch):
    if not stateful:
      return objective(model, params, batch_stats, batch)[0], extra
    value, (_, extra, _) = objective(model, params, batch_stats, batch, extra)
    return value, extra

  @functools.partial(jax.jit, in_shardings=(replicated, replicated, replicated, batched),
                     out_shardings=replicated)
  def grad(params, batch_stats, extra, batch):
    return jax.grad(loss, has_aux=True)(params, batch_stats, extra, batch)

  def gradient(params: Any) -> Any:
    params, stats = sharding.replicate(params, mesh), sharding.replicate(batch_stats, mesh)
    extra = (objective.init_extra(model, params, stats, rng) if stateful else None)
    total = None
    for _, batch in zip(range(num_batches), batches()):
      g, extra = grad(params, stats, extra, sharding.shard_batch(batch, mesh))
      total = g if total is None else jax.tree.map(lambda a, b: a + b, total, g)
    return jax.device_get(total)

  return gradient
