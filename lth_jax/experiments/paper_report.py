"""What paper mode writes for one task: its rows, its plot, and its table in the paper's layout.

    text = paper_report.write(workdir, task, task_rows, metric)

results_<task>.csv/.json hold one row per (pre-training or baseline, ticket), and
<metric>_vs_sparsity_<task>.png one curve per pre-training and baseline
(`lth_jax.lottery.result_files`). table_<task>.md (`markdown`) lays the same numbers out as
the paper reads them: a row per sparsity, the dense θ_p first; a column per curve, the
first pre-training's tickets, its random baselines and task-specific tickets (each judged
against that pre-training's dense transfer), then every other pre-training's tickets. A
cell is the test metric's mean ± std over the seeds, in bold where it matches (within one
std of the same pre-training's dense transfer, `lth_jax.lottery.results.mark_matching`);
training from scratch is the line under the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lth_jax.analysis.report import markdown_table
from lth_jax.experiments.paper_transfer import SCRATCH, TASK_SPECIFIC
from lth_jax.lottery import DENSE, result_files, results
from lth_jax.lottery.results import ONE_RUN, Headline
from lth_jax.pruning import RANDOM_BASELINES
from lth_jax.runtime import files, paths

# The console table's columns ('{}': the metric).
COLUMNS = ('task', 'method', 'ticket', 'sparsity', 'test_{}', 'test_{}_std', 'matching')
# The first pre-training's derived curves, in the order the paper's figures draw them,
# and the table's headers: each pre-training's tickets are its θ_p's.
_DERIVED = (*RANDOM_BASELINES, TASK_SPECIFIC)
_HEADERS = {'random_global': 'random global', 'random_layerwise': "random, ticket's layers",
            TASK_SPECIFIC: 'task-specific', 'supervised': 'θ_Sup tickets',
            'simclr': 'θ_SimCLR tickets', 'moco': 'θ_MoCo tickets'}


def _curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
  """method -> its rows, each curve starting at its own dense point."""
  curves: dict[str, list[Mapping[str, Any]]] = {}
  for row in rows:
    curves.setdefault(row['method'], []).append(row)
  dense = {r['pretraining']: r for r in rows if r['ticket'] == DENSE}
  for method in _DERIVED:
    if method in curves:
      curves[method].insert(0, dense[curves[method][0]['pretraining']])
  return curves


def _cell(row: Mapping[str, Any], key: str) -> str:
  """'71.00 ± 1.00' in percent, bold where a sparse row matches ('(one run)' without std)."""
  std = row.get(f'{key}_std')
  text = f'{100 * row[key]:.2f} ' + (ONE_RUN if std is None else f'± {100 * std:.2f}')
  return f'**{text}**' if row.get('matching') and row['ticket'] != DENSE else text


def _seeds(count: int) -> str:
  return f'{count} seed' + ('s' if count != 1 else '')


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
  """(method, header) of each column: the first pre-training's curves, then the others'.

  The first pre-training is the one the baselines and task-specific tickets derive from,
  else the first in the rows (the first of `paper.pretrainings`).
  """
  pretrainings = list(dict.fromkeys(r['pretraining'] for r in rows if r['method'] != SCRATCH))
  first = next((r['pretraining'] for r in rows if r['method'] in _DERIVED), pretrainings[0])
  others = [p for p in pretrainings if p != first]
  present = {r['method'] for r in rows}
  return [(m, _HEADERS.get(m, f'θ_p ({m}) tickets'))
          for m in [first, *(m for m in _DERIVED if m in present), *others]]


def markdown(rows: Sequence[Mapping[str, Any]], metric: Headline) -> str:
  """One task's rows as a markdown table (rows: sparsity; columns: curves), scratch under it.

  Args:
    rows: the task's rows (`paper_transfer.transfer_to_task`), marked matching: one
      'scratch' row, each pre-training's 'dense' row and tickets, the random baselines'
      and the task-specific IMP's rounds.
    metric: the task's headline metric.

  Returns:
    The table, then a line with training from scratch's mean ± std and each of its runs,
    and a line for each θ_p whose dense runs did not train (`results.untrained`).

  Raises:
    ValueError: two rows of one curve fall on one sparsity (naming both tickets), or
      there is no scratch row.
  """
  key = metric.test
  scratch = next((r for r in rows if r['method'] == SCRATCH), None)
  if scratch is None:
    raise ValueError('The rows have no scratch row: the table says what pre-training adds '
                     'over training from scratch.')
  dense_seeds = max(len(r['runs']) for r in rows if r['ticket'] == DENSE)
  seeds = max((len(r['runs']) for r in rows if r['sparsity'] > 0), default=dense_seeds)
  dense_label = f'0% (dense θ_p, {_seeds(dense_seeds)})'
  lines: dict[str, dict[str, Mapping[str, Any]]] = {}
  for row in sorted((r for r in rows if r is not scratch), key=lambda r: r['sparsity']):
    # Every pre-training's dense row is on the first line, in its own column.
    label = (dense_label if row['ticket'] == DENSE
             else f'{result_files.sparsity_label(100 * (1 - row["sparsity"]))}%')
    line = lines.setdefault(label, {})
    if row['method'] in line:
      raise ValueError(f'{line[row["method"]]["ticket"]!r} and {row["ticket"]!r} of '
                       f'{row["method"]} both fall on {label} sparsity, one cell of the '
                       'table.')
    line[row['method']] = row
  columns = _columns(rows)
  table = [[label, *(_cell(line[m], key) if m in line else '' for m, _ in columns)]
           for label, line in lines.items()]
  runs = (' (' + ', '.join(f'{100 * r[key]:.2f}' for r in scratch['runs']) + ')'
          if len(scratch['runs']) > 1 else '')
  # Where a θ_p's dense runs did not train, its bold cells mean nothing: said under the table.
  dense = lines[dense_label]
  smoke = [f'{header.removesuffix(" tickets")}: {note}.' for m, header in columns if m in dense
           and (note := results.untrained([run[key] for run in dense[m]['runs']], metric))]
  return (markdown_table(['sparsity', *(h for _, h in columns)], table)
          + f'\n\nTraining from scratch: {_cell(scratch, key)}{runs}. Test {metric.label} '
          f'at the best validation epoch, mean ± std over {_seeds(seeds)} (the dense '
          f'networks over {dense_seeds}); bold: matching, within one std of the same '
          "pre-training's dense transfer.\n" + ''.join(f'\n{line}\n' for line in smoke))


def write(workdir: str, task: str, rows: Sequence[Mapping[str, Any]],
          metric: Headline) -> str:
  """Writes one task's results_<task>.csv/.json, plot and table_<task>.md in `workdir`.

  Args:
    workdir: the paper experiment's workdir.
    task: the task's name.
    rows: its rows (`paper_transfer.transfer_to_task`), marked matching.
    metric: its headline metric.

  Returns:
    The console text: the rows, where the files are, and the table (or why there is
    none: rows that `markdown` cannot lay out do not stop the run before its results).
  """
  pretrainings = dict.fromkeys(r['pretraining'] for r in rows if r['method'] != SCRATCH)
  text = result_files.write(
      workdir, rows, _curves(rows), [], f'Upstream tickets transferred to {task}',
      [c.format(metric.key) for c in COLUMNS], suffix=f'_{task}', metric=metric,
      labels={p: f'IMP on {p} pre-training, rewind to θ_p' for p in pretrainings})
  try:
    table = markdown(rows, metric)
  except ValueError as e:
    table = f'No table of {task}: {e}\n'
  path = files.atomic_write(paths.paper_table(workdir, task), lambda f: f.write(table))
  return f'{text}\n\n{table}Table: {path}'
