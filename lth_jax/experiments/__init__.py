"""The experiment layer: configs in, finished experiments out (what the CLI runs).

    lth_jax.experiments.run(config, workdir)   # `python -m lth_jax.main` calls this

Modules: `config` (the shared fields, loading configs/*.py, checks), `modes` (the
registry of modes), one module per mode (`imp`, `transfer`, `upstream`, `paper`; each
with its config section, checks and `run`), `wiring` (the only code turning a config
into a task, a model, θ_p, data and a fine-tuning callable) and `sensitivity`
(perturbation runs of a workdir's ticket, for `python -m lth_jax.analyze`). This is the
only package that reads configs; it may import everything else.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from lth_jax import data, errors
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import imp, modes, paper, transfer, upstream, wiring  # noqa: F401
from lth_jax.interop import checkpoints
from lth_jax.runtime import console
from lth_jax.runtime import workdir as workdir_lib

load_config = config_lib.load_config


def _datasets(config: ml_collections.ConfigDict, mode: modes.Mode) -> list[str]:
  """Every dataset the experiment reads: the mode's, and θ_p's pre-training set."""
  return list(dict.fromkeys(mode.datasets(config) + (
      [config.pretrain.dataset] if config.pretrained.source == 'pretrain' else [])))


def _check_data_dir(config: ml_collections.ConfigDict, names: list[str]) -> None:
  """Refuses a `data.data_dir` that no dataset of the experiment reads.

  Raises:
    ConfigError: `data.data_dir` is set and every dataset ships with lth_jax.
  """
  data_dir = config.data.data_dir
  if data_dir and all(data.get_info(n).source in config_lib.SHIPPED_SOURCES for n in names):
    raise errors.ConfigError(
        f'config.data.data_dir={data_dir!r} is not used: every dataset this experiment '
        f'reads ({", ".join(names)}) ships with lth_jax; remove it.')


def _load_inputs(config: ml_collections.ConfigDict, mode: modes.Mode,
                 names: list[str]) -> dict[str, str]:
  """Finds and loads every input before the workdir is claimed.

  Returns:
    Fingerprints of the input files (see `lth_jax.runtime.workdir.claim`).

  Raises:
    ConfigError, CheckpointError, DatasetNotFoundError: naming what is missing or wrong.
  """
  for name in names:
    data.check_available(name, config.data.data_dir)
  inputs = {}
  if config.pretrained.source not in ('random', 'pretrain'):
    if config.mode == 'upstream':
      model = upstream.build_model(config)
    else:
      task, info = wiring.task_and_data(config, names[-1])
      model = wiring.build_model(config, task, info)
    checkpoints.load_pytorch(wiring.read_checkpoint(config.pretrained.path), model,
                             source=config.pretrained.source)
    inputs['pretrained.path'] = workdir_lib.file_sha256(config.pretrained.path)
  mode.load_inputs(config)
  return inputs


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the experiment a config describes.

  Every value is checked (recipes, schedules and batch sizes against the datasets'
  sizes included) and every input (datasets, checkpoint, tickets) found and loaded
  before the workdir is claimed, so a run that stops on a bad value or a missing or bad
  input leaves nothing behind and can be rerun with the fix.

  Args:
    config: a config from configs/*.py.
    workdir: the experiment's directory; rerunning the same command resumes.

  Returns:
    The mode's results.

  Raises:
    ConfigError, WorkdirError, CheckpointError, DatasetNotFoundError: before any compute
      (WorkdirError also where the workdir was trained on another number of devices).
    DivergenceError: a fine-tuning run diverged; it is recorded in the workdir (see
      `lth_jax.runtime.workdir.record_divergence`) and nothing is recorded for its round.
  """
  config_lib.validate(config)
  mode = modes.get(config.mode)
  names = _datasets(config, mode)
  _check_data_dir(config, names)
  mesh = wiring.mesh_for(config)
  wiring.resolve_pipeline(config, mesh)
  wiring.scheduler(config, mesh)  # a bad devices_per_run stops before the workdir is claimed
  inputs = _load_inputs(config, mode, names)
  sections = mode.sections(config_lib.COMMON_FIELDS)
  defaults = config_lib.base_config()
  defaults.data.pipeline = 'host'  # what workdirs recorded before the field existed ran
  # Runs side by side train on devices_per_run devices each, the others on the mesh.
  devices = {'mesh': mesh.size, 'per_run': config.devices_per_run or mesh.size}
  resumed = workdir_lib.claim(workdir, config, defaults=defaults,
                              inputs=inputs, recipe_work=mode.recipe_work(),
                              sections=sections, devices=devices)
  console.say(f'{"Resuming" if resumed else "Starting"} {config.mode} in {workdir} on '
              f'{mesh.size} {mesh.devices.flat[0].platform} device(s) and '
              f'{jax.process_count()} process(es).')
  try:
    return mode.run(config, workdir, mesh)
  except errors.DivergenceError as e:
    e.within(f'mode {config.mode}')
    e.half_precision = config.model.half_precision
    e.moved_to = workdir_lib.record_divergence(workdir, e)
    raise


__all__ = ['load_config', 'run']
