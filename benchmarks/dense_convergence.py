r"""Do lth_jax's DeepLabV3+ and YOLO train well? The offline canvases until they plateau.

    python benchmarks/dense_convergence.py [--tasks=segmentation,detection] \
        [--starts=theta_p,scratch] [--minutes=60] [--workdir=/tmp/dense_convergence] \
        [--set optim.num_epochs=40 ...]

For each task (DeepLabV3+ on `digit_canvas_seg`; YOLOv4's neck and heads on
`digit_canvas_det`: `lth_jax.experiments.presets.canvas_study`, the digit-canvas study the
offline configs' `:tiny` smoke runs shrink) and each start (its supervised θ_p: the
ResNet-18 of width 1/8 pre-trained on Animal-MNIST's classes 0-4 exactly as the study
pre-trains it; or a random init,
'scratch'), one dense run with this benchmark's convergence recipe (below) trains on the
training canvases (2,000 for segmentation; the 1,900 of them with a box that is not
difficult for detection). Every epoch prints the validation metric and the wall time
since the run started; at the end a table gives, per run, the best
validation epoch and the epochs run, the test metric at the best validation epoch
(mIoU, or mAP@0.5 with mAP@[.5:.95] beside it), the wall time and why the run stopped.

The recipe differs from the study's 1-2 epoch budget only in length and learning rate
(see `RECIPES`): the study stops far from convergence by design, and this benchmark
asks whether the same model, loss, data pipeline and metric reach a trained network.
A run stops early when its validation metric has not improved for `--patience` epochs,
or when the `--minutes` budget is spent (checked at each epoch's end; the run is then
reported as cut short). The schedule decays over `optim.num_epochs` whatever happens.

No test times this: the benchmark prints, the README reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time

import config_overrides  # benchmarks/config_overrides.py, beside this script

# The convergence recipe per task: what it changes of the study's for a trained network.
RECIPES = {
    # The study's poly recipe (head at 10x, lr 0.01) learns the digits' identity too
    # slowly from scratch (after 3 epochs 98% of digit pixels are predicted as some
    # digit, 26% as the right one): a higher backbone rate, the head at 2x.
    'segmentation': {'optim.learning_rate': 0.05, 'optim.head_lr_scale': 2.0,
                     'optim.num_epochs': 25},
    # The study's recipe (SGD, cosine to 1e-4) at half the rate, longer: at 0.01, 15
    # epochs reach 64% mAP@0.5 from θ_p, still rising when the cosine ends, and 35
    # epochs diverge at epoch 17 (68% by then).
    'detection': {'optim.learning_rate': 0.005, 'optim.num_epochs': 30},
}
DATASETS = {'segmentation': 'digit_canvas_seg', 'detection': 'digit_canvas_det'}
STARTS = ('theta_p', 'scratch')


def _set(config, field: str, value) -> None:
  *path, last = field.split('.')
  node = config
  for name in path:
    node = node[name]
  node[last] = value


class Stop(Exception):
  """Ends a run at an epoch's end: patience exhausted or the time budget spent."""


class EpochPrinter:
  """A clu-style metric writer that prints each epoch and stops runs that are done.

  `lth_jax.training.fit` hands it every epoch's record; it keeps the curve (validation
  values of the headline metric) and raises `Stop` after `patience` epochs without a
  better validation value or once `deadline` passed. `fit` tests the best epoch at its
  end, which a run stopped here never reaches: `train` then resumes it with no epoch
  left to run, which tests it.
  """

  def __init__(self, metric: str, patience: int, deadline: float, num_epochs: int):
    self.metric, self.patience, self.deadline = metric, patience, deadline
    self.num_epochs = num_epochs
    self.start = time.time()
    self.curve: list[dict] = []
    self.best: dict | None = None
    self.stopped = 'schedule done'

  def write_scalars(self, step: int, scalars: dict) -> None:
    del step
    if f'val_{self.metric}' not in scalars:
      return  # the progress reporter's steps/s
    row = {'epoch': len(self.curve) + 1, 'minutes': (time.time() - self.start) / 60,
           **scalars}
    self.curve.append(row)
    val = row[f'val_{self.metric}']
    if self.best is None or val > self.best[f'val_{self.metric}']:
      self.best = row
    print(f'  epoch {row["epoch"]:3d}/{self.num_epochs}  lr {row["learning_rate"]:.2e}  '
          f'train loss {row["train_loss"]:.4f}  val {self.metric} {100 * val:6.2f}  '
          f'{row["minutes"]:5.1f} min', flush=True)
    if row['epoch'] - self.best['epoch'] >= self.patience:
      self.stopped = f'no better val {self.metric} for {self.patience} epochs'
      raise Stop
    if time.time() > self.deadline and row['epoch'] < self.num_epochs:
      self.stopped = 'time budget spent (cut short)'
      raise Stop

  def flush(self) -> None:
    pass


