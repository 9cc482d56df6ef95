"""Mode 'paper': the paper's main figure in miniature, on the offline data.

    python -m lth_jax.main --config=configs/paper_offline.py --workdir=/tmp/lth_paper

1. For each pre-training in `config.paper.pretrainings` (supervised, SimCLR, MoCo v2):
   θ_p is pre-trained on `config.pretrain.dataset` with that objective and upstream IMP
   finds its tickets there (mode 'upstream', the `:demo` recipes of
   configs/{supervised,simclr,moco}_imp.py, with this config's model, rounds and
   epochs).
2. Every `config.paper.transfer_every`-th ticket of each pre-training, and its dense
   θ_p, is fine-tuned on each task of `config.paper.tasks` with `config.num_seeds`
   seeds (`lth_jax.lottery.transfer`, recipe `config.optim`); a ticket is matching when
   its mean metric reaches the dense mean minus one std of the same pre-training.
3. The same networks trained from scratch (a random init per seed, 'scratch'): a task
   where θ_p does not beat scratch by more than the dense std cannot show whether
   tickets keep what pre-training gives, and the table says so ('pretraining_gain',
   'can_test_claim').
4. Two random baselines on the first pre-training's θ_p, at the sparsities of its
   tickets: random global pruning at the ticket's total sparsity (the paper's "random
   pruning", method 'random_global'), and random masks with the ticket's layer profile
   (each layer's mask shuffled, method 'random_layerwise'), which tells how much of a
   ticket's advantage is its layer-wise sparsity alone.
5. With `config.paper.task_imp_rounds` > 0, task-specific tickets (method
   'task_specific'): IMP on each task itself from the first pre-training's θ_p, the
   backbone rewound to θ_p and the task's head to its initial weights every round
   (`config.imp` fraction, pruning and policy). Its dense round 0 is that pre-training's
   dense transfer (same θ_p, seeds and recipe), trained once; `imp.prune_first`, which
   would prune round 0, is refused.

The verdict (printed, and written to verdict.txt): per task, the extreme matching
sparsity of each pre-training's upstream tickets, of the task-specific tickets and of
random global pruning.

Workdir layout (besides lth_jax.experiments'):
    upstream/<pretraining>/              the upstream experiment (see lth_jax.experiments.upstream)
    transfer/<task>/<pretraining>/       the transfer runs (see lth_jax.lottery.transfer)
    transfer/<task>/scratch/             dense runs from a random init
    transfer/<task>/task_specific/       task-specific IMP (see lth_jax.lottery.imp)
    random_masks/<method>_round_XX/      the random baselines' masks
    results.csv/.json                    one row per (task, pretraining or random, ticket)
    extreme_sparsity.csv/.json           extreme matching sparsity per pretraining and task
    results_<task>.csv/.json             the rows of one task
    <metric>_vs_sparsity_<task>.png      one curve per pre-training, plus the baselines
    verdict.txt                          the verdict line of each task
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from lth_jax import errors, masks as masks_lib, pruning
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import imp as imp_mode
from lth_jax.experiments import modes, upstream, wiring
from lth_jax.runtime.scheduler import Scheduler
from lth_jax.lottery import DENSE, add_matching, imp, results, run_transfer
from lth_jax.models import init_variables
from lth_jax.runtime import console, files, sharding

# The random baselines: method -> whether each layer keeps the ticket's count.
RANDOM_BASELINES = {'random_global': False, 'random_layerwise': True}
# Where the random baselines' masks are kept (orbax, `lth_jax.masks.load`).
RANDOM_MASKS_DIR = 'random_masks'
# Dense training from a random init: what pre-training must beat to matter on a task.
SCRATCH = 'scratch'
# IMP on the downstream task itself, from the first pre-training's θ_p.
TASK_SPECIFIC = 'task_specific'
COLUMNS = ('task', 'method', 'ticket', 'sparsity', 'test_{}', 'test_{}_std', 'matching')


def section() -> ml_collections.ConfigDict:
  """The defaults of `config.paper`."""
  c = ml_collections.ConfigDict()
  c.pretrainings = 'supervised,simclr,moco'  # objectives, pre-trained on pretrain.dataset
  c.tasks = 'mnist5k,digits'   # transfer tasks (comma-separated)
  c.upstream_epochs = 1        # epochs of each upstream IMP round
  c.transfer_every = 2         # transfer every N-th upstream ticket
  c.task_imp_rounds = 0        # > 0: also IMP on each task (rounds, the dense one included)
  c.random_baselines = 'random_global,random_layerwise'  # of RANDOM_BASELINES
  return c


def upstream_config(config: ml_collections.ConfigDict,
                    objective: str) -> ml_collections.ConfigDict:
  """The upstream experiment of one pre-training, sized by the paper config.

  Args:
    config: the paper config.
    objective: an objective with a recipe in configs/<objective>_imp.py.

  Returns:
    The objective's `:demo` upstream config (its batch size) with this config's dataset,
    model, seed, device count, rounds and epochs.
  """
  sub = config_lib.load_config(f'{objective}_imp:demo')
  sub.seed, sub.num_devices = config.seed, config.num_devices
  # The backbone only: a downstream task's model settings (a DeepLab's) are not upstream's.
  sub.model.update({k: config.model[k] for k in config_lib.MODEL_FIELDS})
  sub.pretrain.dataset = sub.data.dataset = config.pretrain.dataset
  # The upstream batch size is the recipe's: a small downstream task's batch would
  # starve the contrastive objectives of negatives.
  sub.data.update(data_dir=config.data.data_dir, eval_batch_size=config.data.eval_batch_size,
                  pipeline=config.data.pipeline)
  sub.pretrain.optim.num_epochs = config.pretrain.optim.num_epochs
  sub.optim.num_epochs = config.paper.upstream_epochs
  sub.imp.update(num_rounds=config.imp.num_rounds, fraction=config.imp.fraction,
                 policy=config.imp.policy)
  sub.checkpoint_every_steps = config.checkpoint_every_steps
  return sub


def _upstream_tickets(config: ml_collections.ConfigDict, workdir: str,
                      mesh: Mesh) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
  """Runs (or reads back) each pre-training's upstream IMP.

  Returns:
    (pretraining -> {ticket name -> mask}, pretraining -> θ_p variables).
  """
  tickets, thetas = {}, {}
  for objective in config_lib.split_names(config.paper.pretrainings):
    sub = upstream_config(config, objective)
    subdir = os.path.join(workdir, 'upstream', objective)
    console.say(f'== Pre-training {objective}: θ_p and upstream IMP in {subdir}')
    out = upstream.run(sub, subdir, mesh)
    chosen = [r['round'] for r in out['records']][config.paper.transfer_every - 1::
                                                   config.paper.transfer_every]
    tickets[objective] = {f'round_{k:02d}': imp.load_round_mask(out['run_dir'], k)
                          for k in chosen}
    thetas[objective] = out['start']
  return tickets, thetas


def _curves(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """method -> its rows, each curve starting at its own dense point."""
  curves: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    curves.setdefault(row['method'], []).append(row)
  dense = {r['pretraining']: r for r in rows if r['ticket'] == DENSE}
  for method in (*RANDOM_BASELINES, TASK_SPECIFIC):
    if method in curves:
      curves[method].insert(0, dense[curves[method][0]['pretraining']])
  return curves


def random_baselines(key: jax.Array, tickets: dict[str, Any], policy: str | None,
                     methods: tuple[str, ...] = tuple(RANDOM_BASELINES)) -> dict[str, Any]:
  """The random baselines of some tickets, named '<method>_<ticket>'.

  Args:
    key: a PRNG key.
    tickets: ticket name -> mask.
    policy: which leaves are prunable.
    methods: the baselines to make (of `RANDOM_BASELINES`).

  Returns:
    name -> mask, for every method and every ticket (each method draws the same masks
    whichever others are made).
  """
  return {f'{method}_{name}': pruning.random_like(
              jax.random.fold_in(jax.random.fold_in(key, m), i), mask, layerwise=layerwise,
              policy=policy)
          for m, (method, layerwise) in enumerate(RANDOM_BASELINES.items()) if method in methods
          for i, (name, mask) in enumerate(tickets.items())}


def _stages_at_extreme(curve: list[dict[str, Any]], dense: list[float],
                       key: str) -> dict[str, float]:
  """The per-stage sparsity of the extreme matching ticket of a curve ({} if none)."""
  value = results.extreme_sparsity(curve, dense, key)
  row = next((r for r in curve if r['sparsity'] == value), {}) if value is not None else {}
  return {f'extreme_{k}': v for k, v in row.items() if k.startswith('sparsity_layer')}


def _task_specific(config: ml_collections.ConfigDict, run_dir: str, start: Any,
                   finetune: Any, metric: results.Metric,
                   scheduler: Scheduler | None) -> list[dict[str, Any]]:
  """IMP on the task from the first pre-training's θ_p: every round's record."""
  spec = dataclasses.replace(imp_mode.spec(config), num_rounds=config.paper.task_imp_rounds,
                             dense_seeds=None)
  console.say(f'== Task-specific IMP ({spec.num_rounds} rounds incl. the dense one) in '
              f'{run_dir}')
  records = imp.run_imp(
      run_dir, spec, start, finetune, scheduler=scheduler,
      on_round=lambda r: console.say(
          f'  round {r["round"]}: sparsity {100 * r["sparsity"]:.2f}%, test {metric.label} '
          f'{results.shown(r, metric.test)}'))
  return records


def verdict(task: str, metric: results.Metric, extreme: list[dict[str, Any]]) -> str:
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
  for method, words in ((TASK_SPECIFIC, 'task-specific'), ('random_global', 'random global'),
                        ('random_layerwise', "random with the tickets' layer profile")):
    if method in others:
      parts.append(f'{words} to {shown(others[method])}')
  weak = [r['pretraining'] for r in upstream if r['can_test_claim'] is False]
  if weak:
    parts.append(f'θ_p of {", ".join(weak)} does not beat training from scratch by more than '
                 'the dense std, so its tickets cannot show the claim here')
  return f'{task} ({metric.label}): ' + '; '.join(parts) + '.'


def _transfer_units(tickets: dict[str, dict[str, Any]], random_masks: dict[str, Any],
                    task_imp_rounds: int) -> int:
  """Fine-tunes per task and seed: scratch, each pre-training's dense θ_p and tickets,
  the random baselines, and the task-specific IMP's pruned rounds (its dense round is the
  first pre-training's dense transfer)."""
  return (1 + sum(1 + len(chosen) for chosen in tickets.values()) + len(random_masks)
          + max(task_imp_rounds - 1, 0))


