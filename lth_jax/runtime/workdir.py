"""Ownership of a workdir by one experiment, so that reruns resume and never mix runs.

The first run writes `experiment.json` (its record: the experiment's settings as plain
JSON) once every input has been found and loaded; a run that stopped on a missing
dataset or a bad checkpoint leaves nothing behind. A later run resumes when its record
equals the recorded one up to the changes its `ResumeRules` allow, which the layer that
knows the settings gives (`lth_jax.experiments.modes.Mode.resume_rules`):
  - neutral fields, which cannot change a result (paths to the same inputs: a field of
    `inputs` whose file has the recorded fingerprint is one too);
  - growing fields, whose change adds work and keeps what is recorded (more rounds);
  - fields on which no run in the workdir depends yet (a transfer task with no runs,
    dropped, added or given another recipe);
  - after a run diverged (`diverged.json`), new recipe fields, as long as no training
    that used the recorded recipe has started.
Anything else is refused with the differing fields named. A field missing from the
recorded settings (written by an older lth_jax) counts as its default.

Beside the settings, `experiment.json` records its runs' environment: the number of
devices they train on (the mesh, and each run's devices when runs go side by side),
which changes the numbers, so a resume on another count is refused (a workdir written
before it was recorded resumes as before); and the jax, jaxlib and flax versions and the
machine (backend, device kind; on CPU the processor's model and flags) it was started on,
which may change them too (XLA compiles for the machine, and a run's floats may round
otherwise on another), so a resume under other versions or on another machine warns.

Files:
    experiment.json   the experiment's settings and its environment (chief process only)
    inputs.json       fingerprints of the input files (the checkpoint's SHA-256)
    diverged.json     one entry per diverged run; its checkpoints go to diverged/<n>/
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib
import json
import os
import platform
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from absl import logging
from flax import traverse_util

from lth_jax.runtime import files, paths, sharding
from lth_jax.errors import DivergenceError, WorkdirError

EXPERIMENT_FILE = paths.EXPERIMENT_FILE
INPUTS_FILE = paths.INPUTS_FILE
DIVERGED_FILE = paths.DIVERGED_FILE
DIVERGED_DIR = paths.DIVERGED_DIR
# The key of experiment.json beside the settings: what the runs ran on.
ENVIRONMENT = 'environment'
# The packages whose versions are recorded (their numerics may change between versions).
VERSIONED_PACKAGES = ('jax', 'jaxlib', 'flax')

# A growing field's rule: (old, new) flattened records -> whether the change keeps every
# recorded result (e.g. more rounds).
Growth = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]
# A change's footprint: (field, old, new flattened records) -> glob patterns (relative to
# the workdir) of the runs that depend on the field's recorded value, or None where the
# rule does not apply to that field; the field may change while none of them exists.
Footprint = Callable[[str, Mapping[str, Any], Mapping[str, Any]], Sequence[str] | None]


@dataclasses.dataclass(frozen=True)
class ResumeRules:
  """What a rerun may change of a recorded experiment, in the words of its settings.

  The runtime knows no setting: the experiment layer names them (each mode its own).

  Attributes:
    neutral: fields ('.'-joined paths of the record) whose value never changes a result.
    growing: field -> whether a change of it (old, new: the flattened records) keeps
      every recorded result, e.g. more rounds or more seeds.
    unstarted: field prefix -> the footprint of a change of a field under it (see
      `Footprint`): e.g. the runs of the transfer tasks a new task list drops.
    recipe_work: field prefix -> glob patterns (relative to the workdir) of the training
      folders that used it: after a divergence such a field may change while none of
      them exists, so that no results mix two recipes.
    devices_fix: the device counts the workdir was trained on -> the settings that run
      on them again, for the message refusing another count.
    rerun_fix: the path of experiment.json -> how to rerun with the recorded settings.
  """
  neutral: tuple[str, ...] = ()
  growing: Mapping[str, Growth] = dataclasses.field(default_factory=dict)
  unstarted: Mapping[str, Footprint] = dataclasses.field(default_factory=dict)
  recipe_work: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
  devices_fix: Callable[[Mapping[str, int]], str] = lambda devices: 'the same devices'
  rerun_fix: Callable[[str], str] = lambda path: f'the settings recorded in {path}'


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(dict(tree), sep='.')


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


def machine() -> dict[str, str]:
  """What this process computes on: {'backend', 'device_kind'} and, on CPU, 'cpu'.

  On CPU, XLA compiles for the processor's instruction set, so 'cpu' names its model and a
  digest of its feature flags (cloud machines of one name may differ in them); on an
  accelerator the host CPU is left out.
  """
  out = {'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind}
  if out['backend'] == 'cpu':
    out['cpu'] = _cpu()
  return out


def _cpu() -> str:
  fields: dict[str, str] = {}
  try:  # Linux; the first processor's lines (x86: 'model name', Arm: implementer and part)
    with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
      for line in f:
        key, _, value = line.partition(':')
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  arm = ' '.join(fields[k] for k in ('CPU implementer', 'CPU part') if k in fields)
  name = fields.get('model name') or arm or platform.processor() or platform.machine()
  flags = fields.get('flags') or fields.get('Features')
  return name + (f' (flags {hashlib.sha256(flags.encode()).hexdigest()[:8]})' if flags else '')


def read_experiment(workdir: str) -> dict[str, Any] | None:
  """The record of a workdir's `experiment.json`: its settings and environment.

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