def supervised_theta_p(config, root: str, mesh) -> dict:
  """The study's supervised θ_p: its upstream experiment's start, cached under `root`.

  The paper mode pre-trains θ_p inside `upstream/supervised/` of the study; this runs
  the same upstream config (`paper_upstream.upstream_config`) for one round, so θ_p is
  the same network the study transfers, and both tasks share it.
  """
  from lth_jax.experiments import paper_upstream, specs, upstream

  sub = paper_upstream.upstream_config(config, 'supervised')
  sub.imp.num_rounds = 1
  return upstream.run(specs.build(sub), os.path.join(root, 'upstream_supervised'),
                      mesh)['start']


def train(task_name: str, start: str, args, root: str) -> dict:
  """One dense run of `task_name` from `start`; returns its summary row."""
  import jax

  from lth_jax import errors
  from lth_jax.experiments import presets, specs, wiring
  from lth_jax.training import fit

  config = presets.canvas_study(DATASETS[task_name], '')
  config.mode = 'imp'
  config.pretrained.source = 'pretrain' if start == 'theta_p' else 'random'
  for field, value in {**RECIPES[task_name], **dict(args.overrides)}.items():
    _set(config, field, value)
  experiment = specs.build(config)
  mesh = wiring.mesh_for(experiment)
  task, info = wiring.task_and_data(experiment.data, config.data.dataset)
  model = task.build_model(experiment.model, info)
  variables = wiring.theta_p(experiment, model, task.image_size(info), root, mesh,
                             pretrained=lambda: supervised_theta_p(config, root, mesh)
                             )(config.seed)
  run_dir = os.path.join(root, f'{task_name}_{start}')
  shutil.rmtree(run_dir, ignore_errors=True)
  recipe = experiment.recipe
  batch_size = config.data.batch_size
  printer = EpochPrinter(task.metric.key, args.patience,
                         time.time() + 60 * args.minutes, recipe.num_epochs)
  print(f'\n{task_name} from {start}: {config.model.arch} width '
        f'{config.model.width_multiplier}, {info.name} ({info.split_sizes["train"]} '
        f'training images), batch {batch_size}, {recipe.num_epochs} epochs of '
        f'{recipe.optimizer} lr {recipe.learning_rate} (head x{recipe.head_lr_scale}), '
        f'{recipe.schedule} schedule', flush=True)
  run = lambda recipe, writer: fit(
      model, variables, None, recipe,
      train_batches=lambda epoch, step: task.train_batches(
          info, batch_size=batch_size, epoch=epoch, seed=config.seed, data_dir=None,
          start_step=step),
      steps_per_epoch=task.steps_per_epoch(info, batch_size), checkpoint_dir=run_dir,
      evaluator=task.evaluator(model, info, batch_size=config.data.eval_batch_size,
                               data_dir=None, mesh=mesh),
      metric=task.metric.key, objective=task.objective(model, info), mesh=mesh,
      is_head=task.is_head, writer=writer, rng=jax.random.key(config.seed))
  test = {}
  try:
    test = run(recipe, printer).test_metrics
  except Stop:
    pass
  except errors.DivergenceError as e:
    # Reported in the table: the curve up to the divergence is the finding.
    printer.stopped = f'diverged: {e}'.split(' Nothing was recorded')[0]
    print(f'  {printer.stopped}', flush=True)
  if not test and printer.curve:
    # Stopped early: its last checkpoint holds the best epoch's variables, which a resume
    # with no epoch left to run tests (no step is taken: the schedule no longer matters).
    done = dataclasses.replace(recipe, num_epochs=len(printer.curve), warmup_epochs=0,
                               milestones=())
    test = run(done, None).test_metrics
  best = printer.best or {}  # empty when the first epoch diverged
  return {'task': task_name, 'start': start, 'metric': task.metric.key,
          'best_epoch': best.get('epoch'), 'epochs': len(printer.curve),
          'test': test.get(task.metric.key), 'test_map': test.get('map'),
          'minutes': (time.time() - printer.start) / 60, 'stopped': printer.stopped}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', default='segmentation,detection')
  parser.add_argument('--starts', default=','.join(STARTS))
  parser.add_argument('--minutes', type=float, default=60.0,
                      help='wall-time budget of each run')
  parser.add_argument('--patience', type=int, default=5,
                      help='epochs without a better validation metric before stopping')
  parser.add_argument('--workdir', default='/tmp/dense_convergence')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='config overrides for every run, as --config.FIELD=VALUE')
  args = parser.parse_args()
  args.overrides = config_overrides.parse(args.set)
  os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  rows = [train(task, start, args, args.workdir)
          for task in args.tasks.split(',') for start in args.starts.split(',')]
  print('\n| task | start | best val epoch / epochs run | test at best val | '
        'minutes | stopped |\n|---|---|---|---|---|---|')
  for r in rows:
    extra = f' (mAP@[.5:.95] {100 * r["test_map"]:.2f})' if r['test_map'] is not None else ''
    test = f'{r["metric"]} {100 * r["test"]:.2f}{extra}' if r['test'] is not None else '-'
    print(f'| {r["task"]} | {r["start"]} | {r["best_epoch"] or "-"} / {r["epochs"]} | '
          f'{test} | {r["minutes"]:.1f} | {r["stopped"]} |')


if __name__ == '__main__':
  main()