def _method(ticket: str, objective: str) -> str:
  return next((m for m in RANDOM_BASELINES if ticket.startswith(f'{m}_')), objective)


def run(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh) -> dict[str, Any]:
  """Upstream tickets of several pre-trainings and their transfer (see the module).

  Args:
    config: the paper config (mode 'paper').
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    {'rows': every transfer row, 'extreme': rows of extreme matching sparsity,
    'verdicts': one line per task}.
  """
  tickets, thetas = _upstream_tickets(config, workdir, mesh)
  first = next(iter(tickets))
  key = jax.random.key(config.seed)
  baselines = tuple(config_lib.split_names(config.paper.random_baselines))
  random_masks = random_baselines(key, tickets[first], config.imp.policy, baselines)
  for name, mask in random_masks.items():
    path = os.path.join(workdir, RANDOM_MASKS_DIR, name)
    if not os.path.exists(path):
      masks_lib.save(path, mask)
  seeds = imp_mode.seeds(config)
  task_names = config_lib.split_names(config.paper.tasks)
  runs = wiring.scheduler(config, mesh, total_runs=len(task_names) * len(seeds) * (
      _transfer_units(tickets, random_masks, config.paper.task_imp_rounds)))
  rows, extreme, verdicts = [], [], []
  for task_name in task_names:
    task, info = wiring.task_and_data(config, task_name)
    metric = results.with_chance(task.metric, info.num_classes)
    model = wiring.build_model(config, task, info)
    finetune = wiring.make_finetune(config, model, task, info, mesh)
    size = task.image_size(info)
    console.say(f'== Dense training from scratch on {task_name} ({len(seeds)} seeds)')
    scratch = run_transfer(
        os.path.join(workdir, 'transfer', task_name, SCRATCH), {},
        lambda seed: init_variables(model, jax.random.key(seed), size), finetune, seeds,
        metric=metric.key, policy=config.imp.policy, scheduler=runs)[0]
    scratch_values = [r[metric.test] for r in scratch['runs']]
    task_rows = [{'task': task_name, 'pretraining': SCRATCH, 'method': SCRATCH, **scratch,
                  'ticket': SCRATCH}]
    for objective, chosen in tickets.items():
      console.say(f'== Transfer of the {objective} tickets to {task_name} ({len(seeds)} seeds)')
      start = functools.lru_cache(maxsize=None)(
          lambda seed, theta=thetas[objective]: wiring.transplant(
              theta, model, jax.random.key(seed)))
      named = {**chosen, **(random_masks if objective == first else {})}
      specific, dense_runs = [], None
      if objective == first and config.paper.task_imp_rounds:
        records = _task_specific(config, os.path.join(workdir, 'transfer', task_name,
                                                      TASK_SPECIFIC), start, finetune, metric,
                                 runs)
        # Round 0 is this pre-training's dense transfer: same θ_p, seeds and recipe.
        dense_runs = results.dense_runs(records[0], f'Round 0 of the task-specific IMP on '
                                        f'{task_name}')
        specific = [{**r, 'ticket': f'{TASK_SPECIFIC}_round_{r["round"]:02d}'}
                    for r in records[1:]]
      found = run_transfer(
          os.path.join(workdir, 'transfer', task_name, objective), named, start, finetune,
          seeds, metric=metric.key, policy=config.imp.policy, dense_runs=dense_runs,
          scheduler=runs, on_result=lambda r, m=metric: console.say(
              f'  {r["ticket"]}: sparsity {100 * r["sparsity"]:.2f}%, test {m.label} '
              f'{results.shown(r, m.test)}'))
      add_matching(found, metric.key)
      dense = [r[metric.test] for r in results.dense_runs(
          found[0], f'The dense transfer of {objective} to {task_name}')]
      for row in found:
        task_rows.append({'task': task_name, 'pretraining': objective,
                          'method': _method(row['ticket'], objective), **row})
      for row in specific:
        task_rows.append({'task': task_name, 'pretraining': objective, 'method': TASK_SPECIFIC,
                          **row, 'matching': results.is_matching(row[metric.test], dense)})
      gain = results.mean_std(dense)[0] - results.mean_std(scratch_values)[0]
      # With one seed there is no spread to compare the gain with: unknown.
      noise = max(results.mean_std(dense)[1], results.mean_std(scratch_values)[1])
      can_test = gain > noise if len(seeds) > 1 else None
      if can_test is False:
        console.say(f'  θ_p ({objective}) beats training from scratch on {task_name} by '
                    f'{100 * gain:+.2f} points, not more than the dense std: this task cannot '
                    'show whether its tickets keep what pre-training gives.')
      derived = [*baselines, *([TASK_SPECIFIC] if config.paper.task_imp_rounds else [])]
      for method in [objective] + (derived if objective == first else []):
        curve = [r for r in task_rows if r['method'] == method and r['pretraining'] == objective]
        extreme.append({'task': task_name, 'method': method, 'pretraining': objective,
                        'metric': metric.key, 'dense': results.mean_std(dense)[0],
                        'dense_std': results.std_over_runs(dense),
                        'scratch': results.mean_std(scratch_values)[0],
                        'pretraining_gain': gain, 'can_test_claim': can_test,
                        'extreme_sparsity': results.extreme_sparsity(curve, dense, metric.test),
                        **_stages_at_extreme(curve, dense, metric.test)})
    rows += task_rows
    verdicts.append(verdict(task_name, metric, [r for r in extreme if r['task'] == task_name]))
    console.say(f'Verdict: {verdicts[-1]}')
    if sharding.is_chief():
      console.say(results.report(
          workdir, task_rows, _curves(task_rows), [],
          f'Upstream tickets transferred to {task_name}',
          [c.format(metric.key) for c in COLUMNS], suffix=f'_{task_name}', metric=metric,
          labels={o: f'IMP on {o} pre-training, rewind to θ_p'
                  for o in config_lib.split_names(config.paper.pretrainings)}))
  if sharding.is_chief():
    files.write_table(os.path.join(workdir, 'results'), rows)
    files.write_table(os.path.join(workdir, 'extreme_sparsity'), extreme)
    files.atomic_write(os.path.join(workdir, 'verdict.txt'),
                       lambda f: f.write('\n'.join(verdicts) + '\n'))
    console.say('\nExtreme matching sparsity (highest sparsity within one std of the same '
                'pre-training\'s dense transfer), against training from scratch:\n'
                + console.format_table(extreme, ['task', 'method', 'pretraining', 'metric',
                                                 'dense', 'scratch', 'can_test_claim',
                                                 'extreme_sparsity']))
  return {'rows': rows, 'extreme': extreme, 'verdicts': verdicts}


