"""Perturbation sensitivity of an experiment's ticket, run from its workdir.

    perturbation, connectivity = sensitivity.run(workdir, sizes={'mask_swap': (0, 0.5)})
    analysis.analyze_workdirs([workdir], perturbation=perturbation,
                              connectivity=connectivity)

Reads the experiment's config (`experiment.json`), rebuilds its model, the weights
its IMP run rewound to (θ_p or a late-rewinding point) and its fine-tuning recipe,
and fine-tunes perturbed copies of one round's ticket of the IMP run
(`lth_jax.analysis.perturbation`): mask swaps and layer-wise shuffles, Gaussian
noise on θ_p and random re-initialisation, and linear mode connectivity of two copies
trained with different data orders. The runs live in `workdir/analysis/runs/` and
resume like every other fine-tuning run. `python -m lth_jax.analyze --perturb=...` is
the command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from lth_jax import analysis
from lth_jax.analysis import imp_runs
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import modes, specs, wiring
from lth_jax.lottery import rounds as run_files
from lth_jax.models import init_variables
from lth_jax.runtime import console, paths
from lth_jax.runtime import workdir as workdir_lib

# The sizes of each kind when none are given (0 is the ticket itself).
DEFAULT_SIZES = {'mask_swap': (0.0, 0.1, 0.25, 0.5, 1.0), 'mask_shuffle': (0.0, 1.0),
                 'weight_noise': (0.0, 0.5, 1.0, 2.0), 'weight_reinit': (0.0, 0.5, 1.0)}


def experiment_config(workdir: str) -> ml_collections.ConfigDict:
  """The config an experiment folder was run with.

  Args:
    workdir: a folder written by `python -m lth_jax.main`.

  Returns:
    The config of its `experiment.json` (fields it does not record take their default).

  Raises:
    FileNotFoundError: the folder holds no experiment.json.
    WorkdirError: its experiment.json cannot be read.
    ValueError: it holds an experiment of a mode whose rounds cannot be perturbed
      (`modes.Mode.perturbable`).
  """
  recorded = workdir_lib.read_experiment(workdir)
  if recorded is None:
    path = os.path.join(workdir, workdir_lib.EXPERIMENT_FILE)
    raise FileNotFoundError(f'{path} does not exist: point --workdir at a folder written by '
                            '`python -m lth_jax.main`.')
  config = config_lib.from_record(recorded)
  if not modes.get(config.mode).perturbable:
    able = [mode.name for mode in modes.MODES.values() if mode.perturbable]
    raise ValueError(f'{workdir} holds a {config.mode!r} experiment; perturbation runs '
                     'need the tickets and recipe of IMP rounds on one task (mode '
                     f'{" or ".join(able)}).')
  return config


def parse_sizes(specs: Sequence[str]) -> dict[str, tuple[float, ...]]:
  """Perturbation sizes from command-line specs 'KIND' or 'KIND=SIZE,SIZE,...'.

  Args:
    specs: e.g. ['mask_swap', 'weight_noise=0,1,2'].

  Returns:
    kind -> sizes ('KIND' alone takes `DEFAULT_SIZES[KIND]`).
  """
  sizes = {}
  for spec in specs:
    kind, _, values = spec.partition('=')
    if kind not in analysis.PERTURBATIONS:
      raise ValueError(f'Unknown perturbation {kind!r} in {spec!r}; choose from '
                       f'{analysis.PERTURBATIONS}.')
    try:
      sizes[kind] = (tuple(float(v) for v in values.split(',')) if values
                     else DEFAULT_SIZES[kind])
    except ValueError:
      raise ValueError(f'Bad sizes in {spec!r}: write KIND=SIZE,SIZE,... with numbers, e.g. '
                       'mask_swap=0,0.25,1.') from None
  return sizes


def run(workdir: str, *, level: int | None = None,
        sizes: Mapping[str, Sequence[float]] | None = None, seeds: Sequence[int] = (0,),
        lmc_seeds: Sequence[int] = (), num_points: int = 11
        ) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], dict[str, dict[str, Any]]]:
  """Fine-tunes perturbed copies of one ticket of an IMP experiment.

  Args:
    workdir: the IMP experiment's folder.
    level: the IMP round whose ticket is perturbed (default: the last finished one).
    sizes: kind -> sizes (kinds of `analysis.PERTURBATIONS`); None: `DEFAULT_SIZES`
      for mask_swap and weight_noise; {}: no sweep (connectivity only).
    seeds: perturbation and fine-tuning seeds of each size.
    lmc_seeds: two seeds for linear mode connectivity; () skips it.
    num_points: points on the interpolation path.

  Returns:
    ({kind: {ticket name: sweep rows}}, {ticket name: connectivity result}): what
    `analysis.write_report` takes as `perturbation` and `connectivity`.
  """
  experiment = specs.build(experiment_config(workdir))
  if sizes is None:
    sizes = {k: DEFAULT_SIZES[k] for k in ('mask_swap', 'weight_noise')}
  unknown = set(sizes) - set(analysis.PERTURBATIONS)
  if unknown:
    raise ValueError(f'Unknown perturbation(s) {sorted(unknown)}; choose from '
                     f'{analysis.PERTURBATIONS}.')
  method = experiment.imp.pruning  # the IMP branch's folder
  run_dir = os.path.join(workdir, method)
  rounds = analysis.discover_runs([workdir]).get(method, {})
  finished = [k for k, d in rounds.items() if imp_runs.round_record(d) is not None]
  if level is None:
    if not finished:
      raise ValueError(f'{run_dir} has no finished round yet; run the experiment first.')
    level = max(finished)
  elif level not in rounds:
    raise ValueError(f'{run_dir} has no round {level}; it has rounds {sorted(rounds)}.')
  ticket = run_files.load_round_mask(run_dir, level)
  name = f'{method} round {level}'

  task, info = wiring.task_and_data(experiment.data, experiment.data.dataset)
  model = task.build_model(experiment.model, info)
  # The run's own devices, or as many as divide its batch sizes (they were chosen for
  # the devices the run had).
  mesh = wiring.mesh_for(experiment, fit_batch_sizes=True)
  # What the run rewound to: each seed's θ_p, or the late-rewinding point of
  # imp.rewind='step'.
  theta = run_files.rewind_point(
      run_dir, wiring.theta_p(experiment, model, task.image_size(info), workdir, mesh),
      experiment.seed)
  finetune = wiring.make_finetune(experiment, model, task, info, mesh)
  fresh = init_variables(model, jax.random.key(experiment.seed + 1),
                         task.image_size(info))['params']
  root = paths.analysis_runs_dir(workdir, level)
  perturbation = {}
  for kind, kind_sizes in sizes.items():
    console.say(f'Perturbation {kind} of {name}: sizes {list(kind_sizes)} x {len(seeds)} '
                'seed(s).')
    perturbation[kind] = {name: analysis.sweep(kind, kind_sizes, theta, ticket, finetune,
                                               root, seeds=seeds, fresh_params=fresh,
                                               policy=experiment.imp.policy)}
  connectivity = {}
  if lmc_seeds:
    console.say(f'Linear mode connectivity of {name}: seeds {list(lmc_seeds)}.')

    evaluate = task.evaluator(model, info, batch_size=experiment.data.eval_batch_size,
                              data_dir=experiment.data.data_dir, mesh=mesh)

    def metric(variables: Mapping[str, Any]) -> float:
      return evaluate(variables, 'test')[task.metric.key]

    connectivity[name] = analysis.linear_mode_connectivity(
        theta, ticket, finetune, metric, paths.lmc_dir(root), seeds=tuple(lmc_seeds),
        num_points=num_points)
  return perturbation, connectivity
