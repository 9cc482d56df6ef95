r"""Where a detector's mAP goes: finding the objects, or naming them.

    python benchmarks/detection_errors.py [--workdir=/tmp/pretraining_gap] \
        [--dataset=animal_canvas_det_few]

For the detection runs `benchmarks/pretraining_gap.py --task=detection` wrote under
--workdir (one folder per start: each θ_p and scratch), this restores each seed's final
weights (the last epoch's, not the best validation epoch's the gap table reports),
detects on the test split and prints, per start, mean ± std over the seeds of:
mAP@0.5; the class-agnostic AP@0.5 (every class merged: the mAP had every box been
named right); the share of objects some box locates (IoU > 0.5); and the share of
located objects whose best box names their class (`lth_jax.metrics.error_breakdown`).
A θ_p that helps recognition should raise the last; one that helps finding objects, the
class-agnostic AP. No test times this: the benchmark prints, the README reports.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lth_jax import data, metrics
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import specs, wiring
from lth_jax.lottery import results
from lth_jax.models import init_variables
from lth_jax.runtime import paths, sharding
from lth_jax.tasks import detection

import pretraining_gap  # benchmarks/pretraining_gap.py, beside this script

COLUMNS = (('map50', 'mAP@0.5'), ('agnostic_map', 'class-agnostic AP@0.5'),
           ('located', 'objects located'), ('class_accuracy', 'named right when located'))


def final_variables(checkpoint_dir: str, like: Any) -> dict[str, Any]:
  """{'params', 'batch_stats'} of the last state a fine-tune saved in `checkpoint_dir`.

  Args:
    checkpoint_dir: a run's checkpoint folder (numbered steps inside).
    like: {'params', 'batch_stats'} of the run's model, whose structure and shapes the
      restored ones must have.

  Returns:
    The restored variables, as host arrays.
  """
  step = max(int(name) for name in os.listdir(checkpoint_dir) if name.isdigit())
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(os.path.join(checkpoint_dir, str(step), 'state'))
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  shapes = lambda tree: jax.tree.map(np.shape, tree)  # noqa: E731
  if shapes(variables) != shapes(like):
    raise ValueError(f'{checkpoint_dir} holds variables of another model than its run\'s.')
  return variables


def breakdown(model: Any, variables: Any, info: data.DatasetInfo, eval_batch_size: int,
              data_dir: str | None = None) -> dict[str, float]:
  """mAP@0.5 and `metrics.error_breakdown` of a detector on its test split.

  Args:
    model: the detector.
    variables: its {'params', 'batch_stats'}.
    info: the detection dataset.
    eval_batch_size: images per evaluation batch.
    data_dir: where the dataset's files are (None for the shipped sets).

  Returns:
    {'map50', 'agnostic_map', 'located', 'class_accuracy'}.
  """
  mesh = sharding.make_mesh(jax.devices()[:1])
  found, truths = detection.detections(
      model, variables, data.detection.eval_batches(info, 'test', batch_size=eval_batch_size,
                                                    data_dir=data_dir),
      image_size=info.image_shape[0], mesh=mesh)
  errors = metrics.error_breakdown(found, truths, info.num_classes)
  return {'map50': metrics.voc_map(found, truths, info.num_classes)['map'],
          **{key: errors[key] for key in ('agnostic_map', 'located', 'class_accuracy')}}


def _start(workdir: str) -> list[dict[str, float]]:
  """`breakdown` of every seed of the dense round of a gap benchmark's run; [] while that
  round is unfinished (its last weights would be a half-trained network's)."""
  pretraining_gap.scratch_source()  # the source its scratch runs record
  with open(os.path.join(workdir, 'experiment.json')) as f:
    experiment = specs.build(config_lib.from_record(json.load(f)))
  task, info = wiring.task_and_data(experiment.data, experiment.data.dataset)
  model = task.build_model(experiment.model, info)
  like = jax.device_get(init_variables(model, jax.random.key(0), task.image_size(info)))
  rounds = sorted(glob.glob(os.path.join(workdir, '*', 'round_00', paths.ROUND_RECORD)))
  return [breakdown(model, final_variables(run, like), info, experiment.data.eval_batch_size,
                    experiment.data.data_dir)
          for done in rounds
          for run in sorted(glob.glob(os.path.join(os.path.dirname(done), 'seed_*')))
          if re.fullmatch(r'seed_\d+', os.path.basename(run))]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='/tmp/pretraining_gap')
  parser.add_argument('--dataset', default='',
                      help='the runs of pretraining_gap.py --dataset=NAME, a detection '
                           'dataset lth_jax registers (not a variant); default: the task\'s')
  args = parser.parse_args()
  root = os.path.join(args.workdir, pretraining_gap.folder(
      'detection', args.dataset or pretraining_gap.TASKS['detection'][0]))
  starts = sorted(os.listdir(root), key=lambda s: (s == 'scratch', s)) if os.path.isdir(root) else []
  if not starts:
    chosen = f' --dataset={args.dataset}' if args.dataset else ''
    raise SystemExit(f'{root} holds no run: run benchmarks/pretraining_gap.py '
                     f'--task=detection{chosen} --workdir={args.workdir} first.')
  print('| start | seeds | ' + ' | '.join(label for _, label in COLUMNS) + ' |')
  print('|---' * (len(COLUMNS) + 2) + '|')
  for start in starts:
    runs = _start(os.path.join(root, start))
    if not runs:
      print(f'| {start} | unfinished: rerun pretraining_gap.py to finish it |')
      continue
    cells = [f'{mean:.2f} ± {std:.2f}' for mean, std in (
        results.mean_std([100 * run[key] for run in runs]) for key, _ in COLUMNS)]
    print(f'| {start} | {len(runs)} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
