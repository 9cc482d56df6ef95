"""What one accelerator gives: masked training, input pipeline, pruning, IMP time, bf16.

    PYTHONPATH=. python benchmarks/accelerator.py --json=accelerator.json          # 1 GPU, < 8 min
    PYTHONPATH=. python benchmarks/accelerator.py --smoke --json=/tmp/smoke.json   # CPU, ~2 min

(from the checkout's root; `PYTHONPATH=.` stands in for installing lth_jax, whose
`pip install` would pull in TensorFlow.)

Needs only jax (with CUDA on a GPU), flax, optax, orbax-checkpoint, numpy and torch
(`--skip_torch`, or torch missing, drops the PyTorch rows); never tensorflow,
tensorflow-datasets, clu or ml_collections, and no network: the data are synthetic or
the offline sets shipped in lth_jax/data/offline. JAX runs on its default backend's
first device, torch on 'cuda' when it has one, else on the CPU. `--smoke` runs the same
code at tiny sizes (ResNet-18 of width 1/8, batch 8, a 20-step fine-tune) to
check the machinery, on whatever backend there is. Progress and the elapsed time go to
stdout as it runs; the tables at the end are markdown (paste them into the README), and
`--json` gets every number, the devices, the versions and each part's elapsed time.

Parts:
  1. Masked training throughput of the paper's model, ResNet-50 with the CIFAR stem at
     32x32, random masks at 50% sparsity on every conv kernel but the stem's: lth_jax's
     jitted masked step (`make_train_steps`; fp32, and bf16 computation with float32
     params) against PyTorch with the reference's prune hooks
     (`torch.nn.utils.prune.custom_from_mask`, SGD momentum 0.9, weight decay 5e-4,
     cross-entropy; fp32, and AMP bf16 via `torch.autocast`), at batch 128 and 512, from
     the same initial weights and the same batch. After 3 untimed steps (the first,
     with compilation and autotuning, timed apart) the four alternate in 8 chunks of 5
     steps in one process, so that they see the same machine state; each chunk is
     waited for at its end; median step time and images/s. The first-step losses show
     that fp32 JAX and torch compute the same loss (to ~1e-6 on CPU; on GPUs both
     frameworks may compute fp32 convolutions in TF32 by default, so less closely).
  2. The device-resident input pipeline (`lth_jax.data.on_device`'s jitted batch maker:
     gather, pad-4 crop, flip, normalise) over a synthetic 50,000 x 32 x 32 x 3 uint8
     CIFAR-shaped array, in images/s, against what the train step of part 1 consumes
     at the same batch (ratio > 1: the pipeline keeps up).
  3. One global-magnitude prune of 20% of ResNet-50's 52 prunable convs (23,445,504
     weights) on the device: `lth_jax.pruning.global_magnitude` against
     `torch.nn.utils.prune.global_unstructured(L1Unstructured, amount=0.2)`, as
     benchmarks/prune_resnet50.py does on the CPU.
  4. One IMP round of the paper's CIFAR-10 recipe (182 epochs of 45,000 training images,
     the 45k/5k train/val split lth_jax and the reference use, batch 128) extrapolated
     from part 1's median step time, and the whole figure (16 rounds x 3 seeds, plus the
     random-pruning baseline of the same size). Train steps only: evaluation,
     checkpoints and compilation are not counted.
  5. bf16 against fp32 on a short real fine-tune: ResNet-18 (CIFAR stem, width 1/2) with
     50% random masks, trained from the same initialisation on the same batches of the
     shipped Animal-MNIST (28x28x1, zero-padded to 32x32 once, pad-2 crop and flip on
     the device) for 8 epochs with SGD and a cosine schedule; the mean training loss of
     every epoch and the final test accuracy of both, side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# JAX must not take 75% of the GPU's memory up front: torch trains the same model in the
# same process. At most 45% each way leaves ResNet-50 at batch 512 (~12 GB of
# activations in fp32) ample room. Set before jax is first imported.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.45')

import flax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from lth_jax import masks as masks_lib  # noqa: E402
from lth_jax import pruning  # noqa: E402
from lth_jax.data import offline, on_device  # noqa: E402
from lth_jax.data.registry import DatasetInfo, get_info  # noqa: E402
from lth_jax.interop import checkpoints as convert  # noqa: E402
from lth_jax.interop import torch_names  # noqa: E402
from lth_jax.models import create_model, init_variables  # noqa: E402
from lth_jax.runtime import sharding  # noqa: E402
from lth_jax.tasks.classification import cross_entropy, evaluate  # noqa: E402
from lth_jax.testing.torch_reference import build_torch_resnet  # noqa: E402  (torch: on use)
from lth_jax.training import Recipe, make_train_steps  # noqa: E402
from lth_jax.training.optim import compute_dtype  # noqa: E402
from masked_step import prunable_masks  # noqa: E402  (this script's directory is on sys.path)

SPARSITY = 0.5
PRUNE_FRACTION = 0.2
NUM_CLASSES = 10
IMAGE_SIZE = 32
# SGD's momentum and weight decay on both sides (the reference's weight-decay flag is 2e-4;
# the value does not change a step's cost).
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4
DTYPES = ('fp32', 'bf16')


@dataclasses.dataclass(frozen=True)
class Sizes:
  """How much each part does (FULL on one accelerator, SMOKE to check the machinery).

  Attributes:
    arch: the model of parts 1-4.
    width: its width multiplier.
    batches: the batch sizes of parts 1 and 2; the first is the paper's (part 4).
    warmup_steps: untimed steps per configuration, the first one compiling.
    chunks: timed chunks per configuration and batch size.
    chunk_steps: steps per chunk; the configurations alternate chunk by chunk.
    pipeline_images: examples in the synthetic uint8 train split of part 2.
    pipeline_epochs: timed epochs of part 2 (after one untimed epoch).
    prune_repeats: timed prunes per implementation (part 3).
    finetune_arch, finetune_width: the model of part 5.
    finetune_batch: its batch size.
    finetune_epochs: its epochs.
    finetune_train_images: train examples used (0: the whole split).
    finetune_test_images: test examples evaluated (0: the whole split).
    loss_every: the fine-tune's loss curve has the mean of every this many steps.
  """
  arch: str
  width: float
  batches: tuple[int, ...]
  warmup_steps: int
  chunks: int
  chunk_steps: int
  pipeline_images: int
  pipeline_epochs: int
  prune_repeats: int
  finetune_arch: str
  finetune_width: float
  finetune_batch: int
  finetune_epochs: int
  finetune_train_images: int
  finetune_test_images: int
  loss_every: int


# Full mode on an H100-class GPU: the 4 compiles of ResNet-50's step (30-60 s each)
# dominate; 40 timed steps of a configuration take ~2 s at batch 512 (~4 TFLOP a step).
FULL = Sizes(arch='resnet50', width=1.0, batches=(128, 512), warmup_steps=3, chunks=8,
             chunk_steps=5, pipeline_images=50_000, pipeline_epochs=2, prune_repeats=5,
             finetune_arch='resnet18', finetune_width=0.5, finetune_batch=128,
             finetune_epochs=8, finetune_train_images=0, finetune_test_images=0,
             loss_every=53)  # an epoch of Animal-MNIST's 6,807 at batch 128
SMOKE = Sizes(arch='resnet18', width=0.125, batches=(8,), warmup_steps=2, chunks=2,
              chunk_steps=2, pipeline_images=2_048, pipeline_epochs=1, prune_repeats=2,
              finetune_arch='resnet18', finetune_width=0.125, finetune_batch=16,
              finetune_epochs=1, finetune_train_images=320, finetune_test_images=256,
              loss_every=5)


@dataclasses.dataclass(frozen=True)
class Figure:
  """The paper's CIFAR-10 IMP figure that part 4 extrapolates to.

  Attributes:
    train_images: CIFAR-10 training images a fine-tune sees per epoch (45k train / 5k
      val, lth_jax's and the reference's split).
    epochs: epochs per fine-tune (one IMP round).
    rounds: IMP rounds (sparsity 20% ... 97.19%).
    seeds: seeds per round.
    branches: IMP plus the random-pruning baseline of the same size.
  """
  train_images: int = 45_000
  epochs: int = 182
  rounds: int = 16
  seeds: int = 3
  branches: int = 2

  def steps_per_epoch(self, batch: int) -> int:
    """Train steps of an epoch; the last partial batch is dropped, as lth_jax does."""
    return self.train_images // batch

  def fine_tunes(self) -> int:
    """Fine-tunes in the figure: branches x rounds x seeds."""
    return self.branches * self.rounds * self.seeds

  def formula(self, batch: int) -> str:
    """The extrapolation in words, for the output."""
    return (f'one round = {self.epochs} epochs x floor({self.train_images:,} / {batch}) = '
            f'{self.epochs * self.steps_per_epoch(batch):,} steps x the median step time; '
            f'figure = {self.branches} (IMP and random pruning) x {self.rounds} rounds x '
            f'{self.seeds} seeds = {self.fine_tunes()} x one round (train steps only)')


class Clock:
  """Seconds since the start, and printing that flushes (the output is watched live)."""

  def __init__(self):
    self.start = time.perf_counter()

  def elapsed(self) -> float:
    """Seconds since the clock was made."""
    return time.perf_counter() - self.start

  def log(self, message: str) -> None:
    """Prints `message` after the elapsed time."""
    print(f'[{self.elapsed():7.1f} s] {message}', flush=True)


# --- Part 1: masked training throughput --------------------------------------------------

@dataclasses.dataclass
class Runner:
  """One configuration of part 1: a train step and how to wait for it.

  Attributes:
    framework: 'lth_jax' or 'torch'.
    dtype: 'fp32' or 'bf16'.
    step: takes one train step (asynchronously where the framework can).
    wait: waits for the value a step returned; returns its loss.
    first_loss: the loss of the first step (before any update).
    first_step_s: seconds of the first step, compilation and autotuning included.
    warmup_s: seconds of the other untimed steps.
    step_times: seconds per step of every timed chunk.
  """
  framework: str
  dtype: str
  step: Callable[[], Any]
  wait: Callable[[Any], float]
  first_loss: float = math.nan
  first_step_s: float = math.nan
  warmup_s: float = 0.0
  step_times: list[float] = dataclasses.field(default_factory=list)

  @property
  def name(self) -> str:
    return f'{self.framework} {self.dtype}'


def synthetic_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A normal-noise NHWC image batch and uniform labels.

  Args:
    batch: examples.
    seed: the numpy seed.

  Returns:
    (float32 [batch, 32, 32, 3], int32 [batch]).
  """
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  return image, rng.integers(0, NUM_CLASSES, batch).astype(np.int32)


