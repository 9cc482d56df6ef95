"""Paper mode's runs on one task: scratch, each pre-training's tickets, the baselines.

    rows, extreme, metric = paper_transfer.transfer_to_task(
        experiment, workdir, mesh, 'mnist5k', tickets, thetas, baselines, scheduler)

On one task of `paper.tasks`, every network is fine-tuned with the experiment's seeds
(the dense ones, from θ_p and from scratch, with its dense seeds) and the task's recipe
(`config.optim`, `config.data`'s batch sizes and `config.model`'s task options, with
what `paper.task_recipes.<task>` sets on top: `task_config`): dense
training from a random init ('scratch'), then each pre-training's dense θ_p and upstream
tickets, the first pre-training's also with the random baselines and (the task's
`paper.task_imp_rounds` > 0) task-specific IMP from its θ_p. `judged` marks a
pre-training's rows matching against its dense transfer and says, per method, how
sparse its tickets match (see `lth_jax.experiments.paper`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import traverse_util
from jax.sharding import Mesh

from lth_jax import pruning, tasks
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import sources, specs, wiring
from lth_jax.lottery import DENSE, results, run_imp, run_transfer
from lth_jax.lottery.iterative_pruning import count_runs
from lth_jax.lottery.ticket_transfer import transfer_runs
from lth_jax.runtime import console, paths
from lth_jax.runtime.scheduler import Scheduler
from lth_jax.tasks import Metric
from lth_jax.training.optim import Recipe

# Dense training from a random init: what pre-training must beat to matter on a task.
SCRATCH = 'scratch'
# IMP on the downstream task itself, from the first pre-training's θ_p.
TASK_SPECIFIC = 'task_specific'


# What a task's recipe (`paper.task_recipes.<task>`) may set: how the task trains and
# how many rounds of task-specific IMP it gets. The backbone (`config_lib.MODEL_FIELDS`)
# is the one its tickets were found in.
RECIPE_DATA_FIELDS = ('batch_size', 'eval_batch_size')
RECIPE_PAPER_FIELDS = ('task_imp_rounds',)


def recipe_fields(config: ml_collections.ConfigDict, task: str) -> dict[str, Any]:
  """The fields a task's recipe sets, as 'optim.learning_rate' -> value ({}: none)."""
  recipe = config.paper.task_recipes.get(task)
  return {} if recipe is None else traverse_util.flatten_dict(recipe.to_dict(), sep='.')


def task_config(config: ml_collections.ConfigDict, task: str) -> ml_collections.ConfigDict:
  """The paper config as one of its tasks trains: its recipe's fields set on a copy.

  Args:
    config: the paper config.
    task: one of `paper.tasks`.

  Returns:
    A copy of `config` with `paper.task_recipes.<task>`'s fields (e.g.
    `optim.num_epochs`, `data.batch_size`, `model.neck_width`,
    `paper.task_imp_rounds`) in place.
  """
  sub = config.copy_and_resolve_references()
  # A task's model options (a detector's neck_width) are in no locked config's model
  # section (`--config=` locks it); validate checks each field the recipe names.
  with sub.unlocked():
    sub.update_from_flattened_dict(recipe_fields(config, task))
  return sub


@dataclasses.dataclass(frozen=True)
class TaskTraining:
  """How the networks train on one task (`task_config`'s specs).

  Attributes:
    data: its batch sizes and how data is read.
    model: the backbone and the task's model options.
    recipe: its fine-tuning recipe.
    recipe_section: the config section a change of that recipe goes to: 'optim', or
      'paper.task_recipes.<task>.optim' where the task's recipe sets optim fields.
    task_imp_rounds: rounds of task-specific IMP on it, the dense one included (0: none).
  """
  data: specs.Data
  model: tasks.ModelSpec
  recipe: Recipe
  recipe_section: str = 'optim'
  task_imp_rounds: int = 0


def task_training(config: ml_collections.ConfigDict, task: str) -> TaskTraining:
  """The `TaskTraining` of one task of a (validated) paper config."""
  sub = task_config(config, task)
  own = any(k.startswith('optim.') for k in recipe_fields(config, task))
  return TaskTraining(data=specs.data_spec(sub), model=specs.model_spec(sub),
                      recipe=config_lib.recipe(sub.optim),
                      recipe_section=f'paper.task_recipes.{task}.optim' if own else 'optim',
                      task_imp_rounds=sub.paper.task_imp_rounds)


def for_task(experiment: specs.Experiment, task: str) -> specs.Experiment:
  """The paper experiment as it trains on one task (its section's `training[task]`)."""
  t = experiment.section.training[task]
  return dataclasses.replace(experiment, data=t.data, model=t.model, recipe=t.recipe)


def _method(ticket: str, objective: str) -> str:
  return next((m for m in pruning.RANDOM_BASELINES if ticket.startswith(f'{m}_')), objective)


