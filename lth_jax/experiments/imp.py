"""Mode 'imp': IMP with rewinding on a downstream task, plus the random-pruning baseline.

    python -m lth_jax.main --config=configs/demo.py --workdir=/tmp/lth_demo

θ_p comes from `config.pretrained` (a checkpoint, a random init, or pre-training in the
workdir); each round fine-tunes the rewound ticket on `config.data.dataset` with
`config.optim`, prunes by `config.imp.pruning` and rewinds. The mode has no section of
its own: it runs the experiment's shared specs (`lth_jax.experiments.specs`). Workdir
layout:

    pretrain/                    source 'pretrain': training checkpoints and θ_p
    <pruning>/round_XX/, random/round_XX/   the IMP runs (see lth_jax.runtime.paths)
    results.csv, results.json    one row per round and method
    <metric>_vs_sparsity.png     the plot (accuracy_vs_sparsity.png for classification)
    analysis/report.md           the tickets' structure (lth_jax.analysis)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections
from jax.sharding import Mesh

from lth_jax import analysis, pruning
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import modes, sources, specs, wiring
from lth_jax.lottery import ImpSpec, result_files, results, rounds, run_imp
from lth_jax.runtime import console, sharding

COLUMNS = ('method', 'round', 'ticket', 'sparsity', 'test_{}', 'test_{}_std', 'matching')


def branches(experiment: specs.Experiment) -> dict[str, ImpSpec]:
  """The IMP runs of the experiment: the ticket search, then the random baseline if asked.

  Args:
    experiment: the experiment.

  Returns:
    method -> its spec (`imp.pruning` first, as given: an old criterion name keeps the
    folder its workdir was started with; 'random' when `imp.random_baseline`).
  """
  main = experiment.imp.spec
  out = {experiment.imp.pruning: main}
  if experiment.imp.random_baseline:
    # The baseline shares the IMP run's dense round and rewinds where it does: to each
    # seed's θ_p, or (late rewinding) to the IMP run's θ_k, which it reads as its start.
    # Every variable goes back, whatever the IMP run's rewind_scope: the reference's
    # detection baseline (train_random.py) trains a fresh neck and head on each randomly
    # pruned θ_p, never continuing another round. Its masks are nested (20% of the
    # survivors each round) where the reference draws each sparsity once; either way a
    # round's mask is a uniform random subset of the prunable weights, and nesting keeps
    # exactly the IMP round's count.
    out['random'] = dataclasses.replace(main, pruning='random', include_dense=False,
                                        prune_first=False, rewind='start', rewind_scope='all')
  return out


def num_runs(experiment: specs.Experiment) -> int:
  """How many fine-tunes the experiment trains, every branch and seed counted.

  Args:
    experiment: the experiment.

  Returns:
    The fine-tunes of `branches`.
  """
  return sum(s.num_runs for s in branches(experiment).values())


def labels(experiment: specs.Experiment) -> dict[str, str]:
  """Legend texts of the IMP curve, in the paper's words.

  Args:
    experiment: the experiment (θ_p's source and the rewind point).

  Returns:
    method -> its legend text.
  """
  point, search = sources.get(experiment.pretrained.source).point, experiment.imp.spec
  if search.rewind == 'step':
    point = f'θ_{search.rewind_step} (step {search.rewind_step})'
  return {experiment.imp.pruning: f'IMP ({experiment.imp.pruning}), rewind to {point}'}


def report(workdir: str, experiment: specs.Experiment, metric: results.Headline,
           rows: list[dict[str, Any]], curves: dict[str, list[dict[str, Any]]],
           dense: list[float], title: str, suffix: str = '') -> None:
  """Writes the results table and plot (chief process) and prints the table.

  Args:
    workdir: the experiment's workdir.
    experiment: the experiment (its curve's legend, `labels`).
    metric: the task's headline metric.
    rows: the table's rows.
    curves: method -> its rows, for the plot.
    dense: the dense runs' values (the plot's band).
    title: the table's and plot's title.
    suffix: added to the files' names (e.g. '_cifar10').
  """
  if sharding.is_chief():
    columns = [c.format(metric.key) for c in COLUMNS]
    console.say(result_files.write(workdir, rows, curves, dense, title, columns, suffix,
                                   metric=metric, labels=labels(experiment)))


def run(experiment: specs.Experiment, workdir: str, mesh: Mesh) -> dict[str, Any]:
  """IMP with rewinding on `data.dataset` (plus the random-pruning baseline).

  Args:
    experiment: the experiment.
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    {'curves': {method: round records}, 'extreme_sparsity': {method: value or None}}.
  """
  seed, epochs = experiment.seed, experiment.recipe.num_epochs
  task, info = wiring.task_and_data(experiment.data, experiment.data.dataset)
  metric = task.headline(info)
  model = task.build_model(experiment.model, info)
  start = wiring.theta_p(experiment, model, task.image_size(info), workdir, mesh)
  finetune = wiring.make_finetune(experiment, model, task, info, mesh)
  gradient = None
  if pruning.get(experiment.imp.spec.pruning).needs_gradient:
    gradient = wiring.loss_gradient(experiment, model, task, info, mesh,
                                    start(seed)['batch_stats'])
  searches = branches(experiment)
  main = experiment.imp.pruning  # the IMP branch's method and folder
  runs = wiring.scheduler(experiment, mesh,
                          total_runs=sum(s.num_runs for s in searches.values()))
  curves = {}
  for method, s in searches.items():
    dense_seeds = len(s.round_seeds(0)) if s.first_round == 0 else len(s.seeds)
    console.say(f'IMP ({method}) on {info.name}: rounds {s.first_round}-{s.num_rounds - 1}, '
                f'{len(s.seeds)} seed(s) a round'
                + (f' ({dense_seeds} in the dense round 0)' if dense_seeds != len(s.seeds) else '')
                + f': {s.num_runs} fine-tune{"s" * (s.num_runs != 1)} of '
                f'{epochs} epoch{"s" * (epochs != 1)}.')
    left_out = analysis.imp_runs.rounds_left_out(os.path.join(workdir, method), s.num_rounds)
    if left_out:
      console.say(left_out)
    branch_start = start if method == main else rounds.rewind_point(
        os.path.join(workdir, main), start, seed)
    curves[method] = run_imp(
        os.path.join(workdir, method), s, branch_start, finetune, gradient=gradient,
        scheduler=runs, on_round=lambda r, m=method: console.say(
            f'[{m}] round {r["round"]}: sparsity {100 * r["sparsity"]:.2f}%, test '
            f'{metric.label} {results.shown(r, metric.test)} (best val epoch {r["best_epoch"]})'))
  dense_round = curves[main][0]
  dense = ([run[metric.test] for run in dense_round['runs']]
           if dense_round['sparsity'] == 0 else [])
  if dense:
    for method, recs in curves.items():
      if method != main:
        recs.insert(0, dense_round)
  rows, extreme = [], {}
  for method, recs in curves.items():
    curve = [{'method': method, **r} for r in recs]
    extreme[method] = results.mark_matching(curve, dense, metric.test)
    rows += curve
  report(workdir, experiment, metric, rows, curves, dense,
         f'{experiment.model.arch} on {info.name}')
  for method, value in extreme.items():
    shown = 'none' if value is None else f'{100 * value:.2f}%'
    console.say(f'Extreme matching sparsity ({method}): {shown}'
                + (' (meaningless: a smoke run, see above)'
                   if results.untrained(dense, metric) else ''))
  if sharding.is_chief():
    path = analysis.analyze_workdirs([workdir], policy=experiment.imp.policy)
    console.say(f'Ticket analysis (overlap, layer and kernel structure): {path}')
  return {'curves': curves, 'extreme_sparsity': extreme}


def validate(config: ml_collections.ConfigDict) -> None:
  """The checks of mode 'imp'."""
  config_lib.check_dataset('data.dataset', config.data.dataset)
  criterion = config_lib.criterion(config)
  if (config.imp.random_baseline and criterion in pruning.CRITERIA
      and pruning.get(criterion).random):
    config_lib.fail(
        'imp.random_baseline', config.imp.random_baseline,
        f'imp.pruning={config.imp.pruning!r} already prunes at random, so the baseline '
        'branch would be the run itself; set --config.imp.random_baseline=False, or '
        '--config.imp.pruning=magnitude to compare IMP with random pruning.')
  if config.imp.rewind == 'step':
    steps = config_lib.steps_per_epoch(config, config.data.dataset) * config.optim.num_epochs
    if config.imp.rewind_step > steps:
      config_lib.fail('imp.rewind_step', config.imp.rewind_step,
                      f'must be at most the {steps} steps of round 0 (optim.num_epochs='
                      f'{config.optim.num_epochs} epochs at config.data.batch_size='
                      f'{config.data.batch_size}); lower it.')


modes.register(modes.Mode(
    'imp', run=run, validate=validate,
    datasets=lambda c: [c.data.dataset], perturbable=True))