def jax_runner(arch: str, width: float, dtype: str, variables: Any, masks: Any,
               batch: tuple[np.ndarray, np.ndarray], mesh: Any) -> Runner:
  """lth_jax's jitted masked train step on one batch, repeated.

  Args:
    arch: the ResNet.
    width: its width multiplier.
    dtype: 'fp32' or 'bf16' (computation; params and optimizer state stay float32).
    variables: the initial {'params', 'batch_stats'} (float32).
    masks: bool masks parallel to the params, replicated on `mesh`.
    batch: (images NHWC, labels).
    mesh: the one-device mesh.

  Returns:
    The runner; its step returns the step's metrics.
  """
  model = create_model(arch, num_classes=NUM_CLASSES, stem='cifar', width_multiplier=width,
                       dtype=compute_dtype(dtype == 'bf16'))
  recipe = Recipe(momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  # CIFAR-10's epoch length for the schedule (the rate does not change a step's cost).
  steps = make_train_steps(model, recipe, Figure().steps_per_epoch(128), mesh,
                           objective=cross_entropy)
  state = steps.init(sharding.replicate(variables['params'], mesh),
                     sharding.replicate(variables['batch_stats'], mesh), masks)
  device_batch = sharding.shard_batch({'image': batch[0], 'label': batch[1]}, mesh)

  def step():
    nonlocal state
    state, metrics = steps.train(state, masks, device_batch)
    return metrics

  # The loss comes from the same program as the new state: once it is ready, so is all.
  return Runner('lth_jax', dtype, step, lambda metrics: float(metrics['loss']))


def torch_runner(torch: Any, device: Any, arch: str, width: float, dtype: str,
                 variables: Any, masks: Any, batch: tuple[np.ndarray, np.ndarray]) -> Runner:
  """The reference's masked training in PyTorch on the same weights, masks and batch.

  Every pruned conv gets `prune.custom_from_mask` (weight = weight_orig * weight_mask,
  recomputed by a forward pre-hook), as the reference does; SGD with momentum and
  weight decay, cross-entropy; bf16 is AMP (`torch.autocast`), parameters float32.

  Args:
    torch: the torch module.
    device: the torch device.
    arch: the ResNet.
    width: its width multiplier.
    dtype: 'fp32' or 'bf16'.
    variables: the initial Flax {'params', 'batch_stats'}.
    masks: the Flax bool masks (numpy).
    batch: (images NHWC, labels).

  Returns:
    The runner; its step returns the loss tensor.
  """
  from torch.nn.utils import prune

  model = build_torch_resnet(arch, num_classes=NUM_CLASSES, stem='cifar',
                             width_multiplier=width)
  model.load_state_dict({k: torch.tensor(v) for k, v in convert.to_pytorch(variables).items()})
  model.to(device).train()
  modules = dict(model.named_modules())
  for path, mask in jax.tree_util.tree_flatten_with_path(masks)[0]:
    path = ('params', *(p.key for p in path))
    if path[-1] == 'kernel' and mask.ndim == 4 and not mask.all():
      key = torch_names.flax_to_torch_key(path)
      value = np.ascontiguousarray(torch_names.to_torch_value(path, mask))
      prune.custom_from_mask(modules[key.rsplit('.', 1)[0]], 'weight',
                             torch.from_numpy(value).to(device))
  optimizer = torch.optim.SGD(model.parameters(), lr=Recipe().learning_rate,
                              momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  x = torch.from_numpy(batch[0].transpose(0, 3, 1, 2).copy()).to(device)
  y = torch.from_numpy(batch[1].astype(np.int64)).to(device)

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bf16'):
      logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    optimizer.step()
    return loss

  def wait(loss):
    if device.type == 'cuda':
      torch.cuda.synchronize(device)
    return float(loss.item())

  return Runner('torch', dtype, step, wait)


def warm_up(runner: Runner, steps: int) -> None:
  """Takes `steps` untimed steps; the first one's loss and time are recorded apart."""
  start = time.perf_counter()
  runner.first_loss = runner.wait(runner.step())
  runner.first_step_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps - 1):
    runner.wait(runner.step())
  runner.warmup_s = time.perf_counter() - start


def time_alternating(runners: Sequence[Runner], chunks: int, chunk_steps: int) -> None:
  """Times `chunks` chunks of `chunk_steps` steps of each runner, runners alternating.

  A chunk is waited for only at its end (as training does not wait every step), so a
  chunk's time per step includes no per-step synchronisation but everything the
  device does. Alternating chunk by chunk lets every runner see the same machine state
  (clocks, temperature, other load).
  """
  for _ in range(chunks):
    for runner in runners:
      start = time.perf_counter()
      for _ in range(chunk_steps):
        out = runner.step()
      runner.wait(out)
      runner.step_times.append((time.perf_counter() - start) / chunk_steps)


def throughput_row(runner: Runner, batch: int, chunk_steps: int) -> dict[str, Any]:
  """A runner's results as a JSON row (times in seconds)."""
  median = statistics.median(runner.step_times)
  return {'framework': runner.framework, 'dtype': runner.dtype, 'batch': batch,
          'median_step_s': median, 'min_step_s': min(runner.step_times),
          'images_per_s': batch / median, 'first_step_s': runner.first_step_s,
          'warmup_s': runner.warmup_s, 'first_loss': runner.first_loss,
          'timed_steps': len(runner.step_times) * chunk_steps}


def measure_batch(sizes: Sizes, batch_size: int, variables: Any, masks: Any,
                  device_masks: Any, mesh: Any, torch: Any, torch_device: Any, clock: Clock
                  ) -> list[dict[str, Any]]:
  """Part 1 at one batch size: warm every configuration up, then time them alternating.

  The runners (models, optimizer states, compiled steps' buffers) live only inside
  this call, so both frameworks' memory is free again for the next batch size.

  Args:
    sizes: the sizes.
    batch_size: the batch.
    variables: the initial float32 Flax variables (numpy).
    masks: the bool masks (numpy).
    device_masks: the same, replicated on `mesh`.
    mesh: the one-device JAX mesh.
    torch: the torch module, or None to skip PyTorch.
    torch_device: the torch device.
    clock: progress output.

  Returns:
    One `throughput_row` per configuration.
  """
  batch = synthetic_batch(batch_size)
  runners = [jax_runner(sizes.arch, sizes.width, d, variables, device_masks, batch, mesh)
             for d in DTYPES]
  if torch is not None:
    runners += [torch_runner(torch, torch_device, sizes.arch, sizes.width, d, variables,
                             masks, batch) for d in DTYPES]
  for runner in runners:
    warm_up(runner, sizes.warmup_steps)
    clock.log(f'batch {batch_size}, {runner.name}: first step {runner.first_step_s:.1f} s '
              f'(loss {runner.first_loss:.5f}), {sizes.warmup_steps - 1} more untimed in '
              f'{runner.warmup_s:.2f} s')
  time_alternating(runners, sizes.chunks, sizes.chunk_steps)
  rows = [throughput_row(runner, batch_size, sizes.chunk_steps) for runner in runners]
  for runner, row in zip(runners, rows):
    clock.log(f'batch {batch_size}, {runner.name}: {row["median_step_s"] * 1e3:.2f} ms '
              f'median step, {row["images_per_s"]:,.0f} images/s')
  return rows


def measure_throughput(sizes: Sizes, mesh: Any, torch: Any, torch_device: Any,
                       clock: Clock) -> dict[str, Any]:
  """Part 1: every (framework, dtype) at every batch size.

  Args:
    sizes: the sizes.
    mesh: the one-device JAX mesh.
    torch: the torch module, or None to skip PyTorch.
    torch_device: the torch device (None without torch).
    clock: progress output.

  Returns:
    {'arch', 'width', 'sparsity', 'image_size', 'rows': [one per configuration and
    batch], 'first_loss_rel_diff': {batch: {dtype: |jax - torch| / |torch|}} (empty
    without torch)}.
  """
  model = create_model(sizes.arch, num_classes=NUM_CLASSES, stem='cifar',
                       width_multiplier=sizes.width)
  variables = jax.device_get(init_variables(model, jax.random.key(0), IMAGE_SIZE))
  masks = prunable_masks(variables['params'], SPARSITY)
  device_masks = sharding.replicate(masks, mesh)
  rows, rel_diff = [], {}
  for batch_size in sizes.batches:
    rows += measure_batch(sizes, batch_size, variables, masks, device_masks, mesh, torch,
                          torch_device, clock)
    if torch is not None:
      if torch_device.type == 'cuda':
        torch.cuda.empty_cache()  # give the freed blocks back for JAX's next batch
      first = {(r['framework'], r['dtype']): r['first_loss'] for r in rows
               if r['batch'] == batch_size}
      rel_diff[batch_size] = {
          d: abs(first['lth_jax', d] - first['torch', d]) / abs(first['torch', d])
          for d in DTYPES}
  return {'arch': sizes.arch, 'width': sizes.width, 'sparsity': SPARSITY,
          'image_size': IMAGE_SIZE, 'rows': rows, 'first_loss_rel_diff': rel_diff}


def find_row(rows: Sequence[dict[str, Any]], framework: str, dtype: str,
             batch: int) -> dict[str, Any] | None:
  """The part-1 row of one configuration, or None where it was skipped."""
  for row in rows:
    if (row['framework'], row['dtype'], row['batch']) == (framework, dtype, batch):
      return row
  return None


# --- Part 2: the device-resident input pipeline ------------------------------------------

def resident(info: DatasetInfo, images: np.ndarray, labels: np.ndarray, mesh: Any,
             batch_size: int) -> on_device.DeviceData:
  """`on_device.DeviceData` (what training with `data.pipeline=device` uses) over arrays of
  our own, with `info`'s augmentation and normalisation."""
  info = dataclasses.replace(info, split_sizes={**info.split_sizes, 'train': len(labels)},
                             image_shape=tuple(images.shape[1:]))
  return on_device.DeviceData(info, mesh, batch_size=batch_size, split=(images, labels))


def time_epochs(data: on_device.DeviceData, epochs: int) -> tuple[float, float]:
  """(seconds of a first epoch, compilation included; median seconds of the next `epochs`)."""
  times = []
  for epoch in range(epochs + 1):
    start = time.perf_counter()
    for batch in data.batches(epoch, seed=0):
      pass
    jax.block_until_ready(batch)  # the device runs batches in order: the last is last
    times.append(time.perf_counter() - start)
  return times[0], statistics.median(times[1:])


def measure_pipeline(sizes: Sizes, mesh: Any, throughput: dict[str, Any], clock: Clock
                     ) -> dict[str, Any]:
  """Part 2: the device pipeline's images/s against the train step's, per batch size.

  Args:
    sizes: the sizes.
    mesh: the one-device mesh.
    throughput: part 1's result.
    clock: progress output.

  Returns:
    {'images', 'image_shape', 'rows': [{'batch', 'images_per_s', 'first_epoch_s',
    'train_images_per_s': {dtype: ...}, 'ratio': {dtype: pipeline / train}}]}.
  """
  info = get_info('cifar10')  # pad-4 crop, flip, CIFAR-10's mean and std
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (sizes.pipeline_images, *info.image_shape), np.uint8)
  labels = rng.integers(0, NUM_CLASSES, sizes.pipeline_images)
  rows = []
  for batch_size in sizes.batches:
    data = resident(info, images, labels, mesh, batch_size)
    first, epoch_s = time_epochs(data, sizes.pipeline_epochs)
    rate = data.steps * batch_size / epoch_s
    train = {d: find_row(throughput['rows'], 'lth_jax', d, batch_size)['images_per_s']
             for d in DTYPES}
    rows.append({'batch': batch_size, 'images_per_s': rate, 'first_epoch_s': first,
                 'epoch_s': epoch_s, 'train_images_per_s': train,
                 'ratio': {d: rate / train[d] for d in DTYPES}})
    clock.log(f'pipeline, batch {batch_size}: {rate:,.0f} images/s (first epoch {first:.2f} '
              f's), {rate / train["fp32"]:.1f}x the fp32 and {rate / train["bf16"]:.1f}x the '
              'bf16 train step')
    del data
  return {'images': sizes.pipeline_images, 'image_shape': list(info.image_shape),
          'augmentation': 'CIFAR-10\'s: pad-4 crop, flip, normalise', 'rows': rows}


