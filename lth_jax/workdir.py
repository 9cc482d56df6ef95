"""Ownership of a workdir by one experiment, so that reruns resume and never mix runs.

The first run writes `experiment.json` (the config). A later run with the same config
(up to fields that may grow, such as the number of rounds) resumes; a different config
is refused before any compute, with the differing fields named.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

EXPERIMENT_FILE = 'experiment.json'


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-compatible dict of `config` (tuples become lists).

  Args:
    config: the experiment config.

  Returns:
    The config as plain JSON values.
  """
  return json.loads(config.to_json_best_effort())


def claim(workdir: str, config: ml_collections.ConfigDict,
          may_change: Iterable[str] = ()) -> bool:
  """Makes `workdir` belong to the experiment described by `config`.

  Args:
    workdir: the experiment's directory (created if needed).
    config: the experiment config.
    may_change: dotted config fields that may differ from the recorded experiment
      (e.g. 'imp.num_rounds', to extend a finished run); the record is updated.

  Returns:
    True when the workdir already held this experiment (a resume), False when new.

  Raises:
    ValueError: the workdir holds a different experiment.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, EXPERIMENT_FILE)
  current = config_to_dict(config)
  resumed = os.path.exists(path)
  if resumed:
    with open(path) as f:
      recorded = json.load(f)
    old, new = _flatten(recorded), _flatten(current)
    allowed = set(may_change)
    diff = sorted(k for k in old.keys() | new.keys()
                  if k not in allowed and old.get(k) != new.get(k))
    if diff:
      shown = '; '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in diff[:8])
      raise ValueError(
          f'{workdir} holds another experiment (config differs in {shown}). Use a new '
          f'--workdir, or rerun with the recorded config in {path} to resume it.')
  with open(path + '.tmp', 'w') as f:
    json.dump(current, f, indent=1, sort_keys=True)
  os.replace(path + '.tmp', path)
  return resumed
