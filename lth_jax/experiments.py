"""Experiments from a config: the one place that wires data, models, weights and rounds.

    run(config, workdir)   # what `python -m lth_jax.main` calls

Modes: 'imp' (IMP on a task with rewinding, optionally with the random-pruning
baseline), 'transfer' (fine-tune given tickets or baseline masks on tasks with
several seeds and judge matching), 'upstream' (IMP on the pre-training task:
supervised, SimCLR or MoCo v2; see lth_jax.upstream) and 'paper' (the paper's main
figure in miniature; see lth_jax.paper). Where θ_p comes from is
`config.pretrained.source`: a PyTorch checkpoint, a random init (classic LTH), or
'pretrain' (supervised pre-training on `config.pretrain.dataset` inside the workdir,
cached there; the offline demo uses it).

Workdir layout:
    experiment.json              the config (a different experiment is refused)
    pretrain/                    'pretrain' source: training checkpoints and θ_p
    imp/round_XX/, random/...    IMP runs (see lth_jax.imp)
    transfer/<dataset>/<ticket>/ transfer runs (see lth_jax.transfer)
    results.csv, results.json    one row per round / ticket
    accuracy_vs_sparsity*.png    the plot(s)
    analysis/report.md           IMP mode: the tickets' structure (lth_jax.analysis)
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from lth_jax import analysis, console, data, defaults, finetune as finetune_lib, imp, paper
from lth_jax import masks as masks_lib, pretrained, pruning, results, sharding, transfer, upstream
from lth_jax import workdir as workdir_lib
from lth_jax.models import init_variables

# Fields that may change between runs of one workdir: more rounds extend a run.
RESUMABLE_CHANGES = ('imp.num_rounds',)
TABLE_COLUMNS = ('method', 'round', 'ticket', 'sparsity', 'test_accuracy',
                 'test_accuracy_std', 'matching')


def _seeds(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  return tuple(range(config.seed, config.seed + config.num_seeds))


# ----------------------------------------------------------------------------------
# Modes.
# ----------------------------------------------------------------------------------

def _report(workdir: str, rows: list[dict[str, Any]], curves: Mapping[str, list[dict[str, Any]]],
            dense: list[float], title: str, suffix: str = '') -> None:
  if console.is_chief():
    console.say(results.report(workdir, rows, curves, dense, title, TABLE_COLUMNS, suffix))


def run_imp_experiment(config: ml_collections.ConfigDict, workdir: str,
                       mesh: Any) -> dict[str, Any]:
  """IMP with rewinding on `config.data.dataset` (plus the random-pruning baseline).

  Args:
    config: the experiment config.
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    {'curves': {method: round records}, 'extreme_sparsity': {method: value or None}}.
  """
  dataset = config.data.dataset
  model = pretrained.build_model(config, dataset)
  start = pretrained.pretrained_variables(config, model, dataset, workdir, mesh)
  finetune = finetune_lib.make_finetune(config, model, dataset, mesh)
  c = config.imp
  spec = imp.ImpSpec(num_rounds=c.num_rounds, fraction=c.fraction, pruning=c.pruning,
                     rewind=c.rewind, rewind_step=c.rewind_step, prune_first=c.prune_first,
                     seeds=_seeds(config), policy=c.policy, pruning_seed=config.seed,
                     dense_seeds=tuple(range(config.seed, config.seed + config.dense_seeds))
                     or None)
  specs = {c.pruning: spec}
  if c.random_baseline:
    specs['random'] = dataclasses.replace(spec, pruning='random', include_dense=False,
                                          prune_first=False, rewind='start')
  curves = {}
  for method, s in specs.items():
    console.say(f'IMP ({method}) on {dataset}: {s.num_rounds} rounds x {len(s.seeds)} '
                f'seed(s) x {config.optim.num_epochs} epochs.')
    curves[method] = imp.run_imp(
        os.path.join(workdir, method), s, start, finetune,
        on_round=lambda r, m=method: console.say(
            f'[{m}] round {r["round"]}: sparsity {100 * r["sparsity"]:.2f}%, test accuracy '
            f'{100 * r["test_accuracy"]:.2f}% (best val epoch {r["best_epoch"]})'))
  dense_round = curves[c.pruning][0]
  dense = ([run['test_accuracy'] for run in dense_round['runs']]
           if dense_round['sparsity'] == 0 else [])
  if dense:
    for method, recs in curves.items():
      if method != c.pruning:
        recs.insert(0, dense_round)
  rows, extreme = [], {}
  for method, recs in curves.items():
    for r in recs:
      rows.append({'method': method, **r,
                   'matching': results.is_matching(r['test_accuracy'], dense) if dense else None})
    extreme[method] = results.extreme_sparsity(recs, dense) if dense else None
  _report(workdir, rows, curves, dense, f'{config.model.arch} on {dataset}')
  for method, value in extreme.items():
    shown = 'none' if value is None else f'{100 * value:.2f}%'
    console.say(f'Extreme matching sparsity ({method}): {shown}')
  if console.is_chief():
    report = analysis.analyze_workdirs([workdir], policy=c.policy)
    console.say(f'Ticket analysis (overlap, layer and kernel structure): {report}')
  return {'curves': curves, 'extreme_sparsity': extreme}


def load_tickets(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The tickets named by `config.transfer.masks` and `config.transfer.imp_workdir`.

  Args:
    config: the experiment config.

  Returns:
    name -> mask tree (orbax mask folders of this project, or the reference's
    PyTorch mask files: `.pth`, `.pth.tar`, `.npz`, `.safetensors`).
  """
  tickets = {}
  for path in filter(None, (p.strip() for p in config.transfer.masks.split(','))):
    name = os.path.basename(os.path.normpath(path)).split('.')[0]
    if os.path.basename(os.path.normpath(path)) == 'mask':
      name = os.path.basename(os.path.dirname(os.path.normpath(path)))
    tickets[name] = (masks_lib.load(path) if os.path.isdir(path)
                     else masks_lib.from_pytorch(path))
  if config.transfer.imp_workdir:
    root = config.transfer.imp_workdir
    for path in sorted(glob.glob(os.path.join(root, '**', 'round_*', 'mask'), recursive=True)):
      name = os.path.relpath(os.path.dirname(path), root).replace(os.sep, '/')
      tickets[name] = masks_lib.load(path)
  if not tickets and config.transfer.variant != 'omp':
    raise ValueError('No tickets found: set --config.transfer.masks or '
                     '--config.transfer.imp_workdir (a workdir with round_XX/mask folders).')
  return tickets