def validate(config: ml_collections.ConfigDict) -> None:
  """The checks of mode 'paper' (its upstream experiments' configs included)."""
  p = config.paper
  names = config_lib.split_names(p.pretrainings)
  known = [n for n in names if os.path.exists(config_lib.CONFIG_DIR / f'{n}_imp.py')]
  if not names or known != names:
    config_lib.fail('paper.pretrainings', p.pretrainings,
                    'a comma-separated list of objectives with a recipe in '
                    'configs/<objective>_imp.py (supervised, simclr, moco).')
  tasks = config_lib.split_names(p.tasks)
  if not tasks:
    config_lib.fail('paper.tasks', p.tasks, 'name at least one transfer task.')
  for name in tasks:
    config_lib.check_dataset('paper.tasks', name)
  config_lib.check_dataset('pretrain.dataset', config.pretrain.dataset)
  if p.task_imp_rounds < 0 or p.task_imp_rounds == 1:
    config_lib.fail('paper.task_imp_rounds', p.task_imp_rounds,
                    '0 (no task-specific IMP) or >= 2 (the dense round and at least one '
                    'pruned one).')
  if p.task_imp_rounds and config.imp.prune_first:
    config_lib.fail('imp.prune_first', config.imp.prune_first,
                    "task-specific IMP's round 0 is the dense transfer of θ_p that tickets "
                    'are matched against, and prune_first would prune it before training; '
                    'set --config.imp.prune_first=False (upstream IMP keeps its recipe\'s '
                    'first prune), or --config.paper.task_imp_rounds=0.')
  chosen = config_lib.split_names(p.random_baselines)
  if not set(chosen) <= set(RANDOM_BASELINES):
    config_lib.fail('paper.random_baselines', p.random_baselines,
                    f'a comma-separated subset of {tuple(RANDOM_BASELINES)} (may be empty).')
  if p.upstream_epochs < 1 or p.transfer_every < 1:
    config_lib.fail('paper.upstream_epochs', p.upstream_epochs,
                    'upstream_epochs and transfer_every must be >= 1.')
  if p.transfer_every > config.imp.num_rounds:
    config_lib.fail('paper.transfer_every', p.transfer_every,
                    f'must be <= imp.num_rounds ({config.imp.num_rounds}), or no ticket is '
                    'transferred.')
  for objective in names:
    try:
      config_lib.validate(upstream_config(config, objective))
    except errors.ConfigError as e:
      raise _upstream_error(objective, e) from None


