"""Analysis of the IMP runs found in experiment workdirs (what `lth_jax.analyze` runs).

A run is any folder holding `round_XX/mask` (see `lth_jax.runtime.paths`), found at any depth:
e.g. DIR/imp/round_03/mask and DIR/random/round_03/mask are the runs 'imp' and
'random' of DIR. Each round's `round.json` gives its sparsity and test metric; a round
without one (the next mask of a finished run, not trained yet) is still a ticket.

Runs are compared at equal sparsity (levels grouped within a tolerance): the IoU of
every pair of runs at every shared level, and the full structural report of the
tickets at one focus level.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from lth_jax import masks as masks_lib
from lth_jax.analysis import report, structure
from lth_jax.errors import setting
from lth_jax.lottery import result_files, results
from lth_jax.metrics.headline import Metric
from lth_jax.runtime import files, paths

ANALYSIS_DIR = paths.ANALYSIS_DIR


def _labels(workdirs: Sequence[str]) -> list[str]:
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return names if len(set(names)) == len(names) else [os.path.normpath(w) for w in workdirs]


def discover_runs(workdirs: Sequence[str]) -> dict[str, dict[int, str]]:
  """The IMP runs under some workdirs.

  Args:
    workdirs: experiment folders. A run is named by its path relative to its
      workdir ('imp'), prefixed by the workdir's name when there are several
      ('DIR2/imp'); a workdir that is itself a run is named by its name.

  Returns:
    {run name: {round index: round folder}}, runs and rounds sorted.

  Raises:
    FileNotFoundError: a workdir holds no run.
  """
  runs: dict[str, dict[int, str]] = {}
  for workdir, label in zip(workdirs, _labels(workdirs)):
    found = sorted(glob.glob(paths.round_masks_glob(workdir), recursive=True))
    found = [os.path.dirname(p) for p in found
             if paths.round_index(os.path.dirname(p)) is not None]
    if not found:
      raise FileNotFoundError(
          f'No IMP round under {workdir} (looked for **/round_XX/mask); pass the workdir '
          f'of an experiment that has run at least one round.')
    for round_dir in found:
      run_dir = os.path.dirname(round_dir)
      rel = os.path.relpath(run_dir, workdir)
      if rel == '.':
        name = label
      else:
        name = f'{label}/{rel}' if len(workdirs) > 1 else rel
      runs.setdefault(name, {})[paths.round_index(round_dir)] = round_dir
  return {name: dict(sorted(rounds.items())) for name, rounds in sorted(runs.items())}


def round_record(round_dir: str) -> dict[str, Any] | None:
  """The round's `round.json` (written by `lth_jax.lottery.rounds` when the round finished).

  Args:
    round_dir: a round's folder.

  Returns:
    The record, or None when the round has not finished.

  Raises:
    WorkdirError: the record cannot be read (a crash or a full disk cut it short).
  """
  return files.read_json(paths.round_record(round_dir), fix=(
      'Rerun the command of the experiment in its workdir: the round is recorded again from '
      'its checkpoints.'))


def _ticket_name(run: str, k: int, keys: Sequence[tuple[str, int]]) -> str:
  """The run's name, with the round when the run has several rounds on one level."""
  return run if sum(r == run for r, _ in keys) == 1 else f'{run}/{paths.round_name(k)}'


def _load(round_dir: str) -> Any:
  return masks_lib.load(paths.mask_dir(round_dir))


def rounds_left_out(run_dir: str, num_rounds: int) -> str:
  """Says which trained rounds of an IMP run a rerun with fewer rounds leaves out.

  A rerun with a smaller `imp.num_rounds` tables rounds 0 to num_rounds - 1 only; the
  later rounds stay on disk, and a rerun with more rounds tables them again.

  Args:
    run_dir: an IMP run folder (round_XX/ inside).
    num_rounds: the rounds the rerun tables.

  Returns:
    '' when no round at or beyond `num_rounds` has a round.json, else a line naming them.
  """
  names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
  beyond = sorted(k for name, k in zip(names, map(paths.round_index, names))
                  if k is not None and k >= num_rounds
                  and round_record(os.path.join(run_dir, name)) is not None)
  if not beyond:
    return ''
  one = len(beyond) == 1
  which = (f'round {beyond[0]} was trained before and stays' if one else
           f'rounds {", ".join(map(str, beyond))} were trained before and stay')
  return (f'{run_dir}: results.csv holds the rounds below imp.num_rounds={num_rounds} only; '
          f'{which} on disk ({setting(f"imp.num_rounds={beyond[-1] + 1}")} tables '
          f'{"it" if one else "them"} again).')


def metric_of(record: Mapping[str, Any]) -> str:
  """The headline metric a round record is named by ('accuracy' for test_accuracy)."""
  return next(k[5:] for k in record if k.startswith('test_') and not k.endswith('_std'))


