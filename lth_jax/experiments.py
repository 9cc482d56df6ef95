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
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from lth_jax import analysis, console, convert, data, defaults, errors, finetune as finetune_lib
from lth_jax import imp, paper
from lth_jax import masks as masks_lib, pretrained, pruning, results, sharding, transfer, upstream
from lth_jax import workdir as workdir_lib
from lth_jax.models import init_variables

TABLE_COLUMNS = ('method', 'round', 'ticket', 'sparsity', 'test_accuracy',
                 'test_accuracy_std', 'matching')


def _seeds(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  return tuple(range(config.seed, config.seed + config.num_seeds))


# ----------------------------------------------------------------------------------
# Modes.
# ----------------------------------------------------------------------------------

def _report(workdir: str, rows: list[dict[str, Any]], curves: Mapping[str, list[dict[str, Any]]],
            dense: list[float], title: str, suffix: str = '') -> None:
  if sharding.is_chief():
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
  start = pretrained.per_seed(config, model, dataset, workdir, mesh)
  finetune = finetune_lib.make_finetune(config, model, dataset, mesh)
  c = config.imp
  spec = imp.ImpSpec(num_rounds=c.num_rounds, fraction=c.fraction, pruning=c.pruning,
                     rewind=c.rewind, rewind_step=c.rewind_step, prune_first=c.prune_first,
                     seeds=_seeds(config), policy=c.policy, pruning_seed=config.seed,
                     dense_seeds=tuple(range(config.seed, config.seed + config.dense_seeds))
                     or None)
  specs = {c.pruning: spec}
  if c.random_baseline:
    # The baseline shares the IMP run's dense round and rewinds where it does: to each
    # seed's θ_p, or (late rewinding) to the IMP run's θ_k, which it reads as its start.
    specs['random'] = dataclasses.replace(spec, pruning='random', include_dense=False,
                                          prune_first=False, rewind='start')
  curves = {}
  for method, s in specs.items():
    console.say(f'IMP ({method}) on {dataset}: {s.num_rounds} rounds x {len(s.seeds)} '
                f'seed(s) x {config.optim.num_epochs} epochs.')
    branch_start = start if method == c.pruning else imp.rewind_point(
        os.path.join(workdir, c.pruning), start, config.seed)
    curves[method] = imp.run_imp(
        os.path.join(workdir, method), s, branch_start, finetune,
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
  if sharding.is_chief():
    report = analysis.analyze_workdirs([workdir], policy=c.policy)
    console.say(f'Ticket analysis (overlap, layer and kernel structure): {report}')
  return {'curves': curves, 'extreme_sparsity': extreme}


def ticket_names(paths: Sequence[str]) -> list[str]:
  """Unique names for mask paths: the shortest distinguishing end of each path.

  A path's name is built from its last components, the file's extension dropped and an
  orbax folder's generic `mask` replaced by its parent: `.../round_02/mask` is
  'round_02', `.../round_02/mask_torch.npz` is 'mask_torch', or 'round_02/mask_torch'
  when another listed file is also called mask_torch. Names never collide; a path listed
  twice is an error.

  Args:
    paths: mask files or orbax mask folders.

  Returns:
    One name per path, in order.

  Raises:
    ConfigError: the same file or folder is listed twice.
  """
  seen: dict[str, str] = {}
  parts = []
  for path in paths:
    real = os.path.realpath(path)
    if real in seen:
      raise errors.ConfigError(
          f'config.transfer.masks lists {seen[real]!r} and {path!r}, which are the same '
          'ticket; list each ticket once.')
    seen[real] = path
    pieces = os.path.normpath(os.path.abspath(path)).split(os.sep)
    if os.path.isdir(path) and pieces[-1] == 'mask':
      pieces.pop()
    elif not os.path.isdir(path):
      pieces[-1] = pieces[-1].split('.')[0]
    parts.append(pieces)
  names = []
  for pieces in parts:
    for n in range(1, len(pieces) + 1):
      name = '/'.join(pieces[-n:])
      if sum(other[-n:] == pieces[-n:] for other in parts) == 1:
        break
    names.append(name)
  return names


def load_tickets(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The tickets named by `config.transfer.masks` and `config.transfer.imp_workdir`.

  Args:
    config: the experiment config.

  Returns:
    name -> mask tree (orbax mask folders of this project, or the reference's
    PyTorch mask files: `.pth`, `.pth.tar`, `.npz`, `.safetensors`). Names are unique
    (see `ticket_names`); every round of an IMP workdir is named by its path there.

  Raises:
    ConfigError: two tickets would share a name, or none is given.
  """
  paths = defaults.split_names(config.transfer.masks)
  sources = dict(zip(ticket_names(paths), paths))
  if config.transfer.imp_workdir:
    root = config.transfer.imp_workdir
    for path in sorted(glob.glob(os.path.join(root, '**', 'round_*', 'mask'), recursive=True)):
      name = os.path.relpath(os.path.dirname(path), root).replace(os.sep, '/')
      if name in sources:
        raise errors.ConfigError(
            f'The ticket {sources[name]!r} (config.transfer.masks) and the IMP round {path!r} '
            f'(config.transfer.imp_workdir) would both be named {name!r}; move or rename one.')
      sources[name] = path
  if transfer.DENSE in sources:
    raise errors.ConfigError(f'The ticket {sources[transfer.DENSE]!r} would be named '
                             f'{transfer.DENSE!r}, the name of the dense run; rename it.')
  if not sources and config.transfer.variant != 'omp':
    raise errors.ConfigError(
        'No tickets found: set --config.transfer.masks or --config.transfer.imp_workdir '
        '(a workdir with round_XX/mask folders).')
  return {name: masks_lib.load(path) if os.path.isdir(path) else masks_lib.from_pytorch(path)
          for name, path in sources.items()}


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
  for dataset in defaults.split_names(config.transfer.datasets):
    model = pretrained.build_model(config, dataset)
    start = pretrained.per_seed(config, model, dataset, workdir, mesh)
    chosen = _baseline_tickets(config, tickets, start(config.seed))
    reinit = {}
    if variant == 'reinit':
      # Each seed's re-initialisation is an independent draw.
      size = data.get_info(dataset).image_shape[0]
      fresh = lambda seed: init_variables(model, jax.random.fold_in(jax.random.key(seed), 1),
                                          size)
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


def _datasets(config: ml_collections.ConfigDict) -> list[str]:
  """Every dataset the experiment reads."""
  names = {'imp': [config.data.dataset], 'upstream': [config.data.dataset],
           'transfer': defaults.split_names(config.transfer.datasets),
           'paper': defaults.split_names(config.paper.tasks)}
  found = names[config.mode]
  if config.pretrained.source == 'pretrain' or config.mode == 'paper':
    found = [config.pretrain.dataset, *found]
  return list(dict.fromkeys(found))


def _check_inputs(config: ml_collections.ConfigDict) -> dict[str, str]:
  """Finds and loads every input before the workdir is claimed.

  Returns:
    Fingerprints of the input files (see `workdir.claim`).

  Raises:
    ConfigError, CheckpointError, DatasetNotFoundError: naming what is missing or wrong.
  """
  if config.mode == 'paper':
    for objective in defaults.split_names(config.paper.pretrainings):
      defaults.validate(paper.upstream_config(config, objective), tuple(data.DATASETS))
  for name in _datasets(config):
    data.check_available(name, config.data.data_dir)
  inputs = {}
  if config.pretrained.source not in ('random', 'pretrain'):
    dataset = _datasets(config)[-1]
    model = (upstream.build_model(config) if config.mode == 'upstream'
             else pretrained.build_model(config, dataset))
    convert.load_pytorch(pretrained.read_checkpoint(config.pretrained.path), model,
                         source=config.pretrained.source)
    inputs['pretrained.path'] = workdir_lib.file_sha256(config.pretrained.path)
  if config.mode == 'transfer':
    load_tickets(config)
  return inputs


def _recipe_work(mode: str) -> dict[str, list[str]]:
  """Recipe field -> the training folders (globs in the workdir) that used it."""
  trained = {'imp': ['*/round_*/seed_*'], 'upstream': ['*/round_*/seed_*'],
             'transfer': ['transfer/**/seed_*'], 'paper': ['transfer/**/seed_*']}[mode]
  pretrain = ['**/pretrain/train', '**/pretrain/variables']
  return {'optim.': trained, 'pretrain.optim.': pretrain,
          'model.half_precision': ['**/seed_*', *pretrain]}


RUNNERS = {'imp': run_imp_experiment, 'transfer': run_transfer_experiment,
           'upstream': upstream.run_upstream_experiment, 'paper': paper.run_paper_experiment}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the experiment a config describes.

  Every input (datasets, checkpoint, tickets) is found and loaded before the workdir
  is claimed, so a run that stops on a missing or bad input leaves nothing behind and
  can be rerun with the fix.

  Args:
    config: a config from configs/*.py.
    workdir: the experiment's directory; rerunning the same command resumes.

  Returns:
    The mode's results (see `run_imp_experiment`, `run_transfer_experiment`).

  Raises:
    ConfigError, WorkdirError, CheckpointError, DatasetNotFoundError: before any compute.
    DivergenceError: a fine-tuning run diverged; it is recorded in the workdir (see
      `workdir.record_divergence`) and nothing is recorded for its round.
  """
  defaults.validate(config, tuple(data.DATASETS))
  devices = jax.devices()
  if config.num_devices:
    if config.num_devices > len(devices):
      raise errors.ConfigError(f'config.num_devices={config.num_devices}, but only '
                               f'{len(devices)} devices exist.')
    devices = devices[:config.num_devices]
  mesh = sharding.make_mesh(devices)
  for field in ('batch_size', 'eval_batch_size'):
    if config.data[field] % mesh.size:
      raise errors.ConfigError(
          f'config.data.{field}={config.data[field]} must be a multiple of the {mesh.size} '
          'devices; change it or set config.num_devices.')
  inputs = _check_inputs(config)
  resumed = workdir_lib.claim(workdir, config, defaults=defaults.base_config(), inputs=inputs,
                              recipe_work=_recipe_work(config.mode))
  console.say(f'{"Resuming" if resumed else "Starting"} {config.mode} in {workdir} on '
              f'{mesh.size} {devices[0].platform} device(s) and {jax.process_count()} '
              'process(es).')
  try:
    return RUNNERS[config.mode](config, workdir, mesh)
  except errors.DivergenceError as e:
    e.within(f'mode {config.mode}')
    e.moved_to = workdir_lib.record_divergence(workdir, e)
    raise
