"""The experiment layer: configs in, finished experiments out (what the CLI runs).

    lth_jax.experiments.run(config, workdir)   # `python -m lth_jax.main` calls this

Modules: `config` (the shared fields, loading configs/*.py, checks), `specs` (the config
read once, after the checks, into the typed specs everything after them takes), `modes`
(the registry of modes), one module per mode (`imp`, `transfer`, `upstream`, `paper`,
`pretrain`; each with its config section and its spec, checks and `run`), `sources` (the
registry of θ_p's sources), `wiring` (the only code turning specs into a task, a model, θ_p, data
and a fine-tuning callable) and `sensitivity` (perturbation runs of a workdir's ticket,
for `python -m lth_jax.analyze`). This is the only package that reads configs; it may
import everything else. Here the library's messages name settings as the command line's
`--config.<field>` flags (`lth_jax.errors.spell_settings`).
"""

from __future__ import annotations

from typing import Any

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from lth_jax import data, errors
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import imp, modes, paper, pretrain, sources, transfer, upstream  # noqa: F401
from lth_jax.experiments import specs, wiring
from lth_jax.runtime import console
from lth_jax.runtime import workdir as workdir_lib

load_config = config_lib.load_config
errors.spell_settings(modes.flag)


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-compatible dict of `config` (tuples become lists).

  Args:
    config: the experiment config.

  Returns:
    The config as plain JSON values.
  """
  return json.loads(config.to_json_best_effort())


def workdir_for(root: str, config: ml_collections.ConfigDict) -> str:
  """A workdir under `root` named for a config: the same config always gets the same one.

  For notebooks and scripts that run several configs: each lands in its own folder
  (and resumes there) instead of being refused by a folder holding another one.

  Args:
    root: the parent folder.
    config: the experiment config.

  Returns:
    `root/<mode>_<dataset>_<first 10 hex digits of the config's SHA-256>`.
  """
  text = json.dumps(config_to_dict(config), sort_keys=True)
  digest = hashlib.sha256(text.encode()).hexdigest()[:10]
  return os.path.join(root, f'{config.mode}_{config.data.dataset}_{digest}')


def claim(workdir: str, config: ml_collections.ConfigDict, *,
          inputs: dict[str, str] | None = None,
          devices: dict[str, int] | None = None) -> bool:
  """Makes `workdir` belong to the experiment `config` describes (`workdir.claim`).

  experiment.json records the fields its mode reads; a rerun may change what the mode's
  `resume_rules` allow, a field the record lacks (an older lth_jax) counting as its
  default.

  Args:
    workdir: the experiment's directory.
    config: the experiment config.
    inputs: config field -> fingerprint of the file it names.
    devices: the device counts its runs train on (see `workdir.claim`).

  Returns:
    True for a resume, False for a new experiment.

  Raises:
    WorkdirError: the workdir holds another experiment, or ran on other devices.
  """
  mode = modes.get(config.mode)
  sections = mode.sections(config_lib.COMMON_FIELDS)
  record = {k: v for k, v in config_to_dict(config).items() if k in sections}
  defaults = config_lib.base_config()
  defaults.data.pipeline = 'host'  # what workdirs recorded before the field existed ran
  return workdir_lib.claim(workdir, record, rules=mode.resume_rules(),
                           defaults=config_to_dict(defaults), inputs=inputs, devices=devices)


def _datasets(experiment: specs.Experiment) -> list[str]:
  """Every dataset the experiment reads: the mode's, and those θ_p's source reads."""
  return list(dict.fromkeys(experiment.datasets + experiment.pretrained.datasets))


def _check_data_dir(experiment: specs.Experiment, names: list[str]) -> None:
  """Refuses a `data.data_dir` that no dataset of the experiment reads.

  Raises:
    ConfigError: `data.data_dir` is set and every dataset ships with lth_jax.
  """
  data_dir = experiment.data.data_dir
  if data_dir and all(data.sources.get(data.get_info(n).source).shipped for n in names):
    raise errors.ConfigError(
        f'config.data.data_dir={data_dir!r} is not used: every dataset this experiment '
        f'reads ({", ".join(names)}) ships with lth_jax; remove it.')


def _load_inputs(experiment: specs.Experiment, mode: modes.Mode,
                 names: list[str]) -> dict[str, str]:
  """Finds and loads every input before the workdir is claimed.

  Returns:
    Fingerprints of the input files (see `lth_jax.runtime.workdir.claim`).

  Raises:
    ConfigError, CheckpointError, DatasetNotFoundError: naming what is missing or wrong.
  """
  for name in names:
    task, _ = wiring.task_and_data(experiment.data, name)
    data.check_available(name, experiment.data.data_dir, task.labels)
  inputs = dict(sources.get(experiment.pretrained.source).load(
      experiment.pretrained, lambda: mode.start_model(experiment))) if mode.own_theta_p else {}
  inputs.update(mode.load_inputs(experiment) or {})
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
  # Before the specs: they hold the choice (and the record below, and paper mode's
  # upstream experiments, whose configs copy it).
  wiring.resolve_pipeline(config)
  experiment = specs.build(config)  # nothing below reads the config but the claim's record
  names = _datasets(experiment)
  _check_data_dir(experiment, names)
  wiring.check_pipeline(experiment, names)
  mesh = wiring.mesh_for(experiment)
  wiring.scheduler(experiment, mesh)  # a bad devices_per_run stops before the claim
  inputs = _load_inputs(experiment, mode, names)
  # Runs side by side train on devices_per_run devices each, the others on the mesh.
  devices = {'mesh': mesh.size, 'per_run': experiment.devices_per_run or mesh.size}
  resumed = claim(workdir, config, inputs=inputs, devices=devices)
  console.say(f'{"Resuming" if resumed else "Starting"} {experiment.mode} in {workdir} on '
              f'{mesh.size} {mesh.devices.flat[0].platform} device(s) and '
              f'{jax.process_count()} process(es).')
  try:
    return mode.run(experiment, workdir, mesh)
  except errors.DivergenceError as e:
    e.within(f'mode {experiment.mode}')
    e.half_precision = experiment.model.dtype == jnp.bfloat16
    e.moved_to = workdir_lib.record_divergence(workdir, e)
    raise


__all__ = ['claim', 'config_to_dict', 'load_config', 'run', 'workdir_for']
