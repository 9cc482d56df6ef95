"""Wall time of one figure, from launch to results.csv: runs one after another vs side by side.

    python benchmarks/figure_time.py --config=configs/demo.py --cpu_devices=2 \
        [--devices_per_run=1] [--set imp.num_rounds=4 ...] [--workdir=/tmp/figure_time]

Runs the config twice in fresh workdirs: 'sequential' (today's default: every run
data-parallel over all devices, one at a time) and 'scheduled' (`devices_per_run`
devices a run, as many runs at once as there are groups). For each it prints the wall
time, the images/s of training per device, and how the fine-tuning time splits between
train steps, evaluation and checkpoints (measured around `lth_jax.training.loop`'s
evaluation and `lth_jax.training.run_checkpoints`' save calls; θ_p's pre-training where
the config has one, pruning and plots are the rest).

The paper's CIFAR-10 figure on an 8-device accelerator host (IMP levels 0-19 and random
pruning, 3 seeds, 182 epochs each):

    python benchmarks/figure_time.py --config=configs/downstream_imp.py:torchvision \
        --devices_per_run=1 --set pretrained.path=/data/resnet50-19c8e357.pth \
        --set data.data_dir=/data/tfds --set imp.num_rounds=20 --set num_seeds=3 \
        --set imp.random_baseline=True --set data.pipeline=device
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import shutil
import threading
import time

import config_overrides  # benchmarks/config_overrides.py, beside this script


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/demo.py')
  parser.add_argument('--cpu_devices', type=int, default=2,
                      help='simulated CPU devices when no accelerator is present')
  parser.add_argument('--devices_per_run', type=int, default=1)
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='config overrides, as --config.FIELD=VALUE on the command line')
  parser.add_argument('--workdir', default='/tmp/figure_time')
  args = parser.parse_args()
  os.environ.setdefault('XLA_FLAGS',
                        f'--xla_force_host_platform_device_count={args.cpu_devices}')
  import jax

  from lth_jax import experiments
  from lth_jax.experiments import config as config_lib
  from lth_jax.training import loop, run_checkpoints

  spent = collections.Counter()
  counts = collections.Counter()
  lock = threading.Lock()

  def timed(name, fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
      tic = time.perf_counter()
      try:
        return fn(*a, **k)
      finally:
        with lock:
          spent[name] += time.perf_counter() - tic
    return wrapper

  loop._Loop._validate = timed('evaluation', loop._Loop._validate)
  loop._Loop.test_best = timed('evaluation', loop._Loop.test_best)
  run_checkpoints.save = timed('checkpoints', run_checkpoints.save)
  fit = loop.fit

  def counting_fit(model, variables, masks, recipe, **kwargs):
    with lock:
      counts['images'] += kwargs['steps_per_epoch'] * recipe.num_epochs * batch_size
    return timed('fine-tuning', fit)(model, variables, masks, recipe, **kwargs)
  # The experiment layer calls the name it imported; patch it there.
  from lth_jax.experiments import wiring
  wiring.fit = counting_fit

  overrides = dict(config_overrides.parse(args.set))
  batch_size = 0
  walls = {}
  for name, per_run in (('sequential', 0), ('scheduled', args.devices_per_run)):
    config = config_lib.load_config(args.config)
    config.update_from_flattened_dict({**overrides, 'devices_per_run': per_run})
    batch_size = config.data.batch_size
    workdir = os.path.join(args.workdir, name)
    shutil.rmtree(workdir, ignore_errors=True)
    spent.clear()
    counts.clear()
    tic = time.perf_counter()
    experiments.run(config, workdir)
    walls[name] = wall = time.perf_counter() - tic
    train = spent['fine-tuning'] - spent['evaluation'] - spent['checkpoints']
    devices = len(jax.devices()) if not per_run else per_run
    concurrent = len(jax.devices()) // devices
    # Run times add up over concurrent runs: images / train time is one run's rate.
    print(f'{name}: {wall:.1f} s to results.csv ({devices} device(s) a run, {concurrent} '
          f'at once); {counts["images"] / max(train, 1e-9) / devices:,.0f} training '
          f'images/s per device; of the fine-tuning time '
          f'{100 * train / spent["fine-tuning"]:.0f}% train steps, '
          f'{100 * spent["evaluation"] / spent["fine-tuning"]:.0f}% evaluation, '
          f'{100 * spent["checkpoints"] / spent["fine-tuning"]:.0f}% checkpoints')
  print(f'scheduled / sequential wall time: {walls["scheduled"] / walls["sequential"]:.2f}')


if __name__ == '__main__':
  main()
