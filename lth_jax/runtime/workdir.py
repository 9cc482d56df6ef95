"""Ownership of a workdir by one experiment, so that reruns resume and never mix runs.

The first run writes `experiment.json` (the config) once every input has been found
and loaded; a run that stopped on a missing dataset or a bad checkpoint leaves nothing
behind. A later run resumes when its config equals the recorded one up to changes that
cannot change a result:
  - paths to the same inputs (`data.data_dir`; `pretrained.path` when the file has the
    recorded SHA-256), the evaluation batch size, the checkpoint cadence;
  - the device fields (`num_devices`, `devices_per_run`) as long as runs train on the
    recorded number of devices (below);
  - more rounds (`imp.num_rounds`) or more seeds (`num_seeds`, `dense_seeds`): the new
    ones run and the old ones are kept;
  - after a run diverged (`diverged.json`), a new recipe (`optim.*`, `pretrain.optim.*`,
    `model.half_precision`), as long as no training that used the recorded recipe has
    started.
Anything else is refused with the differing fields named. A field missing from the
recorded config (written by an older lth_jax) counts as its default.

Beside the config, `experiment.json` records its runs' environment: the number of
devices they train on (the mesh, and each run's devices when runs go side by side),
which changes the numbers, so a resume on another count is refused (a workdir written
before it was recorded resumes as before); and the jax, jaxlib and flax versions it was
started under, which may change them too, so a resume under others warns.

Files:
    experiment.json   the config and its environment (chief process only)
    inputs.json       fingerprints of the input files (the checkpoint's SHA-256)
    diverged.json     one entry per diverged run; its checkpoints go to diverged/<n>/
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import logging
from flax import traverse_util

from lth_jax.runtime import files, sharding
from lth_jax.errors import DivergenceError, WorkdirError

EXPERIMENT_FILE = 'experiment.json'
INPUTS_FILE = 'inputs.json'
DIVERGED_FILE = 'diverged.json'
DIVERGED_DIR = 'diverged'
# The key of experiment.json beside the config sections: what the runs ran on.
ENVIRONMENT = 'environment'
# The packages whose versions are recorded (their numerics may change between versions).
VERSIONED_PACKAGES = ('jax', 'jaxlib', 'flax')

# Fields whose value never changes a result. The device fields are among them because
# what does change results, the number of devices runs train on, is compared on its own
# (`claim(devices=...)`): `num_devices=0` and `num_devices=8` on 8 devices are the same.
NEUTRAL_FIELDS = ('data.data_dir', 'data.eval_batch_size', 'num_devices', 'devices_per_run',
                  'checkpoint_every_steps')
# Fields that may change between runs: more rounds extend a run (fewer report fewer).
RESUMABLE_FIELDS = ('imp.num_rounds',)
# The recipe fields that fixing a diverged run may change.
RECIPE_PREFIXES = ('optim.', 'pretrain.optim.', 'model.half_precision')


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(dict(tree), sep='.')


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-compatible dict of `config` (tuples become lists).

  Args:
    config: the experiment config.

  Returns:
    The config as plain JSON values.
  """
  return json.loads(config.to_json_best_effort())


def for_config(root: str, config: ml_collections.ConfigDict) -> str:
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


def file_sha256(path: str) -> str:
  """The SHA-256 of a file's bytes, read in chunks.

  Args:
    path: the file.

  Returns:
    The hex digest.
  """
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      digest.update(chunk)
  return digest.hexdigest()


def versions() -> dict[str, str]:
  """The installed versions of `VERSIONED_PACKAGES`, e.g. {'jax': '0.10.2', ...}."""
  return {name: importlib.import_module(name).__version__ for name in VERSIONED_PACKAGES}


def read_experiment(workdir: str) -> dict[str, Any] | None:
  """The record of a workdir's `experiment.json`: its config sections and environment.

  Args:
    workdir: the experiment's directory.

  Returns:
    The parsed record, or None when the workdir holds no experiment.

  Raises:
    WorkdirError: the file cannot be read (cut short by a crash or a full disk).
  """
  path = os.path.join(workdir, EXPERIMENT_FILE)
  return files.read_json(path, fix=(
      'It records the config of the experiment in this workdir: restore it, or delete it '
      'and rerun the command the workdir was started with (finished work is kept and '
      'resumed); or use a new --workdir.'))