# --- Part 3: one global-magnitude prune --------------------------------------------------

def prunable_kernels(arch: str, width: float) -> dict[str, np.ndarray]:
  """{flax name: HWIO kernel} of a CIFAR-stem ResNet's prunable convs, fan-out normal.

  Args:
    arch: the ResNet.
    width: its width multiplier.

  Returns:
    The kernels, named as `lth_jax.masks.prunable_leaves` names them.
  """
  model = create_model(arch, num_classes=NUM_CLASSES, stem='cifar', width_multiplier=width)
  shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), IMAGE_SIZE))
  rng = np.random.default_rng(0)
  return {name: rng.standard_normal(s.shape, np.float32)
          * np.float32(np.sqrt(2 / (s.shape[0] * s.shape[1] * s.shape[3])))
          for name, s in masks_lib.prunable_leaves(shapes['params']).items()}


def median_seconds(run: Callable[[Any], object], setup: Callable[[], Any], repeats: int
                   ) -> float:
  """Median seconds of run(setup()) over `repeats`; setup is not timed."""
  times = []
  for _ in range(repeats):
    arg = setup()
    start = time.perf_counter()
    run(arg)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jax_prune(kernels: dict[str, np.ndarray], repeats: int
              ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """`lth_jax.pruning.global_magnitude` of 20% from dense, on JAX's default device.

  Returns:
    ({'median_s', 'first_call_s'}, {name: kept bool HWIO}).
  """
  params = jax.device_put(traverse_util.unflatten_dict(
      {tuple(name.split('/')): k for name, k in kernels.items()}))
  dense = masks_lib.init(params)
  start = time.perf_counter()
  ours = jax.block_until_ready(pruning.global_magnitude(params, dense, PRUNE_FRACTION))
  first = time.perf_counter() - start
  median = median_seconds(
      lambda m: jax.block_until_ready(pruning.global_magnitude(params, m, PRUNE_FRACTION)),
      lambda: dense, repeats)
  kept = {name: np.asarray(leaf) for name, leaf in masks_lib.prunable_leaves(ours).items()}
  return {'median_s': median, 'first_call_s': first}, kept


def torch_prune(torch: Any, device: Any, kernels: dict[str, np.ndarray], repeats: int
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """The reference's `prune.global_unstructured(L1Unstructured, 0.2)` on `device`.

  Every repeat prunes fresh modules holding the same weights (set up untimed).

  Returns:
    ({'median_s'}, {flax name: kept bool OIHW}).
  """
  from torch.nn.utils import prune

  weights = {name: torch.from_numpy(np.ascontiguousarray(
      torch_names.to_torch_value(('params', *name.split('/')), k))).to(device)
             for name, k in kernels.items()}

  def fresh_modules():
    modules = {}
    for name, w in weights.items():
      module = torch.nn.Module()
      module.weight = torch.nn.Parameter(w.clone())
      modules[name] = module
    if device.type == 'cuda':
      torch.cuda.synchronize(device)
    return modules

  def prune_round(modules):
    prune.global_unstructured([(m, 'weight') for m in modules.values()],
                              pruning_method=prune.L1Unstructured, amount=PRUNE_FRACTION)
    if device.type == 'cuda':
      torch.cuda.synchronize(device)

  median = median_seconds(prune_round, fresh_modules, repeats)
  modules = fresh_modules()
  prune_round(modules)
  kept = {name: m.weight_mask.bool().cpu().numpy() for name, m in modules.items()}
  return {'median_s': median}, kept


def compare_masks(kernels: dict[str, np.ndarray], ours: dict[str, np.ndarray],
                  theirs: dict[str, np.ndarray]) -> dict[str, Any]:
  """Where lth_jax's and torch's masks differ, and whether ties explain it.

  Args:
    kernels: the HWIO weights both pruned.
    ours: lth_jax's kept masks (HWIO).
    theirs: torch's kept masks (OIHW).

  Returns:
    {'pruned_torch', 'differing', 'differing_all_ties'}.
  """
  pruned, differing, magnitudes, differ = 0, 0, {}, {}
  for name, kernel in kernels.items():
    path = ('params', *name.split('/'))
    magnitudes[name] = np.abs(torch_names.to_torch_value(path, kernel))
    differ[name] = torch_names.to_torch_value(path, ours[name]) != theirs[name]
    pruned += int(np.count_nonzero(~theirs[name]))
    differing += int(np.count_nonzero(differ[name]))
  # Torch breaks ties at the threshold magnitude arbitrarily; only those may differ.
  threshold = max(magnitudes[n][~theirs[n]].max(initial=0) for n in kernels)
  ties = all(np.all(magnitudes[n][differ[n]] == threshold) for n in kernels)
  return {'pruned_torch': pruned, 'differing': differing, 'differing_all_ties': bool(ties)}


def measure_prune(sizes: Sizes, torch: Any, torch_device: Any, clock: Clock
                  ) -> dict[str, Any]:
  """Part 3: one global-magnitude prune of 20% from dense, lth_jax against torch.

  Args:
    sizes: the sizes.
    torch: the torch module, or None to skip PyTorch.
    torch_device: the torch device.
    clock: progress output.

  Returns:
    {'arch', 'convs', 'weights', 'expected_pruned', 'lth_jax': {...}, 'torch': {...}
    or None, 'masks': comparison or None}.
  """
  kernels = prunable_kernels(sizes.arch, sizes.width)
  total = sum(k.size for k in kernels.values())
  ours, kept = jax_prune(kernels, sizes.prune_repeats)
  ours['pruned'] = total - int(sum(np.count_nonzero(k) for k in kept.values()))
  clock.log(f'prune: lth_jax {ours["median_s"] * 1e3:.2f} ms (first call '
            f'{ours["first_call_s"]:.2f} s)')
  result = {'arch': sizes.arch, 'width': sizes.width, 'convs': len(kernels), 'weights': total,
            'expected_pruned': round(PRUNE_FRACTION * total), 'repeats': sizes.prune_repeats,
            'lth_jax': ours, 'torch': None, 'masks': None}
  if torch is not None:
    theirs, their_kept = torch_prune(torch, torch_device, kernels, sizes.prune_repeats)
    result['torch'] = theirs
    result['masks'] = compare_masks(kernels, kept, their_kept)
    result['torch']['pruned'] = result['masks']['pruned_torch']
    clock.log(f'prune: torch {theirs["median_s"] * 1e3:.2f} ms; masks differ at '
              f'{result["masks"]["differing"]} positions')
  return result


# --- Part 4: one IMP round and the figure, extrapolated ----------------------------------

def extrapolate(throughput: dict[str, Any], batch: int, figure: Figure = Figure()
                ) -> dict[str, Any]:
  """Part 4: the paper's IMP round and figure from part 1's median step at `batch`.

  Args:
    throughput: part 1's result.
    batch: the batch size (the paper's 128 in full mode).
    figure: the figure's size.

  Returns:
    {'batch', 'formula', figure's fields, 'steps_per_round', 'rows': [{'implementation',
    'step_s', 'round_s', 'figure_s'}]}.
  """
  steps_per_round = figure.epochs * figure.steps_per_epoch(batch)
  rows = []
  for framework, dtype, label in (('lth_jax', 'fp32', 'lth_jax fp32'),
                                  ('lth_jax', 'bf16', 'lth_jax bf16'),
                                  ('torch', 'fp32', 'reference (torch fp32)'),
                                  ('torch', 'bf16', 'torch AMP bf16 (not the reference)')):
    row = find_row(throughput['rows'], framework, dtype, batch)
    if row is None:
      continue
    round_s = steps_per_round * row['median_step_s']
    rows.append({'implementation': label, 'framework': framework, 'dtype': dtype,
                 'step_s': row['median_step_s'], 'round_s': round_s,
                 'figure_s': figure.fine_tunes() * round_s})
  return {'batch': batch, 'formula': figure.formula(batch), **dataclasses.asdict(figure),
          'steps_per_epoch': figure.steps_per_epoch(batch), 'steps_per_round': steps_per_round,
          'fine_tunes': figure.fine_tunes(), 'rows': rows}


# --- Part 5: bf16 against fp32 on a real fine-tune ---------------------------------------

FINETUNE_SET = 'animal_mnist'


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
  """Zero-pads uint8 NHWC images equally on every side to size x size."""
  top = (size - images.shape[1]) // 2
  left = (size - images.shape[2]) // 2
  return np.pad(images, ((0, 0), (top, size - images.shape[1] - top),
                         (left, size - images.shape[2] - left), (0, 0)))


def subset(images: np.ndarray, labels: np.ndarray, count: int
           ) -> tuple[np.ndarray, np.ndarray]:
  """`count` examples drawn at random with a fixed seed, in stored order (0: all).

  The offline splits are stored class by class: their first examples are one class.
  """
  if not count:
    return images, labels
  keep = np.sort(np.random.default_rng(0).choice(len(images), count, replace=False))
  return images[keep], labels[keep]


def eval_batches(info: DatasetInfo, images: np.ndarray, labels: np.ndarray, batch_size: int
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Normalised numpy batches of a whole split, the last padded with 'mask' 0."""
  for start in range(0, len(images), batch_size):
    pixels, label = images[start:start + batch_size], labels[start:start + batch_size]
    real = len(pixels)
    pad = batch_size - real
    image = ((pixels.astype(np.float32) / info.pixel_max - np.asarray(info.mean, np.float32))
             / np.asarray(info.std, np.float32))
    yield {'image': np.pad(image, ((0, pad), (0, 0), (0, 0), (0, 0))),
           'label': np.pad(label.astype(np.int32), (0, pad)),
           'mask': np.pad(np.ones(real, np.float32), (0, pad))}


def finetune(dtype: str, sizes: Sizes, info: DatasetInfo, data: on_device.DeviceData,
             test: tuple[np.ndarray, np.ndarray], variables: Any, masks: Any, mesh: Any
             ) -> dict[str, Any]:
  """Trains one dtype's model for `sizes.finetune_epochs` and evaluates it on test.

  Args:
    dtype: 'fp32' or 'bf16'.
    sizes: the sizes.
    info: the dataset.
    data: its train split on the devices (the batches depend on (seed, epoch) only).
    test: (uint8 images, labels) of the test split, padded to 32x32.
    variables: the initial float32 variables (the same for both dtypes).
    masks: replicated bool masks.
    mesh: the mesh.

  Returns:
    {'losses': every step's loss, 'test_accuracy', 'test_loss', 'first_step_s'
    (compilation included), 'train_s' (all steps, the first included)}.
  """
  model = create_model(sizes.finetune_arch, num_classes=info.num_classes, stem='cifar',
                       in_channels=info.image_shape[-1], width_multiplier=sizes.finetune_width,
                       dtype=compute_dtype(dtype == 'bf16'))
  recipe = Recipe(learning_rate=0.05, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                  schedule='cosine', warmup_epochs=0, num_epochs=sizes.finetune_epochs)
  steps = make_train_steps(model, recipe, data.steps, mesh, objective=cross_entropy)
  state = steps.init(sharding.replicate(variables['params'], mesh),
                     sharding.replicate(variables['batch_stats'], mesh), masks)
  start = time.perf_counter()
  losses, first_step_s = [], math.nan
  for epoch in range(sizes.finetune_epochs):
    for batch in data.batches(epoch, seed=0):
      state, metrics = steps.train(state, masks, batch)
      losses.append(metrics['loss'])  # read at the end: no per-step synchronisation
      if len(losses) == 1:  # the first step compiles: its time is reported apart
        jax.block_until_ready(metrics)
        first_step_s = time.perf_counter() - start
  losses = [float(x) for x in jax.device_get(losses)]
  train_s = time.perf_counter() - start
  scores = evaluate(model, state.variables, eval_batches(info, *test, batch_size=500), mesh)
  return {'losses': losses, 'test_accuracy': float(scores['accuracy']),
          'test_loss': float(scores['loss']), 'first_step_s': first_step_s,
          'train_s': train_s}


def loss_curve(losses: Sequence[float], every: int) -> list[float]:
  """The mean loss of each whole window of `every` steps (a trailing partial dropped)."""
  return [float(np.mean(losses[i:i + every]))
          for i in range(0, len(losses) - every + 1, every)]


def measure_finetune(sizes: Sizes, mesh: Any, clock: Clock) -> dict[str, Any]:
  """Part 5: the same masked fine-tune in fp32 and in bf16.

  Args:
    sizes: the sizes.
    mesh: the one-device mesh.
    clock: progress output.

  Returns:
    {'dataset', 'arch', 'width', 'batch', 'epochs', 'steps', 'loss_every', 'fp32': ...,
    'bf16': ... (each {'curve', 'final_loss', 'test_accuracy', 'test_loss', 'train_s'})}.
  """
  info = get_info(FINETUNE_SET)
  images, labels = offline.split_arrays(FINETUNE_SET, 'train')
  test_images, test_labels = offline.split_arrays(FINETUNE_SET, 'test')
  images, labels = subset(images, labels, sizes.finetune_train_images)
  test_images, test_labels = subset(test_images, test_labels, sizes.finetune_test_images)
  # Zero padding to 32x32 once (the background is 0): the CIFAR shape, no resampling.
  data = resident(info, pad_to(images, IMAGE_SIZE), labels, mesh, sizes.finetune_batch)
  test = (pad_to(test_images, IMAGE_SIZE), test_labels)
  model = create_model(sizes.finetune_arch, num_classes=info.num_classes, stem='cifar',
                       in_channels=info.image_shape[-1], width_multiplier=sizes.finetune_width)
  variables = jax.device_get(init_variables(model, jax.random.key(1), IMAGE_SIZE))
  masks = sharding.replicate(prunable_masks(variables['params'], SPARSITY), mesh)
  result = {'dataset': FINETUNE_SET, 'train_images': len(images), 'test_images': len(test[0]),
            'input': '28x28x1 zero-padded to 32x32', 'arch': sizes.finetune_arch,
            'width': sizes.finetune_width, 'sparsity': SPARSITY, 'batch': sizes.finetune_batch,
            'epochs': sizes.finetune_epochs, 'steps': sizes.finetune_epochs * data.steps,
            'loss_every': sizes.loss_every}
  for dtype in DTYPES:
    run = finetune(dtype, sizes, info, data, test, variables, masks, mesh)
    result[dtype] = {'curve': loss_curve(run['losses'], sizes.loss_every),
                     'final_loss': run['losses'][-1], 'test_accuracy': run['test_accuracy'],
                     'test_loss': run['test_loss'], 'first_step_s': run['first_step_s'],
                     'train_s': run['train_s']}
    clock.log(f'fine-tune {dtype}: {len(run["losses"])} steps in {run["train_s"]:.1f} s, '
              f'test accuracy {run["test_accuracy"]:.4f}')
  return result


# --- Output -------------------------------------------------------------------------------

def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def throughput_table(part: dict[str, Any]) -> str:
  """Part 1 as markdown, with the jax / torch speed-up of each dtype and batch."""
  rows = []
  for row in part['rows']:
    torch_row = find_row(part['rows'], 'torch', row['dtype'], row['batch'])
    speedup = (f'{torch_row["median_step_s"] / row["median_step_s"]:.2f}x'
               if row['framework'] == 'lth_jax' and torch_row else '')
    rows.append((row['framework'], row['dtype'], row['batch'],
                 f'{row["median_step_s"] * 1e3:.2f}', f'{row["images_per_s"]:,.0f}', speedup,
                 f'{row["first_step_s"]:.1f}', f'{row["first_loss"]:.5f}'))
  text = markdown(('framework', 'dtype', 'batch', 'median step (ms)', 'images/s',
                   'vs torch', 'first step incl. compile (s)', 'first-step loss'), rows)
  for batch, diff in part['first_loss_rel_diff'].items():
    text += (f'\n\nBatch {batch}: first-step loss |jax - torch| / torch = {diff["fp32"]:.1e} '
             f'in fp32, {diff["bf16"]:.1e} in bf16.')
  return text


def pipeline_table(part: dict[str, Any]) -> str:
  """Part 2 as markdown."""
  rows = [(r['batch'], f'{r["images_per_s"]:,.0f}',
           f'{r["train_images_per_s"]["fp32"]:,.0f}', f'{r["ratio"]["fp32"]:.1f}x',
           f'{r["train_images_per_s"]["bf16"]:,.0f}', f'{r["ratio"]["bf16"]:.1f}x')
          for r in part['rows']]
  return markdown(('batch', 'device pipeline images/s', 'fp32 step images/s', 'ratio',
                   'bf16 step images/s', 'ratio'), rows)


def prune_table(part: dict[str, Any]) -> str:
  """Part 3 as markdown, with the mask comparison."""
  ours, theirs = part['lth_jax'], part['torch']
  rows = [('lth_jax global_magnitude', f'{ours["median_s"] * 1e3:.2f}',
           f'{ours["first_call_s"]:.2f}', f'{ours["pruned"]:,}')]
  if theirs:
    rows.append(('torch global_unstructured', f'{theirs["median_s"] * 1e3:.2f}', '',
                 f'{theirs["pruned"]:,}'))
  text = markdown(('implementation', f'median of {part["repeats"]} (ms)',
                   'first call incl. compile (s)', 'pruned'), rows)
  text += (f'\n\n{part["arch"]}: {part["convs"]} prunable convs, {part["weights"]:,} weights; '
           f'round(0.2 x weights) = {part["expected_pruned"]:,}.')
  if theirs:
    masks = part['masks']
    text += (f' lth_jax / torch time: {ours["median_s"] / theirs["median_s"]:.3f}. Masks '
             + ('identical.' if not masks['differing'] else
                f'differ at {masks["differing"]} positions'
                + (', all ties at the threshold magnitude.' if masks['differing_all_ties']
                   else ', NOT all ties: a bug.')))
  return text


def imp_table(part: dict[str, Any]) -> str:
  """Part 4 as markdown, with the formula."""
  rows = [(r['implementation'], f'{r["step_s"] * 1e3:.2f}', f'{r["round_s"] / 3600:.2f}',
           f'{r["figure_s"] / 3600:.1f}', f'{r["figure_s"] / 86400:.2f}') for r in part['rows']]
  return (markdown(('implementation', f'step at batch {part["batch"]} (ms)', 'one round (h)',
                    'figure (h)', 'figure (days)'), rows) + f'\n\n{part["formula"]}.')


def finetune_table(part: dict[str, Any]) -> str:
  """Part 5 as markdown: the two loss curves side by side, then the results."""
  fp32, bf16 = part['fp32'], part['bf16']
  every = part['loss_every']
  rows = [(f'{(i + 1) * every}', f'{a:.4f}', f'{b:.4f}')
          for i, (a, b) in enumerate(zip(fp32['curve'], bf16['curve']))]
  rows += [('test accuracy', f'{fp32["test_accuracy"]:.4f}', f'{bf16["test_accuracy"]:.4f}'),
           ('test loss', f'{fp32["test_loss"]:.4f}', f'{bf16["test_loss"]:.4f}'),
           ('train time incl. compile (s)', f'{fp32["train_s"]:.1f}', f'{bf16["train_s"]:.1f}')]
  return (markdown(('mean train loss of steps up to', 'fp32', 'bf16'), rows)
          + f'\n\n{part["arch"]} width {part["width"]}, CIFAR stem, {part["sparsity"]:.0%} '
          f'random masks, {part["dataset"]} ({part["train_images"]:,} train / '
          f'{part["test_images"]:,} test images, {part["input"]}), batch {part["batch"]}, '
          f'{part["steps"]} steps ({part["epochs"]} epoch{"s" * (part["epochs"] != 1)}), '
          'SGD lr 0.05 with a cosine schedule; the same initialisation and batches for both.')


def environment(torch: Any, torch_device: Any) -> dict[str, Any]:
  """Devices, versions and the numeric settings that change speed."""
  def version(package: str) -> str | None:
    try:
      return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      return None

  device = jax.devices()[0]
  env = {'jax_backend': jax.default_backend(), 'jax_device': device.device_kind,
         'jax_device_count': jax.device_count(), 'jax': jax.__version__,
         'jaxlib': version('jaxlib'), 'flax': flax.__version__, 'optax': version('optax'),
         'orbax_checkpoint': version('orbax-checkpoint'), 'numpy': np.__version__,
         'python': sys.version.split()[0],
         'jax_default_matmul_precision': jax.config.jax_default_matmul_precision,
         'settings': {k: v for k, v in os.environ.items() if k.startswith(('JAX_', 'XLA_'))},
         'torch': None}
  if torch is not None:
    env.update(torch=torch.__version__, torch_device=str(torch_device),
               torch_threads=torch.get_num_threads(),
               cudnn_benchmark=torch.backends.cudnn.benchmark,
               cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
               matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    if torch_device.type == 'cuda':
      env['torch_device_name'] = torch.cuda.get_device_name(torch_device)
  return env


def describe(env: dict[str, Any]) -> str:
  """One line: which device and version each framework ran on."""
  torch = (f'torch {env["torch"]} on {env.get("torch_device_name", env.get("torch_device"))}'
           if env['torch'] else 'no torch')
  return f'jax {env["jax"]} on {env["jax_device"]} ({env["jax_backend"]}), {torch}'


def import_torch(skip: bool) -> tuple[Any, Any]:
  """(torch, its device), or (None, None) with a printed note when skipped or missing."""
  if skip:
    print('--skip_torch: the PyTorch rows are skipped.', flush=True)
    return None, None
  try:
    import torch
  except ImportError:
    print('torch is not installed: the PyTorch rows are skipped.', flush=True)
    return None, None
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  if device.type == 'cuda':
    # XLA autotunes its convolutions when it compiles; cuDNN's autotuner is torch's
    # equivalent (its cost lands in the first, untimed steps).
    torch.backends.cudnn.benchmark = True
  return torch, device


# --- Main ---------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line (see the module docstring)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--smoke', action='store_true',
                      help='tiny sizes, to check the machinery (about 2 min on 2 CPU cores)')
  parser.add_argument('--json', required=True, help='where to write every number')
  parser.add_argument('--skip_torch', action='store_true', help='no PyTorch rows')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  """Runs the five parts, prints the tables and writes the JSON."""
  args = parse_args(argv)
  sizes = SMOKE if args.smoke else FULL
  clock = Clock()
  torch, torch_device = import_torch(args.skip_torch)
  # One chip: torch uses one, and a one-device mesh has no all-reduce to compare.
  mesh = sharding.make_mesh(jax.devices()[:1])
  env = environment(torch, torch_device)
  clock.log(f'{"smoke" if args.smoke else "full"} mode; {describe(env)}')
  results: dict[str, Any] = {'mode': 'smoke' if args.smoke else 'full', 'environment': env,
                             'sizes': dataclasses.asdict(sizes), 'elapsed_s': {}}

  def part(name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = clock.elapsed()
    clock.log(f'--- {name}')
    results[name] = run()
    results['elapsed_s'][name] = clock.elapsed() - start
    return results[name]

  throughput = part('throughput', lambda: measure_throughput(sizes, mesh, torch, torch_device,
                                                             clock))
  part('input_pipeline', lambda: measure_pipeline(sizes, mesh, throughput, clock))
  part('prune', lambda: measure_prune(sizes, torch, torch_device, clock))
  part('imp_extrapolation', lambda: extrapolate(throughput, sizes.batches[0]))
  part('finetune', lambda: measure_finetune(sizes, mesh, clock))
  results['elapsed_s']['total'] = clock.elapsed()

  width = '' if sizes.width == 1 else f' of width {sizes.width}'
  print(f'\n## Accelerator benchmark ({results["mode"]} mode): {describe(env)}\n')
  sections = (
      (f'1. Masked training, {sizes.arch}{width} (CIFAR stem, 32x32, {SPARSITY:.0%} random '
       'masks)', throughput_table(results['throughput'])),
      ('2. Device-resident input pipeline (synthetic CIFAR-shaped uint8) against the step',
       pipeline_table(results['input_pipeline'])),
      ('3. One global-magnitude prune of 20%', prune_table(results['prune'])),
      ('4. The paper\'s CIFAR-10 IMP, extrapolated', imp_table(results['imp_extrapolation'])),
      ('5. bf16 against fp32, a short real fine-tune', finetune_table(results['finetune'])))
  for title, table in sections:
    print(f'### {title}\n\n{table}\n')
  print('Elapsed: ' + ', '.join(f'{k} {v:.1f} s' for k, v in results['elapsed_s'].items()),
        flush=True)
  with open(args.json, 'w') as f:
    json.dump(results, f, indent=1)
  clock.log(f'wrote {args.json}')


if __name__ == '__main__':
  main()
