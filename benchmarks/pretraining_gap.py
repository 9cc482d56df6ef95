r"""Does pre-training matter on a task? Each released θ_p against training from scratch.

    python benchmarks/pretraining_gap.py --task=classification [--seeds=3] \
        [--workdir=/tmp/pretraining_gap] [--set optim.num_epochs=40 ...] [--shots=10]

A ticket can only show that it keeps what pre-training gives where pre-training gives
something. For one of the miniature's downstream tasks (`TASKS`: Animal-MNIST's classes
5-9 with 20 training images a class, or segmentation and detection canvases of their
silhouettes with 200 and 100 training canvases), this fine-tunes the dense network from each θ_p
lth_jax ships (`lth_jax.released`: supervised, SimCLR, MoCo v2) and from a random init
('scratch'), `--seeds` seeds each, with the task's recipe in
configs/paper_offline.py:all_tasks (its own for classification, the canvas studies' heads
and optimizers with more epochs for segmentation and detection:
`lth_jax.experiments.presets.FEW_SHOT_RECIPES`), and prints, per start, the test metric
at the best validation epoch (mean ± std over the seeds), its gain over scratch, and
whether that gain is more than twice the larger of the two stds (the bar of issue 22:
"can test the claim").

`--shots=N` (classification) trains on the first N training images of each of
Animal-MNIST's classes 5-9 instead of `animal_mnist_b_few`'s 20 (a dataset this script
registers, `animal_mnist_b_<N>shot`: the same val and test splits and normalisation; under
10 shots the recipe's batch of 50 needs `--set data.batch_size=...`). Only this script
knows that dataset, so only it resumes such a workdir.

Each run is an imp-mode workdir of one dense round, `<task>/<start>` under --workdir
(`classification_<N>shot/<start>` with --shots); rerunning resumes and reads the finished
ones back. No test times this: the benchmark prints, the README reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import config_overrides  # benchmarks/config_overrides.py, beside this script

# Task -> (dataset, headline metric). Each trains with configs/paper_offline.py's recipe
# at the shipped θ_p's model, a dense task with its recipe over it
# (`lth_jax.experiments.presets.FEW_SHOT_RECIPES`, what paper_offline.py:all_tasks uses).
TASKS = {
    'classification': ('animal_mnist_b_few', 'accuracy'),
    'segmentation': ('animal_canvas_seg_few', 'miou'),
    'detection': ('animal_canvas_det_few', 'map50'),
}


def few_shot(shots: int) -> str:
  """Registers `animal_mnist_b_<shots>shot` (once a process): `animal_mnist_b_few` with the
  first `shots` training images of each class instead of 20.

  Args:
    shots: training images a class, from 1 to the smallest class of `animal_mnist_b`.

  Returns:
    The dataset's name.
  """
  import numpy as np

  from lth_jax.data import offline, registry

  base = registry.get_info(TASKS['classification'][0])
  smallest = np.bincount(offline.split_arrays(base.derived_from, 'train')[1])[
      list(base.classes)].min()
  if not 1 <= shots <= smallest:
    raise ValueError(f'--shots={shots}: give from 1 to {smallest} training images a class '
                     f'(the smallest class of {base.derived_from!r}).')
  name = f'animal_mnist_b_{shots}shot'
  if name not in registry.DATASETS:
    train = base.num_classes * shots
    registry.register(dataclasses.replace(
        base, name=name, train_per_class=shots, shuffle_buffer=train,
        split_sizes={**base.split_sizes, 'train': train}))
  return name


def _config(task: str, start: str, seeds: int, overrides: dict, dataset: str = ''):
  from lth_jax import experiments, released
  from lth_jax.experiments import paper_transfer

  c = experiments.load_config('paper_offline:all_tasks')
  # classification has no recipe of its own
  c = paper_transfer.task_config(c, TASKS[task][0])
  dataset = dataset or TASKS[task][0]
  c.mode = 'imp'
  c.data.dataset = dataset
  model = released.get('supervised')  # every shipped θ_p is this model
  c.model.update(arch=model.arch, stem=model.stem, width_multiplier=model.width_multiplier)
  if start == 'scratch':
    c.pretrained.source = 'random'
  else:
    c.pretrained.update(source='released', path=start)
  c.imp.num_rounds = 1   # the dense round only (round 1's mask is made, not trained)
  c.num_seeds = seeds
  c.update_from_flattened_dict(overrides)
  return c


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--task', choices=tuple(TASKS), default='classification')
  parser.add_argument('--starts', default='supervised,simclr,moco,scratch')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--workdir', default='/tmp/pretraining_gap')
  parser.add_argument('--set', nargs='*', default=[], metavar='FIELD=VALUE')
  parser.add_argument('--shots', type=int, default=0,
                      help='classification: training images a class (0: the task\'s 20)')
  args = parser.parse_args()
  if args.shots and args.task != 'classification':
    parser.error('--shots is for --task=classification.')
  overrides = dict(config_overrides.parse(args.set))

  from lth_jax import experiments
  from lth_jax.lottery import results

  dataset = few_shot(args.shots) if args.shots else TASKS[args.task][0]
  folder = args.task + (f'_{args.shots}shot' if args.shots else '')
  values, key = {}, f'test_{TASKS[args.task][1]}'
  for start in args.starts.split(','):
    config = _config(args.task, start, args.seeds, overrides, dataset)
    out = experiments.run(config, os.path.join(args.workdir, folder, start))
    dense = out['curves'][config.imp.pruning][0]   # round 0 of the IMP branch
    values[start] = [100 * run[key] for run in dense['runs']]

  scratch = values.get('scratch')
  print(f'\n{args.task} on {dataset} ({key} at the best val epoch, '
        f'{args.seeds} seeds)')
  print('| start | mean ± std | gain over scratch | 2 x larger std | pre-training matters |')
  print('|---|---|---|---|---|')
  for start, v in values.items():
    mean, std = results.mean_std(v)
    if scratch is None or start == 'scratch':
      print(f'| {start} | {mean:.2f} ± {std:.2f} | | | |')
      continue
    gain, bar, matters = results.pretraining_gain(v, scratch)
    print(f'| {start} | {mean:.2f} ± {std:.2f} | {gain:+.2f} | {bar:.2f} | '
          f'{ {True: "yes", False: "no", None: "unknown (one seed)"}[matters]} |')


if __name__ == '__main__':
  main()