def _check_environment(workdir: str, recorded: Mapping[str, Any], here: Mapping[str, Any],
                       devices: Mapping[str, int] | None, rules: ResumeRules) -> None:
  """Refuses a resume on another device count; warns under other versions or machines
  than `here`'s (this process's 'versions' and 'machine')."""
  old = recorded.get('devices')
  if devices is not None and old is not None and old != dict(devices):
    raise WorkdirError(
        f'{workdir} was trained on {_shown(old)} and this run would train on '
        f'{_shown(devices)}: results depend on the device count, and resuming on another '
        f'one would mix runs of both. Resume it on {_shown(old)} ({rules.devices_fix(old)}), '
        'or use a new --workdir.')
  shown = lambda items: ', '.join(f'{k} {v}' for k, v in sorted(items.items()))
  for key, between in (('versions', 'versions'), ('machine', 'machines')):
    # A workdir written before the key was recorded says nothing about it.
    if recorded.get(key) not in (None, here[key]):
      logging.warning(
          '%s was started under %s and this run uses %s: results may differ between %s, '
          'so the runs added now may not match the recorded ones exactly.', workdir,
          shown(recorded[key]), shown(here[key]), between)


def _existing(workdir: str, patterns: Sequence[str]) -> list[str]:
  """The folders matching `patterns` (relative to the workdir), outside diverged/."""
  return sorted({os.path.relpath(p, workdir) for pattern in patterns
                 for p in glob.glob(os.path.join(workdir, pattern), recursive=True)
                 if not os.path.relpath(p, workdir).startswith(DIVERGED_DIR + os.sep)})


def _shown_runs(runs: Sequence[str]) -> str:
  return ', '.join(runs[:3]) + (', ...' if len(runs) > 3 else '')


def _recipe_change_refusal(workdir: str, fields: Sequence[str],
                           recipe_work: Mapping[str, Sequence[str]]) -> str | None:
  """Why a recipe change after a divergence is refused, or None when it is allowed."""
  if not os.path.exists(paths.diverged_record(workdir)):
    return ('a new recipe is accepted in a workdir only after a run in it diverged, for '
            'the training that has not started yet')
  started = _existing(workdir, [pattern for field in fields
                                for prefix, patterns in recipe_work.items()
                                if field.startswith(prefix) for pattern in patterns])
  if started:
    return (f'training with the recorded recipe has already run here '
            f'({_shown_runs(started)}), so results would mix two recipes')
  return None


def _footprint(field: str, old: Mapping[str, Any], new: Mapping[str, Any],
               rules: ResumeRules) -> Sequence[str] | None:
  """The glob patterns of the runs that depend on `field`, when a rule covers it."""
  for prefix, footprint in rules.unstarted.items():
    if field == prefix or field.startswith(prefix + '.'):
      patterns = footprint(field, old, new)
      if patterns is not None:
        return patterns
  return None


