"""Masked training throughput: lth_jax (XLA CPU) against PyTorch with prune hooks.

The PyTorch side is the reference's: torchvision's ResNet with
`torch.nn.utils.prune.custom_from_mask` on every pruned conv (weight = weight_orig *
weight_mask recomputed by a forward pre-hook), torch.optim.SGD with momentum and
weight decay, cross-entropy. The JAX side is `lth_jax.training`'s jitted masked step.
Same architecture, initial weights, masks, batch and number of CPU threads (the
first-step losses printed must agree); the two alternate step by step so that both
see the same machine load.

    python benchmarks/torch_vs_jax_train.py                      # 1 JAX device
    python benchmarks/torch_vs_jax_train.py --devices=2          # batch split over 2
    taskset -c 1 python benchmarks/torch_vs_jax_train.py --threads=1   # one core each

What the profile (jax.profiler, XLA 0.10 CPU thunk runtime) shows: the forward pass
is at parity with PyTorch (oneDNN) on one core; the backward pass is slower because
XLA computes each weight gradient as a convolution over activations transposed to
[C, H, W, N], and those transposes (fused with a recomputation of BatchNorm/ReLU)
plus the stride-2 input gradients (left to Eigen rather than YNNPACK) take ~15% of a
step on one core and ~25% with two threads, where they scale poorly. Splitting the
batch over several CPU devices (`--xla_force_host_platform_device_count`, one mesh
axis) recovers part of the threading loss. XLA flags (oneDNN, XNNPACK graph fusion,
YNN fusion types, fast math, no concurrency-optimised scheduler, no fusion
emitters) changed nothing beyond noise or made it slower.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--arch', default='resnet18')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--sparsity', type=float, default=0.5)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps_per_round', type=int, default=4)
  parser.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)),
                      help='CPU threads for both (XLA uses all cores it can see)')
  parser.add_argument('--xla_flags', default='', help='extra XLA_FLAGS for the JAX side')
  parser.add_argument('--devices', type=int, default=1,
                      help='JAX CPU devices the batch is split over (data parallel)')
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  # XLA reads its flags when jax initialises its backend, hence the late imports.
  flags = [args.xla_flags, f'--xla_force_host_platform_device_count={args.devices}']
  os.environ['XLA_FLAGS'] = ' '.join(f for f in flags if f)
  import jax
  import numpy as np
  import torch
  from torch.nn.utils import prune

  from lth_jax.interop import checkpoints as convert
  from lth_jax.interop import torch_names
  from lth_jax.models import create_model, init_variables
  from lth_jax.runtime import sharding
  from lth_jax.tasks.classification import cross_entropy
  from lth_jax.testing.torch_reference import build_torch_resnet
  from lth_jax.training import Recipe, make_train_steps
  from masked_step import prunable_masks  # this script's directory is on sys.path

  torch.set_num_threads(args.threads)
  model = create_model(args.arch, num_classes=10, stem='cifar')
  variables = init_variables(model, jax.random.key(0), args.image_size)
  masks = prunable_masks(variables['params'], args.sparsity)
  rng = np.random.default_rng(0)
  image = rng.normal(size=(args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
  label = rng.integers(0, 10, args.batch).astype(np.int32)
  config = Recipe()

  # PyTorch: the reference's prune re-parametrisation on the same weights and masks.
  torch_model = build_torch_resnet(args.arch, num_classes=10, stem='cifar')
  torch_model.load_state_dict(
      {k: torch.tensor(v) for k, v in convert.to_pytorch(variables).items()})
  modules = dict(torch_model.named_modules())
  for path, mask in jax.tree_util.tree_flatten_with_path(masks)[0]:
    path = ('params', *(p.key for p in path))
    if path[-1] == 'kernel' and mask.ndim == 4 and not mask.all():
      key = torch_names.flax_to_torch_key(path)
      prune.custom_from_mask(modules[key.rsplit('.', 1)[0]], 'weight',
                             torch.from_numpy(torch_names.to_torch_value(path, mask).copy()))
  optimizer = torch.optim.SGD(torch_model.parameters(), lr=config.learning_rate,
                              momentum=config.momentum, weight_decay=config.weight_decay)
  torch_x = torch.from_numpy(image.transpose(0, 3, 1, 2).copy())
  torch_y = torch.from_numpy(label.astype(np.int64))
  torch_model.train()

  def torch_step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(torch_model(torch_x), torch_y)
    loss.backward()
    optimizer.step()
    return loss.item()

  # JAX: lth_jax's masked step.
  mesh = sharding.make_mesh()
  steps = make_train_steps(model, config, 100, mesh, objective=cross_entropy)
  jax_masks = sharding.replicate(masks, mesh)
  state = steps.init(sharding.replicate(variables['params'], mesh),
                     sharding.replicate(variables['batch_stats'], mesh), jax_masks)
  batch = sharding.shard_batch({'image': image, 'label': label}, mesh)

  def jax_step():
    nonlocal state
    state, metrics = steps.train(state, jax_masks, batch)
    return float(metrics['loss'])

  first = {'torch': torch_step(), 'jax': jax_step()}  # includes jit compilation
  times = {'torch': [], 'jax': []}
  for _ in range(args.rounds):
    for name, step in (('torch', torch_step), ('jax', jax_step)):
      for _ in range(args.steps_per_round):
        start = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - start)

  print(f'{args.arch}, CIFAR stem, batch {args.batch}, {args.image_size}x{args.image_size}, '
        f'sparsity {args.sparsity}, {args.threads} threads, torch {torch.__version__}, '
        f'jax {jax.__version__} on {jax.device_count()} CPU device(s)')
  print(f'XLA_FLAGS={os.environ["XLA_FLAGS"]!r}')
  print(f'first-step loss: torch {first["torch"]:.4f}, jax {first["jax"]:.4f}')
  # The fastest step approximates an unloaded machine; the median shows typical load.
  for name in ('torch', 'jax'):
    print(f'{name:5s}: {args.batch / min(times[name]):7.1f} images/s best, '
          f'{args.batch / statistics.median(times[name]):7.1f} median '
          f'({1e3 * min(times[name]):.0f} / {1e3 * statistics.median(times[name]):.0f} ms '
          f'per step of {len(times[name])})')
  print(f'jax / torch: {min(times["torch"]) / min(times["jax"]):.2f}x best, '
        f'{statistics.median(times["torch"]) / statistics.median(times["jax"]):.2f}x median')


if __name__ == '__main__':
  main()
