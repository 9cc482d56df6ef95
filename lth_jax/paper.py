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
3. The same networks trained from scratch (a random init per seed, 'scratch'): a task
   where θ_p does not beat scratch by more than the dense std cannot show whether
   tickets keep what pre-training gives, and the table says so ('pretraining_gain',
   'can_test_claim').
4. Two random baselines on the first pre-training's θ_p, at the sparsities of its
   tickets: random global pruning at the ticket's total sparsity (the paper's "random
   pruning", method 'random_global'), and random masks with the ticket's layer profile
   (each layer's mask shuffled, method 'random_layerwise'), which tells how much of a
   ticket's advantage is its layer-wise sparsity alone.

Workdir layout (besides lth_jax.experiments'):
    upstream/<pretraining>/              the upstream experiment (see lth_jax.upstream)
    transfer/<task>/<pretraining>/       the transfer runs (see lth_jax.transfer)
    transfer/<task>/scratch/             dense runs from a random init
    random_masks/<method>_round_XX/      the random baselines' masks
    results.csv/.json                    one row per (task, pretraining or random, ticket)
    extreme_sparsity.csv/.json           extreme matching sparsity per pretraining and task
    accuracy_vs_sparsity_<task>.png      one curve per pre-training, plus the random baselines
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from lth_jax import console, data, defaults, finetune as finetune_lib, imp, masks as masks_lib
from lth_jax import pretrained, pruning
from lth_jax import results, sharding, transfer, upstream
from lth_jax.models import init_variables

# The random baselines: method -> whether each layer keeps the ticket's count.
RANDOM_BASELINES = {'random_global': False, 'random_layerwise': True}
# Where the random baselines' masks are kept (orbax, `lth_jax.masks.load`).
RANDOM_MASKS_DIR = 'random_masks'
# Dense training from a random init: what pre-training must beat to matter on a task.
SCRATCH = 'scratch'
COLUMNS = ('task', 'method', 'ticket', 'sparsity', 'test_accuracy', 'test_accuracy_std',
           'matching')


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
  for objective in defaults.split_names(config.paper.pretrainings):
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
  for method in RANDOM_BASELINES:
    if method in curves:
      curves[method].insert(0, dense[curves[method][0]['pretraining']])
  return curves


def random_baselines(key: jax.Array, tickets: dict[str, Any],
                     policy: str | None) -> dict[str, Any]:
  """The random baselines of some tickets, named '<method>_<ticket>'.

  Args:
    key: a PRNG key.
    tickets: ticket name -> mask.
    policy: which leaves are prunable.

  Returns:
    name -> mask, for every method of `RANDOM_BASELINES` and every ticket.
  """
  return {f'{method}_{name}': pruning.random_like(
              jax.random.fold_in(jax.random.fold_in(key, m), i), mask, layerwise=layerwise,
              policy=policy)
          for m, (method, layerwise) in enumerate(RANDOM_BASELINES.items())
          for i, (name, mask) in enumerate(tickets.items())}


def _stages_at_extreme(curve: list[dict[str, Any]], dense: list[float]) -> dict[str, float]:
  """The per-stage sparsity of the extreme matching ticket of a curve ({} if none)."""
  value = results.extreme_sparsity(curve, dense)
  row = next((r for r in curve if r['sparsity'] == value), {}) if value is not None else {}
  return {f'extreme_{k}': v for k, v in row.items() if k.startswith('sparsity_layer')}


def _method(ticket: str, objective: str) -> str:
  return next((m for m in RANDOM_BASELINES if ticket.startswith(f'{m}_')), objective)


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
  random_masks = random_baselines(key, tickets[first], config.imp.policy)
  for name, mask in random_masks.items():
    path = os.path.join(workdir, RANDOM_MASKS_DIR, name)
    if not os.path.exists(path):
      masks_lib.save(path, mask)
  seeds = tuple(range(config.seed, config.seed + config.num_seeds))
  rows, extreme = [], []
  for task in defaults.split_names(config.paper.tasks):
    model = pretrained.build_model(config, task)
    finetune = finetune_lib.make_finetune(config, model, task, mesh)
    size = data.get_info(task).image_shape[0]
    console.say(f'== Dense training from scratch on {task} ({len(seeds)} seeds)')
    scratch = transfer.run_transfer(
        os.path.join(workdir, 'transfer', task, SCRATCH), {},
        lambda seed: init_variables(model, jax.random.key(seed), size), finetune, seeds,
        policy=config.imp.policy)[0]
    scratch_accuracy = [r['test_accuracy'] for r in scratch['runs']]
    task_rows = [{'task': task, 'pretraining': SCRATCH, 'method': SCRATCH, **scratch,
                  'ticket': SCRATCH}]
    for objective, chosen in tickets.items():
      console.say(f'== Transfer of the {objective} tickets to {task} ({len(seeds)} seeds)')
      start = functools.lru_cache(maxsize=None)(
          lambda seed, theta=thetas[objective]: pretrained.transplant(
              theta, model, jax.random.key(seed)))
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
        task_rows.append({'task': task, 'pretraining': objective,
                          'method': _method(row['ticket'], objective), **row})
      gain = results.mean_std(dense)[0] - results.mean_std(scratch_accuracy)[0]
      # With one seed there is no spread to compare the gain with: unknown.
      noise = max(results.mean_std(dense)[1], results.mean_std(scratch_accuracy)[1])
      can_test = gain > noise if len(seeds) > 1 else None
      if can_test is False:
        console.say(f'  θ_p ({objective}) beats training from scratch on {task} by '
                    f'{100 * gain:+.2f} points, not more than the dense std: this task cannot '
                    'show whether its tickets keep what pre-training gives.')
      for method in [objective] + (list(RANDOM_BASELINES) if objective == first else []):
        curve = [r for r in task_rows if r['method'] == method and r['pretraining'] == objective]
        extreme.append({'task': task, 'method': method, 'pretraining': objective,
                        'dense_accuracy': results.mean_std(dense)[0],
                        'dense_std': results.mean_std(dense)[1],
                        'scratch_accuracy': results.mean_std(scratch_accuracy)[0],
                        'pretraining_gain': gain, 'can_test_claim': can_test,
                        'extreme_sparsity': results.extreme_sparsity(curve, dense),
                        **_stages_at_extreme(curve, dense)})
    rows += task_rows
    if sharding.is_chief():
      console.say(results.report(
          workdir, task_rows, _curves(task_rows), [],
          f'Upstream tickets transferred to {task}', COLUMNS, suffix=f'_{task}'))
  if sharding.is_chief():
    results.write_table(os.path.join(workdir, 'results'), rows)
    results.write_table(os.path.join(workdir, 'extreme_sparsity'), extreme)
    console.say('\nExtreme matching sparsity (highest sparsity within one std of the same '
                'pre-training\'s dense transfer), against training from scratch:\n'
                + results.format_table(extreme, ['task', 'method', 'pretraining',
                                                 'dense_accuracy', 'scratch_accuracy',
                                                 'can_test_claim', 'extreme_sparsity']))
  return {'rows': rows, 'extreme': extreme}