def _check_upstream_devices(config: ml_collections.ConfigDict) -> None:
  """Fails unless each upstream experiment's batches split over the devices.

  Their batch size is their recipe's, which `experiments.run`'s own mesh check does not
  see; checked with the devices, before the workdir is claimed.

  Raises:
    ConfigError: naming the upstream experiment, its batch size and the device count.
  """
  for objective in config_lib.split_names(config.paper.pretrainings):
    try:
      wiring.mesh_for(upstream_config(config, objective))
    except errors.ConfigError as e:
      raise _upstream_error(objective, e) from None


def _upstream_error(objective: str, error: errors.ConfigError) -> errors.ConfigError:
  return errors.ConfigError(
      f'The upstream experiment of {objective!r} (paper.pretrainings) fails: {error} '
      f'(It is configs/{objective}_imp.py:demo with this config\'s model, seed, '
      'num_devices, pretrain.dataset as its dataset, imp.num_rounds, imp.fraction, '
      'pretrain.optim.num_epochs, and paper.upstream_epochs as its optim.num_epochs; '
      "the rest, its batch size included, is the recipe's.)")


modes.register(modes.Mode(
    'paper', run=run, validate=validate, section=section,
    datasets=lambda c: [c.pretrain.dataset, *config_lib.split_names(c.paper.tasks)],
    # The upstream experiments' own training is checked with their configs (`validate`).
    training=lambda c: [('optim', task) for task in config_lib.split_names(c.paper.tasks)],
    load_inputs=_check_upstream_devices, trained=('transfer/**/seed_*',)))