@dataclasses.dataclass(frozen=True)
class _Transfer:
  """What every pre-training's transfer to one task shares."""
  experiment: specs.Experiment
  task: str
  folder: str                         # transfer/<task>/
  finetune: Callable[..., Any]
  metric: Metric
  scheduler: Scheduler
  loss_gradient: Callable[[Any], Callable[[Any], Any]]  # batch_stats -> params -> gradient
  task_imp_rounds: int                # the task's (0: no task-specific IMP)


def _task_imp_spec(experiment: specs.Experiment, task_imp_rounds: int) -> Any:
  # Its dense round 0, the dense transfer, has the dense networks' seeds.
  return dataclasses.replace(experiment.imp.spec, num_rounds=task_imp_rounds)


def runs_of_task(experiment: specs.Experiment, workdir: str, task: str,
                 tickets: dict[str, dict[str, Any]], baselines: dict[str, Any]
                 ) -> tuple[int, int]:
  """The fine-tunes `transfer_to_task` trains on a task, and how many the workdir holds.

  Counted before any trains, by the engines' own rules (`transfer_runs`, `count_runs`),
  so that a resume's progress counts every finished run from its first line, also those
  after a run the resume adds (more dense seeds).

  Args:
    experiment: the paper experiment.
    workdir: its workdir.
    task: one of its tasks.
    tickets: pretraining -> {ticket name -> mask}, the first pre-training first.
    baselines: the random baselines' masks (of the first pre-training's tickets).

  Returns:
    (runs, finished runs).

  Raises:
    ValueError: the task-specific IMP's folder lacks a mask it cannot prune again.
  """
  folder = paths.transfer_dir(workdir, task)

  def count(run_dir: str, names: list[str], dense_given: bool = False) -> tuple[int, int]:
    units, todo = transfer_runs(os.path.join(folder, run_dir), [DENSE, *names],
                                experiment.seeds, dense_seeds=experiment.dense_seeds,
                                dense_given=dense_given)
    return len(units), len(units) - len(todo)

  counts = [count(SCRATCH, [])]
  task_imp_rounds = experiment.section.training[task].task_imp_rounds
  first = next(iter(tickets))
  for objective, chosen in tickets.items():
    specific = objective == first and task_imp_rounds > 0
    if specific:  # its dense transfer is the IMP's round 0
      counts.append(count_runs(os.path.join(folder, TASK_SPECIFIC),
                               _task_imp_spec(experiment, task_imp_rounds)))
    counts.append(count(objective, [*chosen, *(baselines if objective == first else ())],
                        dense_given=specific))
  return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _task_specific(t: _Transfer, run_dir: str, start: Any) -> list[dict[str, Any]]:
  """IMP on the task from the first pre-training's θ_p: every round's record."""
  experiment, metric = t.experiment, t.metric
  spec = _task_imp_spec(experiment, t.task_imp_rounds)
  # A criterion of the gradient (SNIP) scores by the task's own loss, as in mode imp.
  gradient = (t.loss_gradient(start(experiment.seed)['batch_stats'])
              if pruning.get(spec.pruning).needs_gradient else None)
  console.say(f'== Task-specific IMP ({spec.num_rounds} rounds incl. the dense one) in '
              f'{run_dir}')
  records = run_imp(
      run_dir, spec, start, t.finetune, gradient=gradient, scheduler=t.scheduler,
      on_round=lambda r: console.say(
          f'  round {r["round"]}: sparsity {100 * r["sparsity"]:.2f}%, test {metric.label} '
          f'{results.shown(r, metric.test)}'))
  return records


def _pretraining_rows(t: _Transfer, objective: str, named: dict[str, Any], start: Any,
                      task_specific: bool) -> tuple[list[dict[str, Any]], list[float]]:
  """One pre-training's dense θ_p, tickets (and the baselines given) and, when asked, its
  task-specific IMP, on one task: (rows with their method, the dense runs' values)."""
  metric, dense_runs, specific = t.metric, None, []
  if task_specific:
    records = _task_specific(t, os.path.join(t.folder, TASK_SPECIFIC), start)
    # Round 0 is this pre-training's dense transfer: same θ_p, seeds and recipe.
    dense_runs = results.dense_runs(records[0], f'Round 0 of the task-specific IMP on '
                                    f'{t.task}')
    specific = [{'method': TASK_SPECIFIC, **r,
                 'ticket': f'{TASK_SPECIFIC}_{paths.round_name(r["round"])}'} for r in records[1:]]
  found = run_transfer(
      os.path.join(t.folder, objective), named, start, t.finetune, t.experiment.seeds,
      metric=metric.key, policy=t.experiment.imp.policy, dense_runs=dense_runs,
      dense_seeds=t.experiment.dense_seeds, scheduler=t.scheduler, on_result=lambda r: console.say(
          f'  {r["ticket"]}: sparsity {100 * r["sparsity"]:.2f}%, test {metric.label} '
          f'{results.shown(r, metric.test)}'))
  dense = [r[metric.test] for r in results.dense_runs(
      found[0], f'The dense transfer of {objective} to {t.task}')]
  return [{'method': _method(r['ticket'], objective), **r} for r in found] + specific, dense


