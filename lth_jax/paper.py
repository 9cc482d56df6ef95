"""The paper in miniature (config.mode='paper'): its main figure on the offline data.

    run_paper_experiment(config, workdir, mesh)   # via lth_jax.experiments.run

1. For each pre-training in `config.paper.pretrainings` (supervised, SimCLR, MoCo v2):
   θ_p is pre-trained on `config.pretrain.dataset` with that objective and upstream IMP
   finds its tickets there (`lth_jax.upstream`, the `:demo` recipes of
   configs/{supervised,simclr,moco}_imp.py, with this config's model, rounds and
   epochs).
2. Every `config.paper.transfer_every`-th ticket of each pre-training, and its dense
   θ_p, is fine-tuned on each task of `config.paper.tasks` with `config.num_seeds`
   seeds (`lth_jax.transfer`, recipe `config.optim`); a ticket is matching when its
   mean accuracy reaches the dense mean minus one std of the same pre-training.
3. The random-pruning baseline: random global masks at the sparsities of the first
   pre-training's tickets, on that pre-training's θ_p.

Workdir layout (besides lth_jax.experiments'):
    upstream/<pretraining>/              the upstream experiment (see lth_jax.upstream)
    transfer/<task>/<pretraining>/       the transfer runs (see lth_jax.transfer)
    results.csv/.json                    one row per (task, pretraining or random, ticket)
    extreme_sparsity.csv/.json           extreme matching sparsity per pretraining and task
    accuracy_vs_sparsity_<task>.png      one curve per pre-training, plus random pruning
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from lth_jax import console, data, defaults, finetune as finetune_lib, imp, pretrained, pruning
from lth_jax import results, transfer, upstream

RANDOM = 'random'
COLUMNS = ('task', 'method', 'ticket', 'sparsity', 'test_accuracy', 'test_accuracy_std',
           'matching')


def _names(value: str) -> list[str]:
  return [v.strip() for v in value.split(',') if v.strip()]


def upstream_config(config: ml_collections.ConfigDict,
                    objective: str) -> ml_collections.ConfigDict:
  """The upstream experiment of one pre-training, sized by the paper config.

  Args:
    config: the paper config.
    objective: one of `defaults.UPSTREAM_OBJECTIVES`.

  Returns:
    The objective's `:demo` upstream config with this config's dataset, model, seed,
    rounds and epochs.
  """
  sub = defaults.upstream_config(objective, 'demo')
  sub.seed = config.seed
  sub.model = config.model
  sub.pretrain.dataset = sub.data.dataset = config.pretrain.dataset
  sub.data.update(data_dir=config.data.data_dir, batch_size=config.data.batch_size,
                  eval_batch_size=config.data.eval_batch_size)
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
  for objective in _names(config.paper.pretrainings):
    sub = upstream_config(config, objective)
    defaults.validate(sub, tuple(data.DATASETS))
    subdir = os.path.join(workdir, 'upstream', objective)
    console.say(f'== Pre-training {objective}: θ_p and upstream IMP in {subdir}')
    out = upstream.run_upstream_experiment(sub, subdir, mesh)
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
  dense = {r['pretraining']: r for r in rows if r['ticket'] == transfer.DENSE}
  if RANDOM in curves:
    curves[RANDOM].insert(0, dense[curves[RANDOM][0]['pretraining']])
  return curves


def run_paper_experiment(config: ml_collections.ConfigDict, workdir: str,
                         mesh: Mesh) -> dict[str, Any]:
  """Upstream tickets of several pre-trainings and their transfer (see the module).

  Args:
    config: the paper config (mode 'paper').
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    {'rows': every transfer row, 'extreme': rows of extreme matching sparsity}.
  """
  tickets, thetas = _upstream_tickets(config, workdir, mesh)
  first = next(iter(tickets))
  key = jax.random.key(config.seed)
  random_masks = {f'{RANDOM}_{name}': pruning.random_like(jax.random.fold_in(key, i), mask,
                                                          policy=config.imp.policy)
                  for i, (name, mask) in enumerate(tickets[first].items())}
  seeds = tuple(range(config.seed, config.seed + config.num_seeds))
  rows, extreme = [], []
  for task in _names(config.paper.tasks):
    model = pretrained.build_model(config, task)
    finetune = finetune_lib.make_finetune(config, model, task, mesh)
    task_rows = []
    for objective, chosen in tickets.items():
      console.say(f'== Transfer of the {objective} tickets to {task} ({len(seeds)} seeds)')
      start = pretrained.transplant(thetas[objective], model, key)
      named = {**chosen, **(random_masks if objective == first else {})}
      found = transfer.run_transfer(
          os.path.join(workdir, 'transfer', task, objective), named, start, finetune, seeds,
          policy=config.imp.policy,
          on_result=lambda r: console.say(
              f'  {r["ticket"]}: sparsity {100 * r["sparsity"]:.2f}%, test '
              f'{100 * r["test_accuracy"]:.2f}% ± {100 * r["test_accuracy_std"]:.2f}'))
      transfer.add_matching(found)
      dense = [r['test_accuracy'] for r in found[0]['runs']]
      for row in found:
        method = RANDOM if row['ticket'].startswith(RANDOM) else objective
        task_rows.append({'task': task, 'pretraining': objective, 'method': method, **row})
      for method in [objective] + ([RANDOM] if objective == first else []):
        curve = [r for r in task_rows if r['method'] == method and r['pretraining'] == objective]
        extreme.append({'task': task, 'method': method, 'pretraining': objective,
                        'dense_accuracy': results.mean_std(dense)[0],
                        'extreme_sparsity': results.extreme_sparsity(curve, dense)})
    rows += task_rows
    if console.is_chief():
      console.say(results.report(
          workdir, task_rows, _curves(task_rows), [],
          f'Upstream tickets transferred to {task}', COLUMNS, suffix=f'_{task}'))
  if console.is_chief():
    results.write_table(os.path.join(workdir, 'results'), rows)
    results.write_table(os.path.join(workdir, 'extreme_sparsity'), extreme)
    console.say('\nExtreme matching sparsity (highest sparsity within one std of the same '
                'pre-training\'s dense transfer):\n' + results.format_table(
                    extreme, ['task', 'method', 'pretraining', 'dense_accuracy',
                              'extreme_sparsity']))
  return {'rows': rows, 'extreme': extreme}
