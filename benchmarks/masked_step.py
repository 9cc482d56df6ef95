"""Masked train step against the same dense step (goal: at most 3% slower).

Both run `lth_jax.training`'s jitted step on the same model, recipe and batch; the dense
one gets `masks=None` (gradients and weights not multiplied). Runs alternate so that
both see the same machine load; the fastest and the median step of each are reported.

    python benchmarks/masked_step.py --arch=resnet18 --batch=64 --steps=20
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from lth_jax.runtime import sharding
from lth_jax.tasks.classification import cross_entropy
from lth_jax.training import Recipe, make_train_steps
from lth_jax.models import create_model, init_variables


def prunable_masks(params, sparsity: float, seed: int = 0):
  """Random masks at `sparsity` on every conv kernel but the stem's; True elsewhere."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    if x.ndim == 4 and jax.tree_util.keystr(path) != "['conv1']['kernel']":
      return rng.random(x.shape) >= sparsity
    return np.ones(x.shape, bool)

  return jax.tree_util.tree_map_with_path(leaf, params)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--arch', default='resnet18')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=20, help='timed steps per variant')
  args = parser.parse_args()

  model = create_model(args.arch, num_classes=10, stem='cifar')
  variables = init_variables(model, jax.random.key(0), args.image_size)
  mesh = sharding.make_mesh()
  steps = make_train_steps(model, Recipe(), 100, mesh, objective=cross_entropy)
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch({
      'image': rng.normal(size=(args.batch, args.image_size, args.image_size, 3)).astype(
          np.float32),
      'label': rng.integers(0, 10, args.batch).astype(np.int32)}, mesh)
  masks = sharding.replicate(prunable_masks(variables['params'], 0.5), mesh)
  params = sharding.replicate(variables['params'], mesh)
  batch_stats = sharding.replicate(variables['batch_stats'], mesh)
  runs = {'masked': masks, 'dense': None}
  states = {name: steps.init(params, batch_stats, m) for name, m in runs.items()}
  times = {name: [] for name in runs}
  for name, m in runs.items():  # compile and warm up
    for _ in range(2):
      states[name], metrics = steps.train(states[name], m, batch)
    jax.block_until_ready(metrics)
  for _ in range(args.steps):
    for name, m in runs.items():
      start = time.perf_counter()
      states[name], metrics = steps.train(states[name], m, batch)
      jax.block_until_ready(metrics)
      times[name].append(time.perf_counter() - start)

  print(f'{args.arch}, batch {args.batch}, {args.image_size}x{args.image_size}, '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s), {args.steps} steps each')
  # The fastest step approximates an unloaded machine; the median shows typical load.
  for stat in (min, statistics.median):
    masked, dense = (1e3 * stat(times[n]) for n in ('masked', 'dense'))
    print(f'{stat.__name__:6s}: dense {dense:8.1f} ms, masked {masked:8.1f} ms '
          f'({100 * (masked / dense - 1):+.1f}%)')


if __name__ == '__main__':
  main()
