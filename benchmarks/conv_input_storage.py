r"""Does storing each convolution's input speed up a CPU train step? (issue 22, item 7)

    python benchmarks/conv_input_storage.py [--task=segmentation] [--width=1] \
        [--batch=16] [--steps=12]

XLA:CPU may recompute a whole BatchNorm/ReLU/residual chain inside the fusions that feed
a convolution's weight gradient instead of reading the chain's output back. Passing
every convolution's input through an identity conditional (`lax.cond` on a runtime
predicate; XLA cannot fuse through one, and `lax.optimization_barrier` is removed on CPU
before fusion) makes XLA keep that input in memory once. This times lth_jax's jitted
train step on one of the miniature's tasks (the dataset, model and batch that
benchmarks/pretraining_gap.py trains it with: the shipped θ_p's ResNet-18 and width,
its few-shot recipe's model options) with and without the conditionals,
alternating so both see the same machine load, and prints the largest difference of a
weight after one step of each (float rounding: about 1e-8) and the fastest and the
median step of each.

lth_jax does not take the conditionals as a step option: at the miniature's width (0.25)
they gain nothing that counts (README, "The paper in miniature"). No test times this.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import time

import flax.linen as nn
import jax
import numpy as np
from jax import lax

from lth_jax import data, tasks
from lth_jax.experiments import specs
from lth_jax.models import init_variables
from lth_jax.runtime import sharding
from lth_jax.training import Recipe, make_train_steps

import pretraining_gap  # benchmarks/pretraining_gap.py, beside this script


def _stored(x: jax.Array) -> jax.Array:
  # Both branches return x bit for bit (x * 1.0 is x, NaN included), so the predicate
  # only has to be unknown to XLA; JAX would drop a conditional whose branches both
  # forward their input.
  first = x.reshape(-1)[0]
  return lax.cond(first == first, lambda y: y, lambda y: y * 1.0, x)


def _store_conv_inputs(next_fun, args, kwargs, context):
  if isinstance(context.module, nn.Conv) and context.method_name == '__call__':
    args = (_stored(args[0]), *args[1:])
  return next_fun(*args, **kwargs)


class _Storing:
  """An objective whose forward pass stores every convolution's input (a stateful
  objective stays one: its other methods are the objective's)."""

  def __init__(self, objective):
    self.objective = objective

  def __call__(self, *args, **kwargs):
    with nn.intercept_methods(_store_conv_inputs):
      return self.objective(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self.objective, name)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--task', choices=tuple(pretraining_gap.TASKS), default='segmentation')
  parser.add_argument('--width', type=float, default=0,
                      help="ResNet-18 width multiplier (0: the shipped θ_p's, 1/4)")
  parser.add_argument('--batch', type=int, default=0, help="0: the task's recipe's")
  parser.add_argument('--steps', type=int, default=12, help='timed steps per variant')
  args = parser.parse_args()

  # What the gap benchmark trains on the task: its dataset, model and batch.
  config = pretraining_gap._config(args.task, 'supervised', 1, {})
  info = data.get_info(config.data.dataset)
  task = tasks.get(info.task)
  batch_size = args.batch or config.data.batch_size
  spec = specs.model_spec(config)
  spec = dataclasses.replace(spec, width_multiplier=args.width or spec.width_multiplier)
  model = task.build_model(spec, info)
  objective = task.objective(model, info)
  variables = init_variables(model, jax.random.key(0), task.image_size(info))
  mesh = sharding.make_mesh()
  batches = [sharding.shard_batch(b, mesh) for b in itertools.islice(task.train_batches(
      info, batch_size=batch_size, epoch=0, seed=0, data_dir=None, start_step=0), 2)]
  variants = {'plain': objective, 'stored inputs': _Storing(objective)}
  steps, states = {}, {}
  for name, fn in variants.items():
    steps[name] = make_train_steps(model, Recipe(learning_rate=0.01), 10, mesh,
                                   objective=fn, is_head=task.is_head)
    states[name], _ = steps[name].train(
        steps[name].init(variables['params'], variables['batch_stats'], None), None,
        batches[0])   # compiles
  first = [jax.tree.leaves(state.params) for state in states.values()]
  difference = max(float(np.abs(a - b).max()) for a, b in zip(*first))
  times = {name: [] for name in variants}
  for i in range(args.steps):
    for name in variants:
      start = time.perf_counter()
      states[name], _ = steps[name].train(states[name], None, batches[i % len(batches)])
      jax.block_until_ready(states[name])
      times[name].append(time.perf_counter() - start)
  print(f'{args.task}, ResNet-18 x{spec.width_multiplier}, batch {batch_size}, '
        f'{len(jax.devices())} {jax.default_backend()} device(s); largest difference of a '
        f'weight after one step: {difference:.1e}')
  print('| variant | fastest step (s) | median step (s) |')
  print('|---|---|---|')
  for name, t in times.items():
    print(f'| {name} | {min(t):.4f} | {statistics.median(t):.4f} |')


if __name__ == '__main__':
  main()