def _shown(devices: Mapping[str, int]) -> str:
  mesh, per_run = devices['mesh'], devices['per_run']
  return f'{mesh} device(s)' + (f' ({per_run} a run, side by side)' if per_run != mesh else '')


def _check_environment(workdir: str, recorded: Mapping[str, Any],
                       devices: Mapping[str, int] | None) -> None:
  """Refuses a resume on another device count; warns under other package versions."""
  old = recorded.get('devices')
  if devices is not None and old is not None and old != dict(devices):
    flags = f'--config.num_devices={old["mesh"]}' + (
        f' --config.devices_per_run={old["per_run"]}' if old['per_run'] != old['mesh'] else '')
    raise WorkdirError(
        f'{workdir} was trained on {_shown(old)} and this run would train on '
        f'{_shown(devices)}: results depend on the device count, and resuming on another '
        f'one would mix runs of both. Resume it on {_shown(old)} ({flags}), or use a new '
        '--workdir.')
  shown = lambda packages: ', '.join(f'{k} {v}' for k, v in sorted(packages.items()))
  current = versions()
  if recorded.get('versions') not in (None, current):
    logging.warning(
        '%s was started under %s and this run uses %s: results may differ between '
        'versions, so the runs added now may not match the recorded ones exactly.',
        workdir, shown(recorded['versions']), shown(current))


def _dense_seeds(config: Mapping[str, Any]) -> int:
  return config.get('dense_seeds') or config.get('num_seeds') or 0


def _allowed(field: str, old: Any, new: Any, config: Mapping[str, Any],
             recorded: Mapping[str, Any], same_inputs: set[str]) -> bool:
  """Whether changing `field` from `old` to `new` keeps every recorded result valid."""
  if field in NEUTRAL_FIELDS or field in RESUMABLE_FIELDS or field in same_inputs:
    return True
  if field in ('num_seeds', 'dense_seeds'):
    # More seeds add runs; the dense round's seeds may only grow too.
    return (_dense_seeds(config) >= _dense_seeds(recorded)
            and (field == 'dense_seeds' or new >= old))
  return False


def _recipe_change_refusal(workdir: str, fields: Sequence[str],
                           recipe_work: Mapping[str, Sequence[str]]) -> str | None:
  """Why a recipe change after a divergence is refused, or None when it is allowed."""
  if not os.path.exists(os.path.join(workdir, DIVERGED_FILE)):
    return ('a new recipe is accepted in a workdir only after a run in it diverged, for '
            'the training that has not started yet')
  started = []
  for field in fields:
    for prefix, patterns in recipe_work.items():
      if field.startswith(prefix):
        started += [p for pattern in patterns
                    for p in glob.glob(os.path.join(workdir, pattern), recursive=True)
                    if not os.path.relpath(p, workdir).startswith(DIVERGED_DIR + os.sep)]
  if started:
    shown = ', '.join(os.path.relpath(p, workdir) for p in sorted(set(started))[:3])
    return (f'training with the recorded recipe has already run here ({shown}, ...), so '
            'results would mix two recipes')
  return None