def judged(task_name: str, objective: str, methods: list[str], rows: list[dict[str, Any]],
           dense: list[float], scratch: list[float], metric: Metric) -> list[dict[str, Any]]:
  """Marks one pre-training's rows matching; its extreme-sparsity rows, one per method.

  Args:
    task_name: the task.
    objective: the pre-training.
    methods: its methods (the pre-training's own tickets, then those derived from them).
    rows: its rows on the task, each marked matching in place.
    dense: the values of its dense transfer's runs.
    scratch: the values of the dense runs from scratch (the same seeds): whether the
      claim can be tested is judged from these two, unknown with one run.
    metric: the task's headline metric.

  Returns:
    One row per method: its extreme matching sparsity and what judges it.
  """
  gain, bar, can_test = results.pretraining_gain(dense, scratch)
  if can_test is False:
    console.say(f'  θ_p ({objective}) beats training from scratch on {task_name} by '
                f'{100 * gain:+.2f} points, not more than {100 * bar:.2f} (twice the larger '
                'std): this task cannot show whether its tickets keep what pre-training '
                'gives.')
  extreme = []
  for method in methods:
    curve = [r for r in rows if r['method'] == method]
    value = results.mark_matching(curve, dense, metric.test)
    at = next((r for r in curve if r['sparsity'] == value), {}) if value is not None else {}
    extreme.append({'task': task_name, 'method': method, 'pretraining': objective,
                    'metric': metric.key, 'dense': results.mean_std(dense)[0],
                    'dense_std': results.std_over_runs(dense), 'dense_num_seeds': len(dense),
                    'scratch': results.mean_std(scratch)[0], 'pretraining_gain': gain,
                    # One seed: no spread, so no bar (std 0 would read as one).
                    'pretraining_bar': bar if can_test is not None else None,
                    'can_test_claim': can_test, 'extreme_sparsity': value,
                    **{f'extreme_{k}': v for k, v in at.items()
                       if k.startswith('sparsity_layer')}})
  return extreme


def transfer_to_task(experiment: specs.Experiment, workdir: str, mesh: Mesh, task_name: str,
                     tickets: dict[str, dict[str, Any]], thetas: dict[str, Any],
                     baselines: dict[str, Any],
                     scheduler: Scheduler) -> tuple[list, list, Metric]:
  """Scratch, then each pre-training's transfer (the first's with the baselines and the
  task-specific IMP) to one task.

  Args:
    experiment: the paper experiment (its section a `paper.Spec`); the task trains as
      `for_task` gives it.
    workdir: its workdir.
    mesh: the device mesh.
    task_name: the task's dataset.
    tickets: pretraining -> {ticket name -> mask}, the first pre-training first.
    thetas: pretraining -> its θ_p's variables.
    baselines: the random baselines' masks (of the first pre-training's tickets).
    scheduler: the scheduler of the runs (one group: one after another).

  Returns:
    (rows, extreme-sparsity rows, the task's metric).
  """
  paper, experiment = experiment.section, for_task(experiment, task_name)
  rounds = paper.training[task_name].task_imp_rounds
  task, info = wiring.task_and_data(experiment.data, task_name)
  model = task.build_model(experiment.model, info)
  t = _Transfer(experiment, task_name, paths.transfer_dir(workdir, task_name),
                wiring.make_finetune(experiment, model, task, info, mesh), task.headline(info),
                scheduler, functools.partial(wiring.loss_gradient, experiment, model, task,
                                             info, mesh), rounds)
  seeds, dense_seeds = experiment.seeds, experiment.dense_seeds
  console.say(f'== Dense training from scratch on {task_name} ({len(dense_seeds)} seeds)')
  scratch = run_transfer(
      os.path.join(t.folder, SCRATCH), {},
      sources.per_seed_init(model, task.image_size(info)), t.finetune, dense_seeds,
      metric=t.metric.key, policy=experiment.imp.policy, scheduler=scheduler)[0]
  scratch_values = [r[t.metric.test] for r in scratch['runs']]
  rows = [{'task': task_name, 'pretraining': SCRATCH, 'method': SCRATCH, **scratch,
           'ticket': SCRATCH}]
  extreme, first = [], next(iter(tickets))
  derived = [*paper.random_baselines, *([TASK_SPECIFIC] if rounds else [])]
  for objective, chosen in tickets.items():
    console.say(f'== Transfer of the {objective} tickets to {task_name} ({len(seeds)} '
                'seeds' + (f', the dense θ_p {len(dense_seeds)}' if dense_seeds != seeds else '')
                + ')')
    start = functools.lru_cache(maxsize=None)(
        lambda seed, theta=thetas[objective]: sources.transplant(theta, model,
                                                                  jax.random.key(seed)))
    found, dense = _pretraining_rows(
        t, objective, {**chosen, **(baselines if objective == first else {})}, start,
        task_specific=objective == first and rounds > 0)
    found = [{'task': task_name, 'pretraining': objective, **r} for r in found]
    methods = [objective, *(derived if objective == first else [])]
    extreme += judged(task_name, objective, methods, found, dense, scratch_values, t.metric)
    rows += found
  return rows, extreme, t.metric