def _baseline_tickets(config: ml_collections.ConfigDict, tickets: dict[str, Any],
                      start: Mapping[str, Any]) -> dict[str, Any]:
  variant = config.transfer.variant
  if variant == 'omp':
    dense = masks_lib.init(start['params'], config.imp.policy)
    return {f'omp_{k:02d}': pruning.to_sparsity(start['params'], dense,
                                                1 - (1 - config.imp.fraction) ** k,
                                                config.imp.policy)
            for k in range(1, config.transfer.omp_rounds + 1)}
  if variant in ('random_global', 'random_layerwise'):
    key = jax.random.key(config.seed)
    return {name: pruning.random_like(jax.random.fold_in(key, i), t,
                                      layerwise=variant == 'random_layerwise',
                                      policy=config.imp.policy)
            for i, (name, t) in enumerate(tickets.items())}
  return tickets


def run_transfer_experiment(config: ml_collections.ConfigDict, workdir: str,
                            mesh: Any) -> dict[str, Any]:
  """Fine-tunes tickets (or a baseline made from them) on each dataset with N seeds.

  Args:
    config: the experiment config (`transfer` fields).
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    {dataset: {'rows': rows, 'extreme_sparsity': value or None}}.
  """
  tickets = load_tickets(config)
  variant = config.transfer.variant
  out = {}
  for dataset in [d.strip() for d in config.transfer.datasets.split(',') if d.strip()]:
    model = pretrained.build_model(config, dataset)
    start = pretrained.pretrained_variables(config, model, dataset, workdir, mesh)
    chosen = _baseline_tickets(config, tickets, start)
    reinit = {}
    if variant == 'reinit':
      fresh = init_variables(model, jax.random.key(config.seed + 1),
                             data.get_info(dataset).image_shape[0])
      reinit = {name: fresh for name in chosen}
    console.say(f'Transfer ({variant}) to {dataset}: {len(chosen)} ticket(s) + dense x '
                f'{config.num_seeds} seed(s).')
    rows = transfer.run_transfer(
        os.path.join(workdir, 'transfer', dataset), chosen, start,
        finetune_lib.make_finetune(config, model, dataset, mesh), _seeds(config),
        init_variables=reinit, policy=config.imp.policy,
        on_result=lambda r: console.say(
            f'  {r["ticket"]}: sparsity {100 * r["sparsity"]:.2f}%, '
            f'test {100 * r["test_accuracy"]:.2f}% ± {100 * r["test_accuracy_std"]:.2f}'))
    extreme = transfer.add_matching(rows)
    dense = [r['test_accuracy'] for r in rows[0]['runs']]
    for row in rows:
      row['method'] = variant if row['ticket'] != transfer.DENSE else transfer.DENSE
    _report(workdir, rows, {variant: rows}, dense, f'{variant} tickets on {dataset}',
            suffix=f'_{dataset}')
    console.say(f'Extreme matching sparsity on {dataset}: '
                f'{"none" if extreme is None else f"{100 * extreme:.2f}%"}')
    out[dataset] = {'rows': rows, 'extreme_sparsity': extreme}
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the experiment a config describes.

  Args:
    config: a config from configs/*.py.
    workdir: the experiment's directory; rerunning the same command resumes.

  Returns:
    The mode's results (see `run_imp_experiment`, `run_transfer_experiment`).
  """
  defaults.validate(config, tuple(data.DATASETS))
  devices = jax.devices()
  if config.num_devices:
    if config.num_devices > len(devices):
      raise ValueError(f'config.num_devices={config.num_devices}, but only {len(devices)} '
                       'devices exist.')
    devices = devices[:config.num_devices]
  mesh = sharding.make_mesh(devices)
  for field in ('batch_size', 'eval_batch_size'):
    if config.data[field] % mesh.size:
      raise ValueError(f'config.data.{field}={config.data[field]} must be a multiple of the '
                       f'{mesh.size} devices; change it or set config.num_devices.')
  resumed = workdir_lib.claim(workdir, config, RESUMABLE_CHANGES)
  console.say(f'{"Resuming" if resumed else "Starting"} {config.mode} in {workdir} on '
              f'{mesh.size} {devices[0].platform} device(s).')
  if config.mode == 'imp':
    return run_imp_experiment(config, workdir, mesh)
  if config.mode == 'upstream':
    return upstream.run_upstream_experiment(config, workdir, mesh)
  if config.mode == 'paper':
    return paper.run_paper_experiment(config, workdir, mesh)
  return run_transfer_experiment(config, workdir, mesh)