def claim(workdir: str, config: ml_collections.ConfigDict, *,
          defaults: ml_collections.ConfigDict | None = None,
          inputs: Mapping[str, str] | None = None,
          recipe_work: Mapping[str, Sequence[str]] | None = None,
          sections: Sequence[str] | None = None,
          devices: Mapping[str, int] | None = None) -> bool:
  """Makes `workdir` belong to the experiment described by `config`.

  Call it once every input has been found and loaded: a refused or failed start must
  leave no record behind.

  Args:
    workdir: the experiment's directory (created if needed).
    config: the experiment config.
    defaults: the config schema's defaults; a field missing from the recorded config
      counts as its default here.
    inputs: config field -> fingerprint of the file it names (e.g.
      {'pretrained.path': sha256}); a changed path with the recorded fingerprint is the
      same input.
    recipe_work: recipe field prefix (see RECIPE_PREFIXES) -> glob patterns, relative
      to the workdir, of the training folders that used it; a recipe change after a
      divergence is refused while any of them exists.
    sections: the top-level config fields the experiment reads; only these are
      recorded and compared (None: all).
    devices: how many devices the runs train on: {'mesh': the experiment's mesh,
      'per_run': each run's devices (the mesh's size unless runs go side by side)};
      recorded, and a resume on other counts is refused (None: not recorded).

  Returns:
    True when the workdir already held this experiment (a resume), False when new.

  Raises:
    WorkdirError: the workdir holds a different experiment, naming the fields; it was
      trained on another number of devices; or its experiment.json cannot be read.
  """
  inputs = dict(inputs or {})
  path = os.path.join(workdir, EXPERIMENT_FILE)
  current = config_to_dict(config)
  if sections is not None:
    current = {k: v for k, v in current.items() if k in sections}
  recorded = read_experiment(workdir)
  resumed = recorded is not None
  environment = {'versions': versions()}
  if resumed:
    # Fingerprints are rewritten below: one that cannot be read counts as missing.
    recorded_inputs = files.read_json(os.path.join(workdir, INPUTS_FILE), {})
    environment = dict(recorded.pop(ENVIRONMENT, None) or environment)
    old = {**_flatten(config_to_dict(defaults)), **_flatten(recorded)} if defaults else (
        _flatten(recorded))
    if sections is not None:
      old = {k: v for k, v in old.items() if k.split('.')[0] in sections}
    new = _flatten(current)
    same_inputs = {f for f, fingerprint in inputs.items()
                   if recorded_inputs.get(f) == fingerprint}
    refused, recipe = [], []
    for field in sorted(new):
      if old.get(field) == new[field]:
        continue
      if field.startswith(RECIPE_PREFIXES):
        recipe.append(field)
      elif not _allowed(field, old.get(field), new[field], new, old, same_inputs):
        refused.append(f'{field}: {old.get(field)!r} -> {new[field]!r}')
    if recipe:
      why = _recipe_change_refusal(workdir, recipe, recipe_work or {})
      if why:
        refused += [f'{f}: {old.get(f)!r} -> {new[f]!r}' for f in recipe]
        refused.append(f'({why})')
    if refused:
      raise WorkdirError(
          f'{workdir} holds another experiment (config differs in '
          f'{"; ".join(refused[:8])}). Use a new --workdir, or resume it with its recorded '
          f'config: --config={path}')
    _check_environment(workdir, environment, devices)
  if devices is not None:
    environment['devices'] = dict(devices)
  if sharding.is_chief():
    os.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, INPUTS_FILE), inputs)
    files.atomic_write(path, lambda f: json.dump({**current, ENVIRONMENT: environment}, f,
                                                 indent=1, sort_keys=True))
  sharding.sync(f'claim {workdir}')
  return resumed


def record_divergence(workdir: str, error: DivergenceError) -> str:
  """Moves a diverged run's checkpoints aside and records the divergence.

  The run's folder (and its TensorBoard folder) goes to `diverged/<n>/` under the same
  relative path, so a rerun starts it again from scratch, with the same recipe or with a
  fixed one (see `claim`).

  Args:
    workdir: the experiment's directory.
    error: the divergence (its checkpoint_dir lies inside the workdir).

  Returns:
    Where the run's checkpoints now are.
  """
  log = os.path.join(workdir, DIVERGED_FILE)
  entries = files.read_json(log, [], fix=(
      f'It lists the runs that diverged, whose checkpoints are in {DIVERGED_DIR}/<n>/: '
      f'restore it, or delete it and move {DIVERGED_DIR}/ aside, then rerun.'))
  run = os.path.abspath(error.checkpoint_dir)
  target = os.path.join(os.path.abspath(workdir), DIVERGED_DIR, str(len(entries)),
                        os.path.relpath(run, os.path.abspath(workdir)))
  if sharding.is_chief():
    for source, dest in ((run, target), (run + '_tensorboard', target + '_tensorboard')):
      if os.path.exists(source):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.move(source, dest)
    entries.append({'error': str(error), 'moved_to': os.path.relpath(target, workdir),
                    'epoch': error.epoch, 'step': error.step,
                    'learning_rate': error.learning_rate})
    files.write_json(log, entries)
  return target
