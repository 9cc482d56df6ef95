"""Mode 'transfer': given tickets (or baselines made from them) fine-tuned on tasks with seeds.

    python -m lth_jax.main --config=configs/transfer.py:moco --workdir=/tmp/lth_transfer ...

Tickets are this project's mask folders or the reference's PyTorch mask files
(`config.transfer.masks`), or every round of an IMP workdir (`transfer.imp_workdir`);
`transfer.variant` replaces them by a baseline (random global or layer-wise masks with
their counts, random re-initialisation, one-shot magnitude pruning). The dense network
is always fine-tuned too (with `config.dense_seeds` seeds where that is larger than
`num_seeds`); each ticket is marked matching against its runs. Workdir:

    transfer/<dataset>/<ticket>/seed_S/      one resumable run (see lth_jax.lottery.ticket_transfer)
    results_<dataset>.csv/.json, <metric>_vs_sparsity_<dataset>.png
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from lth_jax import errors, masks as masks_lib, pruning
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import imp
from lth_jax.experiments import modes, specs, wiring
from lth_jax.interop import mask_files
from lth_jax.lottery import DENSE, results, run_transfer
from lth_jax.models import init_variables
from lth_jax.runtime import console
from lth_jax.runtime.paths import MASK, round_masks_glob, transfer_dir, transfer_runs_glob

VARIANTS = ('ticket', *pruning.RANDOM_BASELINES, 'reinit', 'omp')


def section() -> ml_collections.ConfigDict:
  """The defaults of `config.transfer`."""
  c = ml_collections.ConfigDict()
  c.masks = ''                 # comma-separated mask paths (orbax dirs or .pth/.npz)
  c.imp_workdir = ''           # or: every round mask of an IMP workdir
  c.datasets = 'cifar10'       # comma-separated
  c.variant = 'ticket'         # see VARIANTS
  c.omp_rounds = 8             # 'omp': one-shot masks at 1 - 0.8^k, k = 1..omp_rounds
  return c


@dataclasses.dataclass(frozen=True)
class Spec:
  """What mode 'transfer' transfers where (`config.transfer`, see `section`).

  Attributes:
    masks: the tickets' mask paths.
    imp_workdir: an IMP workdir whose every round is a ticket too ('': none).
    datasets: the tasks' datasets.
    variant: the tickets themselves or a baseline made from them (`VARIANTS`).
    omp_rounds: variant 'omp': one-shot masks at 1 - 0.8^k, k = 1..omp_rounds.
  """
  masks: tuple[str, ...]
  imp_workdir: str
  datasets: tuple[str, ...]
  variant: str
  omp_rounds: int


def spec(config: ml_collections.ConfigDict) -> Spec:
  """The `Spec` of `config.transfer` (`specs.Experiment.section` in this mode)."""
  t = config.transfer
  return specs.from_section(Spec, t, masks=tuple(config_lib.split_names(t.masks)),
                            datasets=tuple(config_lib.split_names(t.datasets)))


def ticket_names(paths: Sequence[str]) -> list[str]:
  """Unique relative names for mask paths: the shortest distinguishing end of each path.

  A path's name is built from its last components, the file's extension dropped and an
  orbax folder's generic `mask` replaced by its parent: `.../round_02/mask` is
  'round_02', `.../round_02/mask_torch.npz` is 'mask_torch', or 'round_02/mask_torch'
  when another listed file is also called mask_torch. Files that differ only in their
  extension keep it ('mask_torch.npz' and 'mask_torch.pth'). A name is a path relative
  to the folder of the transfer runs, never an absolute one.

  Args:
    paths: mask files or orbax mask folders.

  Returns:
    One name per path, in order.

  Raises:
    ConfigError: the same file or folder is listed twice, or two paths would share a
      name (an orbax folder `x/mask` and a folder `x`).
  """
  seen: dict[str, str] = {}
  stems, full = [], []
  for path in paths:
    real = os.path.realpath(path)
    if real in seen:
      raise errors.ConfigError(
          f'config.transfer.masks lists {seen[real]!r} and {path!r}, which are the same '
          'ticket; list each ticket once.')
    seen[real] = path
    # The root's '' stays first, so that no path's pieces are the end of another's; it
    # never enters a name, which stays relative to the folder of the runs.
    pieces = os.path.normpath(os.path.abspath(path)).split(os.sep)
    if os.path.isdir(path) and pieces[-1] == MASK:
      pieces.pop()
    full.append(pieces)
    stems.append(pieces if os.path.isdir(path) else pieces[:-1] + [pieces[-1].split('.')[0]])
  # An extension is kept only where it is all that tells two paths apart.
  parts = [stem if stems.count(stem) == 1 else whole for stem, whole in zip(stems, full)]
  names = []
  for path, pieces in zip(paths, parts):
    for n in range(1, len(pieces) + 1):
      if sum(other[-n:] == pieces[-n:] for other in parts) == 1:
        names.append('/'.join(pieces[-n:]).lstrip('/'))
        break
    else:
      twin = next(p for p, other in zip(paths, parts) if other == pieces and p != path)
      raise errors.ConfigError(
          f'config.transfer.masks lists {twin!r} and {path!r}, which would both be named '
          f'{"/".join(pieces).lstrip("/")!r}; move or rename one.')
  return names


def load_tickets(transfer: Spec) -> dict[str, Any]:
  """The tickets named by `transfer.masks` and `transfer.imp_workdir`.

  Args:
    transfer: the transfer spec.

  Returns:
    name -> mask tree (orbax mask folders of this project, or the reference's
    PyTorch mask files: `.pth`, `.pth.tar`, `.npz`, `.safetensors`). Names are unique
    (see `ticket_names`); every round of an IMP workdir is named by its path there.

  Raises:
    ConfigError: two tickets would share a name, or none is given.
  """
  sources = dict(zip(ticket_names(transfer.masks), transfer.masks))
  if transfer.imp_workdir:
    root = transfer.imp_workdir
    for path in sorted(glob.glob(round_masks_glob(root), recursive=True)):
      name = os.path.relpath(os.path.dirname(path), root).replace(os.sep, '/')
      if name in sources:
        raise errors.ConfigError(
            f'The ticket {sources[name]!r} (config.transfer.masks) and the IMP round {path!r} '
            f'(config.transfer.imp_workdir) would both be named {name!r}; move or rename one.')
      sources[name] = path
  if DENSE in sources:
    raise errors.ConfigError(f'The ticket {sources[DENSE]!r} would be named '
                             f'{DENSE!r}, the name of the dense run; rename it.')
  if not sources and transfer.variant != 'omp':
    raise errors.ConfigError(
        'No tickets found: set --config.transfer.masks or --config.transfer.imp_workdir '
        '(a workdir with round_XX/mask folders).')
  return {name: masks_lib.load(path) if os.path.isdir(path) else mask_files.from_pytorch(path)
          for name, path in sources.items()}


def _baseline_tickets(experiment: specs.Experiment, tickets: dict[str, Any],
                      start: Mapping[str, Any]) -> dict[str, Any]:
  variant, policy = experiment.section.variant, experiment.imp.policy
  if variant == 'omp':
    dense = masks_lib.init(start['params'], policy)
    return {f'omp_{k:02d}': pruning.to_sparsity(start['params'], dense,
                                                1 - (1 - experiment.imp.spec.fraction) ** k,
                                                policy)
            for k in range(1, experiment.section.omp_rounds + 1)}
  if variant in pruning.RANDOM_BASELINES:
    # Paper mode draws its baselines of the same tickets alike.
    return pruning.random_baselines(experiment.seed, tickets, variant, policy)
  return tickets


def run(experiment: specs.Experiment, workdir: str, mesh: Mesh) -> dict[str, Any]:
  """Fine-tunes tickets (or a baseline made from them) on each dataset with N seeds.

  Args:
    experiment: the experiment (its section a `Spec`).
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    {dataset: {'rows': rows, 'extreme_sparsity': value or None}}.
  """
  transfer: Spec = experiment.section
  tickets = load_tickets(transfer)
  variant, num_seeds = transfer.variant, len(experiment.seeds)
  num_dense = len(experiment.dense_seeds)
  out, runs = {}, None
  for dataset in transfer.datasets:
    task, info = wiring.task_and_data(experiment.data, dataset)
    metric = task.headline(info)
    model = task.build_model(experiment.model, info)
    start = wiring.theta_p(experiment, model, task.image_size(info), workdir, mesh)
    chosen = _baseline_tickets(experiment, tickets, start(experiment.seed))
    reinit = {}
    if variant == 'reinit':
      # Each seed's re-initialisation is an independent draw.
      fresh = lambda seed: init_variables(model, jax.random.fold_in(jax.random.key(seed), 1),
                                          task.image_size(info))
      reinit = {name: fresh for name in chosen}
    if runs is None:  # every dataset fine-tunes as many tickets: one count for them all
      runs = wiring.scheduler(experiment, mesh, total_runs=len(transfer.datasets)
                              * (len(chosen) * num_seeds + num_dense))
    console.say(f'Transfer ({variant}) to {dataset}: {len(chosen)} ticket(s) x {num_seeds} '
                f'seed(s) + dense x {num_dense}.')
    rows = run_transfer(
        transfer_dir(workdir, dataset), chosen, start,
        wiring.make_finetune(experiment, model, task, info, mesh), experiment.seeds,
        metric=metric.key, init_variables=reinit, policy=experiment.imp.policy,
        dense_seeds=experiment.dense_seeds, scheduler=runs,
        on_result=lambda r, m=metric: console.say(
            f'  {r["ticket"]}: sparsity {100 * r["sparsity"]:.2f}%, test {m.label} '
            f'{results.shown(r, m.test)}'))
    dense = [r[metric.test] for r in results.dense_runs(rows[0], f'The dense run on {dataset}')]
    extreme = results.mark_matching(rows, dense, metric.test)
    for row in rows:
      row['method'] = variant if row['ticket'] != DENSE else DENSE
    imp.report(workdir, experiment, metric, rows, {variant: rows}, dense,
               f'{variant} tickets on {dataset}', suffix=f'_{dataset}')
    console.say(f'Extreme matching sparsity on {dataset}: '
                f'{"none" if extreme is None else f"{100 * extreme:.2f}%"}')
    out[dataset] = {'rows': rows, 'extreme_sparsity': extreme}
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """The checks of mode 'transfer'."""
  t = config.transfer
  for name in config_lib.split_names(t.datasets):
    config_lib.check_dataset('transfer.datasets', name)
  if t.variant not in VARIANTS:
    config_lib.fail('transfer.variant', t.variant, f'choose one of {VARIANTS}.')
  if t.variant != 'omp' and not (t.masks or t.imp_workdir):
    config_lib.fail('transfer.masks', t.masks,
                    'name the tickets: comma-separated mask paths, or transfer.imp_workdir.')
  for path in config_lib.split_names(t.masks):
    if not os.path.exists(path):
      config_lib.fail('transfer.masks', path, 'no such mask file or directory.')
  if t.imp_workdir and not os.path.isdir(t.imp_workdir):
    config_lib.fail('transfer.imp_workdir', t.imp_workdir, 'no such directory.')


def _check_tickets(transfer: Spec) -> None:
  """Loads every ticket before the claim: a missing or bad one stops the run there."""
  load_tickets(transfer)


modes.register(modes.Mode(
    'transfer', run=run, validate=validate, section=section, spec=spec,
    datasets=lambda c: config_lib.split_names(c.transfer.datasets),
    load_inputs=lambda experiment: _check_tickets(experiment.section),
    trained=(transfer_runs_glob(),)))
