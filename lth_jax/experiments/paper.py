"""Mode 'paper': the paper's main figure in miniature, on the offline data.

    python -m lth_jax.main --config=configs/paper_offline.py --workdir=/tmp/lth_paper

1. For each pre-training in `config.paper.pretrainings` (supervised, SimCLR, MoCo v2):
   θ_p is pre-trained on `config.pretrain.dataset` with that objective and upstream IMP
   finds its tickets there (mode 'upstream', the `:demo` recipes of
   `lth_jax.experiments.presets.UPSTREAM`, those of configs/{supervised,simclr,moco}_imp.py,
   with this config's model, rounds and epochs).
2. Every `config.paper.transfer_every`-th ticket of each pre-training, and its dense
   θ_p, is fine-tuned on each task of `config.paper.tasks` with `config.num_seeds`
   seeds, θ_p with `config.dense_seeds` (`lth_jax.experiments.paper_transfer`, recipe
   `config.optim`, or `config.paper.task_recipes.<task>`'s); a ticket is matching when
   its mean metric reaches the dense mean minus one std of the same pre-training.
3. The same networks trained from scratch (a random init per seed, θ_p's seeds): a task
   where θ_p does not beat scratch by more than twice the larger of the two seed stds
   cannot show whether tickets keep what pre-training gives, and the table says so
   ('pretraining_gain', 'pretraining_bar', 'can_test_claim').
4. Two random baselines on the first pre-training's θ_p, at the sparsities of its
   tickets: random global pruning at the ticket's total sparsity (the paper's "random
   pruning", method 'random_global'), and random masks with the ticket's layer profile
   (each layer's mask shuffled, method 'random_layerwise'), which tells how much of a
   ticket's advantage is its layer-wise sparsity alone. Both are drawn by
   `lth_jax.pruning.random_baselines`, as transfer mode draws them: the same tickets
   and seed give the same masks in both modes. A ticket's two baselines share their
   random scores: each is a fair random draw, their overlap is not meaningful.
5. With `config.paper.task_imp_rounds` > 0 (for one task:
   `paper.task_recipes.<task>.paper.task_imp_rounds`), task-specific tickets (method
   'task_specific'): IMP on the task itself from the first pre-training's θ_p, the
   backbone rewound to θ_p and the task's head to its initial weights every round
   (`config.imp` fraction, pruning and policy). Its dense round 0 is that pre-training's
   dense transfer (same θ_p, seeds and recipe), trained once; `imp.prune_first`, which
   would prune round 0, is refused.

The verdict (printed, and written to verdict.txt): per task, the extreme matching
sparsity of each pre-training's upstream tickets, of the task-specific tickets and of
random global pruning.

Workdir layout (besides lth_jax.experiments'):
    upstream/<pretraining>/              the upstream experiment (see lth_jax.experiments.upstream)
    transfer/<task>/<pretraining>/       the transfer runs (see lth_jax.lottery.ticket_transfer)
    transfer/<task>/scratch/             dense runs from a random init
    transfer/<task>/task_specific/       task-specific IMP (see lth_jax.runtime.paths)
    random_masks/<method>_round_XX/      the random baselines' masks (read back on resume)
    results.csv/.json                    one row per (task, pretraining or random, ticket)
    extreme_sparsity.csv/.json           extreme matching sparsity per pretraining and task
    results_<task>.csv/.json             the rows of one task
    table_<task>.md                      them in the paper's layout (see paper_report)
    <metric>_vs_sparsity_<task>.png      one curve per pre-training, plus the baselines
    verdict.txt                          the verdict line of each task
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging
from jax.sharding import Mesh

from lth_jax import data, errors, masks as masks_lib, pruning
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import (modes, paper_report, paper_transfer, paper_upstream, specs,
                                 wiring)
from lth_jax.runtime import console, files, paths, sharding
from lth_jax.tasks import Metric

# The random baselines: method -> whether each layer keeps the ticket's count.
RANDOM_BASELINES = pruning.RANDOM_BASELINES


def section() -> ml_collections.ConfigDict:
  """The defaults of `config.paper`."""
  c = ml_collections.ConfigDict()
  c.pretrainings = 'supervised,simclr,moco'  # objectives, pre-trained on pretrain.dataset
  c.tasks = 'mnist5k,digits'   # transfer tasks (comma-separated)
  c.upstream_epochs = 1        # epochs of each upstream IMP round
  c.transfer_every = 2         # transfer every N-th upstream ticket
  # > 0: also IMP on each task (rounds, the dense one included); a task's recipe may set
  # its own (task_recipes.<task>.paper.task_imp_rounds).
  c.task_imp_rounds = 0
  c.random_baselines = 'random_global,random_layerwise'  # of RANDOM_BASELINES
  # task -> how it trains, over this config's: optim.<field>, data.batch_size,
  # data.eval_batch_size, model.<a task option>, paper.task_imp_rounds (e.g.
  # {'optim': {'num_epochs': 40}, 'model': {'neck_width': 1 / 16}}); a task without one
  # trains with config.optim.
  c.task_recipes = ml_collections.ConfigDict()
  return c


@dataclasses.dataclass(frozen=True)
class Spec:
  """The paper experiment's own settings (`config.paper`, see `section`).

  Attributes:
    upstream: pretraining -> its upstream experiment (`paper_upstream.experiments`),
      in the order of `paper.pretrainings`.
    tasks: the transfer tasks' datasets.
    training: task -> how it trains and its task-specific IMP's rounds
      (`paper_transfer.task_training`).
    transfer_every: every N-th upstream ticket is transferred.
    random_baselines: the random baselines made of the first pre-training's tickets.
  """
  upstream: Mapping[str, specs.Experiment]
  tasks: tuple[str, ...]
  training: Mapping[str, paper_transfer.TaskTraining]
  transfer_every: int
  random_baselines: tuple[str, ...]


def spec(config: ml_collections.ConfigDict) -> Spec:
  """The `Spec` of `config.paper` (`specs.Experiment.section` in this mode).

  Args:
    config: the paper config, its upstream experiments' configs checked
      (`paper_upstream.validate`).

  Returns:
    Its paper spec, each upstream experiment's specs built from its config.
  """
  p = config.paper
  tasks = tuple(config_lib.split_names(p.tasks))
  return Spec(upstream=paper_upstream.experiments(config), tasks=tasks,
              training={t: paper_transfer.task_training(config, t) for t in tasks},
              transfer_every=p.transfer_every,
              random_baselines=tuple(config_lib.split_names(p.random_baselines)))


def random_masks(workdir: str, seed: int, tickets: dict[str, Any], policy: str | None,
                 methods: tuple[str, ...] = tuple(RANDOM_BASELINES)) -> dict[str, Any]:
  """The random baselines of some tickets, named '<method>_<ticket>', kept in the workdir.

  Each method's masks are `pruning.random_baselines` of the tickets (transfer mode's
  draw). A mask already in `workdir/random_masks/` is read back instead: a workdir
  resumes with the masks its runs trained on (those of lth_jax before the two modes
  drew alike too).

  Args:
    workdir: the experiment's workdir.
    seed: the experiment's seed.
    tickets: ticket name -> mask.
    policy: which leaves are prunable.
    methods: the baselines to make (of `RANDOM_BASELINES`).

  Returns:
    name -> mask, for every method and every ticket.
  """
  out = {}
  for method in methods:
    for name, mask in pruning.random_baselines(seed, tickets, method, policy).items():
      path = paths.random_mask(workdir, f'{method}_{name}')
      if os.path.exists(path):
        mask = masks_lib.load(path)
      else:
        masks_lib.save(path, mask)
      out[f'{method}_{name}'] = mask
  return out


def verdict(task: str, metric: Metric, extreme: list[dict[str, Any]]) -> str:
  """One line: how far each kind of ticket matches its dense network on a task.

  Args:
    task: the task's name.
    metric: its headline metric.
    extreme: the task's rows of the extreme-sparsity table.

  Returns:
    'digit_canvas_seg (mIoU): upstream tickets match to 59% (supervised), ...'.
  """
  def shown(row):
    value = row['extreme_sparsity']
    return 'none' if value is None else f'{100 * value:.0f}%'

  upstream = [r for r in extreme if r['method'] == r['pretraining']]
  others = {r['method']: r for r in extreme if r['method'] != r['pretraining']}
  parts = ['upstream tickets match to ' + ', '.join(
      f'{shown(r)} ({r["pretraining"]})' for r in upstream)]
  for method, words in ((paper_transfer.TASK_SPECIFIC, 'task-specific'),
                        ('random_global', 'random global'),
                        ('random_layerwise', "random with the tickets' layer profile")):
    if method in others:
      parts.append(f'{words} to {shown(others[method])}')
  weak = [r['pretraining'] for r in upstream if r['can_test_claim'] is False]
  if weak:
    parts.append(f'θ_p of {", ".join(weak)} does not beat training from scratch by more than '
                 'twice the larger seed std, so its tickets cannot show the claim here')
  return f'{task} ({metric.label}): ' + '; '.join(parts) + '.'


def run(experiment: specs.Experiment, workdir: str, mesh: Mesh) -> dict[str, Any]:
  """Upstream tickets of several pre-trainings and their transfer (see the module).

  Args:
    experiment: the paper experiment (mode 'paper', its section a `Spec`).
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    {'rows': every transfer row, 'extreme': rows of extreme matching sparsity,
    'verdicts': one line per task}.
  """
  paper: Spec = experiment.section
  tickets, thetas = paper_upstream.tickets(experiment, workdir, mesh)
  baselines = random_masks(workdir, experiment.seed, next(iter(tickets.values())),
                           experiment.imp.policy, paper.random_baselines)
  counts = [paper_transfer.runs_of_task(experiment, workdir, task, tickets, baselines)
            for task in paper.tasks]
  runs = wiring.scheduler(experiment, mesh, total_runs=sum(c[0] for c in counts),
                          finished_runs=sum(c[1] for c in counts))
  rows, extreme, verdicts = [], [], []
  for task_name in paper.tasks:
    try:
      task_rows, task_extreme, metric = paper_transfer.transfer_to_task(
          experiment, workdir, mesh, task_name, tickets, thetas, baselines, runs)
    except errors.DivergenceError as e:
      e.recipe = paper.training[task_name].recipe_section
      raise
    rows += task_rows
    extreme += task_extreme
    verdicts.append(verdict(task_name, metric, task_extreme))
    console.say(f'Verdict: {verdicts[-1]}')
    if sharding.is_chief():
      console.say(paper_report.write(workdir, task_name, task_rows, metric))
  if sharding.is_chief():
    files.write_table(paths.results_table(workdir), rows)
    files.write_table(paths.extreme_sparsity_table(workdir), extreme)
    files.atomic_write(paths.verdict_file(workdir),
                       lambda f: f.write('\n'.join(verdicts) + '\n'))
    console.say('\nExtreme matching sparsity (highest sparsity within one std of the same '
                'pre-training\'s dense transfer), against training from scratch:\n'
                + console.format_table(extreme, ['task', 'method', 'pretraining', 'metric',
                                                 'dense', 'scratch', 'can_test_claim',
                                                 'extreme_sparsity']))
  return {'rows': rows, 'extreme': extreme, 'verdicts': verdicts}


def validate(config: ml_collections.ConfigDict) -> None:
  """The checks of mode 'paper' (its upstream experiments' configs included); the IMP
  spec's own checks follow in `config_lib.validate`."""
  p = config.paper
  tasks = config_lib.split_names(p.tasks)
  if not tasks:
    config_lib.fail('paper.tasks', p.tasks, 'name at least one transfer task.')
  for name in tasks:
    config_lib.check_dataset('paper.tasks', name)
  config_lib.check_dataset('pretrain.dataset', config.pretrain.dataset)
  chosen = config_lib.split_names(p.random_baselines)
  if not set(chosen) <= set(RANDOM_BASELINES):
    config_lib.fail('paper.random_baselines', p.random_baselines,
                    f'a comma-separated subset of {tuple(RANDOM_BASELINES)} (may be empty).')
  if p.upstream_epochs < 1 or p.transfer_every < 1:
    config_lib.fail('paper.upstream_epochs', p.upstream_epochs,
                    'upstream_epochs and transfer_every must be >= 1.')
  if 1 <= config.imp.num_rounds < p.transfer_every:  # num_rounds < 1: the spec's check
    config_lib.fail('paper.transfer_every', p.transfer_every,
                    f'must be <= imp.num_rounds ({config.imp.num_rounds}), or no ticket is '
                    'transferred.')
  for task in p.task_recipes:
    _check_task_recipe(config, task, tasks)
  # The global value serves the tasks whose recipe does not set their own.
  if any('paper.task_imp_rounds' not in paper_transfer.recipe_fields(config, task)
         for task in tasks):
    _check_task_imp_rounds(config, 'paper.task_imp_rounds', p.task_imp_rounds)
  task_imp = any(paper_transfer.task_config(config, task).paper.task_imp_rounds
                 for task in tasks)
  if not task_imp and config.imp.pruning != config_lib.base_config().imp.pruning:
    # Logged, not refused: a workdir recorded with it still resumes.
    logging.warning('config.imp.pruning=%r is unused: only task-specific IMP '
                    '(paper.task_imp_rounds or a task\'s paper.task_recipes.<task>.paper.'
                    'task_imp_rounds > 0) prunes by it; upstream IMP uses its '
                    "pre-training's recipe.", config.imp.pruning)
  paper_upstream.validate(config)


def _check_task_imp_rounds(config: ml_collections.ConfigDict, field: str, rounds: int) -> None:
  """Fails unless `rounds` (of config field `field`) is a valid task-specific IMP."""
  if rounds < 0 or rounds == 1:
    config_lib.fail(field, rounds, '0 (no task-specific IMP) or >= 2 (the dense round and at '
                    'least one pruned one).')
  if rounds and config.imp.prune_first:
    config_lib.fail('imp.prune_first', config.imp.prune_first,
                    "task-specific IMP's round 0 is the dense transfer of θ_p that tickets "
                    'are matched against, and prune_first would prune it before training; '
                    'set --config.imp.prune_first=False (upstream IMP keeps its recipe\'s '
                    f'first prune), or --config.{field}=0.')


def _check_task_recipe(config: ml_collections.ConfigDict, task: str, tasks: list[str]) -> None:
  """Fails unless `paper.task_recipes.<task>` names a dataset and sets how it trains,
  validly; the recipe of a dataset that is not one of `paper.tasks` is unused (logged)."""
  field, recipe = f'paper.task_recipes.{task}', config.paper.task_recipes[task]
  is_mapping = isinstance(recipe, ml_collections.ConfigDict)
  if task not in data.DATASETS or not is_mapping:
    config_lib.fail(field, recipe.to_dict() if is_mapping else recipe,
                    "a task's recipe is keyed by a dataset "
                    f'({sorted(data.DATASETS)}) and holds sections optim, data, model or '
                    'paper.')
  if task not in tasks:  # e.g. --config.paper.tasks narrowed below a preset's tasks
    logging.warning('config.%s is unused: %r is not one of paper.tasks (%r).', field, task,
                    config.paper.tasks)
    return
  try:
    sub = paper_transfer.task_config(config, task)
    task_obj, info = wiring.task_and_data(specs.data_spec(sub), task)
  except (TypeError, ValueError, AttributeError, KeyError) as e:
    raise errors.ConfigError(f'config.{field}={recipe.to_dict()!r}: {e}') from None
  fields = paper_transfer.recipe_fields(config, task)
  for key, value in fields.items():
    section_name, _, name = key.partition('.')
    allowed = {'optim': name in config.optim,
               'data': name in paper_transfer.RECIPE_DATA_FIELDS,
               'model': name in task_obj.options,
               'paper': name in paper_transfer.RECIPE_PAPER_FIELDS}.get(section_name, False)
    if not allowed:
      config_lib.fail(f'{field}.{key}', value,
                      "a task's recipe sets how it trains: optim.<field>, data.batch_size, "
                      f'data.eval_batch_size, model.<an option of its task: '
                      f'{sorted(task_obj.options)}> or paper.task_imp_rounds; the backbone '
                      "is the tickets'.")
  if 'paper.task_imp_rounds' in fields:
    _check_task_imp_rounds(config, f'{field}.paper.task_imp_rounds', sub.paper.task_imp_rounds)
  if sub.data.eval_batch_size < 1:  # the config's own is checked with the shared fields
    config_lib.fail(f'{field}.data.eval_batch_size', sub.data.eval_batch_size, 'must be >= 1.')
  try:
    config_lib.check_training(sub, 'optim', task)
    task_obj.build_model(specs.model_spec(sub), info)
  except (errors.ConfigError, TypeError, ValueError) as e:
    raise errors.ConfigError(f'The recipe of {task!r} ({field} over this config) fails: '
                             f'{e}') from None


def _load_inputs(experiment: specs.Experiment) -> dict[str, str]:
  """Checks each task's batch sizes over the devices, then `paper_upstream.load_inputs`."""
  for task in experiment.section.tasks:
    try:
      wiring.mesh_for(paper_transfer.for_task(experiment, task))
    except errors.ConfigError as e:
      raise errors.ConfigError(f'Training on {task!r} fails: {e} (paper.task_recipes.{task} '
                               'can set its data.batch_size.)') from None
  return paper_upstream.load_inputs(experiment)


def _dropped_tasks_runs(field: str, old: Mapping[str, Any],
                        new: Mapping[str, Any]) -> list[str]:
  """The runs of the tasks a new `paper.tasks` drops: it may change while they have none
  (tasks added or reordered alter no run)."""
  del field
  kept = set(config_lib.split_names(new['paper.tasks']))
  return [paths.transfer_runs_glob(task)
          for task in config_lib.split_names(old.get('paper.tasks') or '') if task not in kept]


def _task_recipe_runs(field: str, old: Mapping[str, Any],
                      new: Mapping[str, Any]) -> list[str]:
  """The runs of the task whose recipe a field sets: it may change (or be set, or go)
  while the task has none, and not after, lest its results mix two recipes."""
  del old, new
  return [paths.transfer_runs_glob(field.split('.')[2])]  # paper.task_recipes.<task>.…


modes.register(modes.Mode(
    'paper', run=run, validate=validate, section=section, spec=spec,
    datasets=lambda c: [c.pretrain.dataset, *config_lib.split_names(c.paper.tasks)],
    # The upstream experiments' own training is checked with their configs, and a task
    # with its own recipe with that (`validate`).
    training=lambda c: [('optim', task) for task in config_lib.split_names(c.paper.tasks)
                        if task not in c.paper.task_recipes],
    load_inputs=_load_inputs, trained=(paths.transfer_runs_glob(),), own_theta_p=False,
    # A transfer task may be dropped, and its recipe change, while it has no runs.
    unstarted={'paper.tasks': _dropped_tasks_runs, 'paper.task_recipes': _task_recipe_runs}))
