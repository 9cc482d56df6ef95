r"""Does pre-training matter on a task? Each released θ_p against training from scratch.

    python benchmarks/pretraining_gap.py --task=classification [--seeds=3] \
        [--workdir=/tmp/pretraining_gap] [--set optim.num_epochs=40 ...] [--shots=10]
    python benchmarks/pretraining_gap.py --task=detection [--object_sides=24,40] \
        [--canvases=50] [--dataset=animal_canvas_det_few]

A ticket can only show that it keeps what pre-training gives where pre-training gives
something. For one of the miniature's downstream tasks (`TASKS`: Animal-MNIST's classes
5-9 with 20 training images a class, segmentation canvases of their silhouettes with 200
training canvases, or detection canvases of the upstream classes 0-4 with 100), this
fine-tunes the dense network from each θ_p lth_jax ships (`lth_jax.released`:
supervised, SimCLR, MoCo v2) and from a random init ('scratch', a new one per seed as in
paper mode), `--seeds` seeds each, with the task's recipe in
configs/paper_offline.py:all_tasks (its own for classification, the digit canvases'
optimizers with more epochs for segmentation and detection, detection's with a warm-up and
the backbone at a fifth of the heads' rate, DeepLabV3+'s head, and YOLO's heads on the
backbone's stages: `lth_jax.experiments.presets.FEW_SHOT_RECIPES`), and
prints, per start, the test metric at the best validation epoch (mean ± std over the
seeds), its gain over scratch, and whether that gain is more than twice the larger of the
two stds (the bar of issue 22: "can test the claim").

Variants of a task (`variant`; datasets this script registers, the same val and test
splits, normalisation and recipe): `--shots=N` (classification) trains on the first N
training images of each of Animal-MNIST's classes 5-9 instead of `animal_mnist_b_few`'s 20
(under 10 shots the recipe's batch of 50 needs `--set data.batch_size=...`);
`--object_sides=MIN,MAX` (segmentation, detection) pastes the silhouettes at patch sides
from MIN to MAX pixels instead of the dataset's (12 to 40 for segmentation's, 24 to 40 for
detection's, nearer the 28 pixels θ_p was pre-trained at); `--canvases=N` (segmentation, detection)
trains on the first N training canvases instead of the task's 200 or 100. Only this script
knows such a dataset, so only it resumes its workdirs.

`--dataset=NAME` trains on another dataset lth_jax registers for the same kind of task,
with the task's recipe, instead of the task's (`--task=detection
--dataset=animal_canvas_det_few`: detection on classes 5-9, which pre-training never saw);
the variants above apply to it. `--set model.neck=panet` gives detection the reference's
SPP + PANet neck instead of the recipe's heads on the backbone's stages.

Each run is an imp-mode workdir of one dense round, `<task>/<start>` under --workdir
(`<variant's dataset>/<start>` for a variant); rerunning resumes and reads the finished
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
    'detection': ('animal_a_canvas_det_few', 'map50'),
}


def variant(task: str, shots: int = 0, sides: tuple[int, ...] = (), canvases: int = 0,
            dataset: str = '') -> str:
  """The task's dataset, or a variant of it that this script registers (once a process).

  Args:
    task: one of `TASKS`.
    shots: classification: the first `shots` training images of each class (from 1 to the
      smallest class of `animal_mnist_b`) instead of 20; 0 keeps the task's.
    sides: segmentation and detection: (min, max) side of the canvases' object patches
      instead of the dataset's; () keeps the dataset's.
    canvases: segmentation and detection: train on the first `canvases` training canvases
      (from 1 to the 2000 the canvases make) instead of the task's; 0 keeps the task's.
    dataset: another registered dataset of the same kind of task to start from (e.g.
      'animal_canvas_det_few', detection on classes 5-9); '' for the task's.

  Returns:
    The dataset's name: the task's (or `dataset`), then `_<shots>shot`,
    `_sides<min>_<max>` and `_<canvases>canvases` for what the variant changes.

  Raises:
    ValueError: an option the task has not, or out of its range; a dataset of another
      kind of task.
  """
  import numpy as np

  from lth_jax.data import canvases as canvases_lib
  from lth_jax.data import offline, registry

  base = registry.get_info(dataset or TASKS[task][0])
  if base.task != task:
    same = sorted(info.name for info in registry.DATASETS.values() if info.task == task)
    raise ValueError(f'--dataset={dataset} is a {base.task} dataset, not {task}: give one '
                     f'of {same}.')
  name, changes = base.name, {}
  if shots:
    if task != 'classification':
      raise ValueError(f'--shots is for --task=classification, not {task}.')
    smallest = np.bincount(offline.split_arrays(base.derived_from, 'train')[1])[
        list(base.classes)].min()
    if not 1 <= shots <= smallest:
      raise ValueError(f'--shots={shots}: give from 1 to {smallest} training images a '
                       f'class (the smallest class of {base.derived_from!r}).')
    train = base.num_classes * shots
    changes.update(train_per_class=shots, shuffle_buffer=train,
                   split_sizes={**base.split_sizes, 'train': train})
    name += f'_{shots}shot'
  if sides:
    if base.source != 'canvases':
      raise ValueError(f'--object_sides is for the canvas tasks, not {task}.')
    if len(sides) != 2 or not 1 <= sides[0] <= sides[1] <= base.image_shape[0]:
      raise ValueError(f'--object_sides={",".join(map(str, sides))}: give MIN,MAX with '
                       f'1 <= MIN <= MAX <= {base.image_shape[0]} (the canvas).')
    changes['object_sides'] = tuple(sides)
    name += f'_sides{sides[0]}_{sides[1]}'
  if canvases:
    if base.source != 'canvases':
      raise ValueError(f'--canvases is for the canvas tasks, not {task}.')
    if not 1 <= canvases <= canvases_lib.SPLIT_SIZES['train']:
      raise ValueError(f'--canvases={canvases}: give from 1 to '
                       f'{canvases_lib.SPLIT_SIZES["train"]} training canvases.')
    changes.update(shuffle_buffer=canvases,
                   split_sizes={**base.split_sizes, 'train': canvases})
    name += f'_{canvases}canvases'
  if changes and name not in registry.DATASETS:
    registry.register(dataclasses.replace(base, name=name, **changes))
  return name


def folder(task: str, dataset: str) -> str:
  """The folder under --workdir that holds the runs on `dataset` (`variant`'s name): the
  task's name for the task's own dataset, else the dataset's."""
  return task if dataset == TASKS[task][0] else dataset


def scratch_source() -> str:
  """Registers the source 'scratch' (once a process) and returns its name.

  Training from scratch as paper mode does it: an independent random init per seed
  (`sources.per_seed_init`). An imp-mode run's 'random' source would keep one θ_0, its
  rewind point, for every seed, which measures a narrower kind of run-to-run spread.
  """
  from lth_jax.experiments import sources

  if 'scratch' not in sources.SOURCES:
    sources.register(sources.Source(
        'scratch', lambda origin: sources.per_seed_init(origin.model, origin.image_size),
        point='θ_0 of each seed'))
  return 'scratch'


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
    c.pretrained.update(source=scratch_source(), path='')
  else:
    c.pretrained.update(source='released', path=start)
  c.imp.num_rounds = 1   # the dense round only (round 1's mask is made, not trained)
  c.num_seeds, c.dense_seeds = seeds, 0   # the dense round is all there is: seeds of it
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
  parser.add_argument('--object_sides', default='', metavar='MIN,MAX',
                      help='segmentation, detection: side range of the pasted objects\' '
                           'patches (default: the dataset\'s)')
  parser.add_argument('--canvases', type=int, default=0,
                      help='segmentation, detection: training canvases (0: the task\'s)')
  parser.add_argument('--dataset', default='',
                      help='another dataset of the task, trained with its recipe (default: '
                           'the task\'s, see TASKS)')
  args = parser.parse_args()
  overrides = dict(config_overrides.parse(args.set))

  from lth_jax import experiments
  from lth_jax.lottery import results

  try:
    dataset = variant(args.task, args.shots,
                      tuple(int(side) for side in args.object_sides.split(',') if side),
                      args.canvases, args.dataset)
  except ValueError as e:
    parser.error(str(e))
  values, key = {}, f'test_{TASKS[args.task][1]}'
  for start in args.starts.split(','):
    config = _config(args.task, start, args.seeds, overrides, dataset)
    out = experiments.run(config, os.path.join(args.workdir, folder(args.task, dataset), start))
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