def _refusals(workdir: str, old: Mapping[str, Any], new: Mapping[str, Any],
              rules: ResumeRules, same_inputs: set[str]) -> list[str]:
  """'field: old -> new' of every change the rules do not allow (flattened records).

  A field the new record lacks is a change too under the footprint prefixes, whose
  sections are open mappings (a paper task's recipe may go); elsewhere it is a field
  an older lth_jax wrote."""
  refused, recipe = [], []
  gone = {field for field in old
          if field not in new and _footprint(field, old, new, rules) is not None}
  for field in sorted({*new, *gone}):
    value = new.get(field)
    if old.get(field) == value or field in rules.neutral or field in same_inputs:
      continue
    footprint = _footprint(field, old, new, rules)
    if footprint is not None:
      runs = _existing(workdir, footprint)
      if runs:
        refused.append(f'{field}: {old.get(field)!r} -> {value!r} (runs here depend on '
                       f'its recorded value: {_shown_runs(runs)})')
    elif field.startswith(tuple(rules.recipe_work)):
      recipe.append(field)
    elif field not in rules.growing or not rules.growing[field](old, new):
      refused.append(f'{field}: {old.get(field)!r} -> {value!r}')
  why = recipe and _recipe_change_refusal(workdir, recipe, rules.recipe_work)
  if why:
    refused += [f'{f}: {old.get(f)!r} -> {new.get(f)!r}' for f in recipe] + [f'({why})']
  return refused


def claim(workdir: str, record: Mapping[str, Any], *, rules: ResumeRules = ResumeRules(),
          defaults: Mapping[str, Any] | None = None,
          inputs: Mapping[str, str] | None = None,
          devices: Mapping[str, int] | None = None) -> bool:
  """Makes `workdir` belong to the experiment `record` describes.

  Call it once every input has been found and loaded: a refused or failed start must
  leave no record behind.

  Args:
    workdir: the experiment's directory (created if needed).
    record: the experiment's settings as JSON values (nested dicts), written to
      experiment.json and compared with what it holds.
    rules: what a rerun may change (see `ResumeRules`).
    defaults: the settings' defaults, nested like `record`; a field missing from the
      recorded settings counts as its default here.
    inputs: field -> fingerprint of the file it names (e.g. {'pretrained.path':
      sha256}); a changed path with the recorded fingerprint is the same input.
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
  current = json.loads(json.dumps(dict(record)))  # JSON values only, as read back
  recorded = read_experiment(workdir)
  resumed = recorded is not None
  here = {'versions': versions(), 'machine': machine()}
  environment = dict(here)
  if resumed:
    # Fingerprints are rewritten below: one that cannot be read counts as missing.
    recorded_inputs = files.read_json(os.path.join(workdir, INPUTS_FILE), {})
    environment = dict(recorded.pop(ENVIRONMENT, None) or here)
    old = {**_flatten(defaults or {}), **_flatten(recorded)}
    same_inputs = {f for f, fingerprint in inputs.items()
                   if recorded_inputs.get(f) == fingerprint}
    refused = _refusals(workdir, old, _flatten(current), rules, same_inputs)
    if refused:
      raise WorkdirError(
          f'{workdir} holds another experiment (config differs in '
          f'{"; ".join(refused[:8])}). Use a new --workdir, or resume it with its recorded '
          f'config: {rules.rerun_fix(path)}')
    _check_environment(workdir, environment, here, devices, rules)
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
  log = paths.diverged_record(workdir)
  entries = files.read_json(log, [], fix=(
      f'It lists the runs that diverged, whose checkpoints are in {DIVERGED_DIR}/<n>/: '
      f'restore it, or delete it and move {DIVERGED_DIR}/ aside, then rerun.'))
  run = os.path.abspath(error.checkpoint_dir)
  target = os.path.join(paths.diverged_dir(os.path.abspath(workdir), len(entries)),
                        os.path.relpath(run, os.path.abspath(workdir)))
  if sharding.is_chief():
    for source, dest in ((run, target),
                         (paths.tensorboard_dir(run), paths.tensorboard_dir(target))):
      if os.path.exists(source):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.move(source, dest)
    entries.append({'error': str(error), 'moved_to': os.path.relpath(target, workdir),
                    'epoch': error.epoch, 'step': error.step,
                    'learning_rate': error.learning_rate})
    files.write_json(log, entries)
  return target