def _runs_section(out_dir: str, runs: dict[str, dict[int, str]],
                  sparsity: dict[tuple[str, int], float],
                  records: dict[tuple[str, int], dict[str, Any] | None],
                  metric: Metric) -> list[str]:
  rows = []
  for (run, k), value in sparsity.items():
    record = records[(run, k)] or {}
    std = record.get(f'{metric.test}_std')
    rows.append([run, k, report.percent(value), report.percent(record.get(metric.test)),
                 results.ONE_RUN if record and std is None else report.percent(std)])
  lines = ['## Runs', f'Every round found (test {metric.label} from round.json; "-" for a '
           f'mask not trained yet, "{results.ONE_RUN}" for the std of a single seed).',
           report.markdown_table(['run', 'round', 'sparsity %', f'test {metric.label} %',
                                  'std %'], rows)]
  curves = {run: [r for k in rounds if (r := records[(run, k)]) is not None]
            for run, rounds in runs.items()}
  curves = {run: rows for run, rows in curves.items() if rows}
  if curves:
    path = result_files.plot_vs_sparsity(
        os.path.join(out_dir, f'{metric.file}.png'), curves,
        title=f'Test {metric.label} of every round', metric=metric)
    lines.append(report.image_link(path, f'{metric.label} against sparsity'))
  return lines


def analyze_workdirs(workdirs: Sequence[str], out_dir: str | None = None, *,
                     sparsity: float | None = None, heatmap_layer: str | None = None,
                     policy: masks_lib.Policy = None, tolerance: float = 5e-4,
                     perturbation: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]
                     | None = None,
                     connectivity: Mapping[str, Mapping[str, Any]] | None = None) -> str:
  """Compares the IMP runs of some workdirs and writes the report.

  Args:
    workdirs: experiment folders; the first is the main one.
    out_dir: where the report goes; default `<workdirs[0]>/analysis`.
    sparsity: the focus level for the detailed sections: the level nearest this value.
      Default: the highest level that the most runs share.
    heatmap_layer: the layer drawn kernel by kernel (see `report.write_report`).
    policy: which leaves are prunable.
    tolerance: sparsities closer than this are one level.
    perturbation: sweeps to report (see `lth_jax.experiments.sensitivity.run`).
    connectivity: linear mode connectivity results to report.

  Returns:
    The report's path.
  """
  out_dir = out_dir or os.path.join(workdirs[0], ANALYSIS_DIR)
  runs = discover_runs(workdirs)
  records = {(run, k): round_record(d) for run, rounds in runs.items()
             for k, d in rounds.items()}
  values = {(run, k): record['sparsity'] if record else masks_lib.sparsity(
      _load(runs[run][k]), policy) for (run, k), record in records.items()}
  levels = structure.group_by_sparsity(values, tolerance)
  finished = [r for r in records.values() if r is not None]
  name = metric_of(finished[0]) if finished else 'accuracy'
  metric = Metric(name, name, name)
  # Masks saved for a next round that never ran have no accuracy: the overlap curve and,
  # by default, the focus level are about trained tickets.
  trained = [(level, [key for key in keys if records[key] is not None])
             for level, keys in levels]
  trained = [(level, keys) for level, keys in trained if keys]
  curve = []
  for level, keys in trained:
    if level == 0 or len(keys) < 2:
      continue
    logging.info('Comparing %d runs at sparsity %.4f.', len(keys), level)
    tickets = {_ticket_name(run, k, keys): _load(runs[run][k]) for run, k in keys}
    names, iou, expected = structure.overlap_matrix(tickets, policy)
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
      curve.append({'pair': f'{a} vs {b}', 'sparsity': level, 'iou': float(iou[i, j]),
                    'expected_iou': float(expected[i, j])})
  if sparsity is None:
    level, keys = max(trained or levels, key=lambda g: (len(g[1]), g[0]))
    why = ('the highest sparsity trained by the most runs' if trained else
           'the highest level shared by the most runs; no round has been trained yet')
  else:
    level, keys = min(levels, key=lambda g: abs(g[0] - sparsity))
    why = f'the level nearest the requested {100 * sparsity:.2f}%'
  os.makedirs(out_dir, exist_ok=True)
  title = f'Ticket analysis: the tickets at {100 * level:.2f}% sparsity ({why})'
  intro = [f'The detailed sections compare one ticket per run at that level (choose another '
           f'with --sparsity). Runs from {", ".join(workdirs)}.',
           *_runs_section(out_dir, runs, values, records, metric)]
  tickets = {_ticket_name(run, k, keys): _load(runs[run][k]) for run, k in keys}
  values_at = {_ticket_name(run, k, keys): records[(run, k)][metric.test]
               for run, k in keys if records[(run, k)] is not None}
  return report.write_report(out_dir, tickets, title=title, intro=intro,
                             metric=values_at, metric_name=metric.label, similarity=curve,
                             perturbation=perturbation, connectivity=connectivity,
                             heatmap_layer=heatmap_layer, policy=policy)
