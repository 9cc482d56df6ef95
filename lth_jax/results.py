"""Results of a ticket search: matching, extreme sparsity, tables and plots.

The paper's criterion (REFERENCE.md): a sparse network *matches* when its accuracy is at
least the dense model's mean minus one standard deviation of the dense runs; the
*extreme sparsity* is the highest sparsity on the grid that still matches. Standard
deviations here are sample standard deviations (ddof=1), zero for a single run.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import numpy as np


# What each method's curve is, in words, where its name alone could mislead.
METHOD_LABELS = {
    'random': 'random pruning (global, as an IMP branch)',
    'random_global': 'random pruning (global)',
    'random_layerwise': "random, ticket's layer profile",
}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for fewer than two values).

  Args:
    values: accuracies of repeated runs.

  Returns:
    (mean, std).
  """
  arr = np.asarray(values, np.float64)
  if arr.size == 0:
    raise ValueError('mean_std needs at least one value.')
  return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def is_matching(accuracy: float, dense: Sequence[float]) -> bool:
  """Whether a sparse accuracy matches the dense runs (>= mean - one std).

  Args:
    accuracy: the sparse network's (mean) accuracy.
    dense: accuracies of the dense runs.

  Returns:
    True when the sparse network matches.
  """
  mean, std = mean_std(dense)
  # A tiny tolerance keeps a sparse run that equals the band's edge from failing on
  # float rounding of accuracies computed as fractions.
  return accuracy >= mean - std - 1e-9


def extreme_sparsity(rows: Sequence[Mapping[str, Any]], dense: Sequence[float],
                     accuracy_key: str = 'test_accuracy') -> float | None:
  """The highest sparsity among `rows` whose accuracy matches the dense runs.

  Args:
    rows: dicts with 'sparsity' and `accuracy_key`.
    dense: accuracies of the dense runs.
    accuracy_key: which accuracy to judge.

  Returns:
    The extreme matching sparsity, or None when nothing sparse matches.
  """
  matching = [r['sparsity'] for r in rows
              if r['sparsity'] > 0 and is_matching(r[accuracy_key], dense)]
  return max(matching) if matching else None


def atomic_write(path: str, write: Callable[[IO[Any]], None], mode: str = 'w') -> str:
  """Writes a file atomically: into a uniquely named temporary file, then renamed.

  A crash leaves no half-written file, and processes or threads writing the same path
  never share a temporary file.

  Args:
    path: the file to write; its folder is created.
    write: called with the open temporary file.
    mode: 'w' (text) or 'wb'.

  Returns:
    `path`.
  """
  folder = os.path.dirname(path) or '.'
  os.makedirs(folder, exist_ok=True)
  handle, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.',
                                 suffix='.tmp')
  try:
    with os.fdopen(handle, mode, **({'newline': ''} if 'b' not in mode else {})) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_json(path: str, value: Any) -> str:
  """Writes `value` as JSON atomically (see `atomic_write`).

  Args:
    path: the file to write; its folder is created.
    value: JSON-compatible data (numpy scalars become floats).

  Returns:
    `path`.
  """
  return atomic_write(path, lambda f: json.dump(value, f, indent=1, default=float))


def write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> str:
  """Writes arrays as a compressed `.npz` atomically (see `atomic_write`).

  Args:
    path: the file to write (ending in .npz).
    arrays: name -> array.

  Returns:
    `path`.
  """
  return atomic_write(path, lambda f: np.savez_compressed(f, **arrays), mode='wb')


def save_figure(fig: Any, path: str, dpi: int = 120) -> str:
  """Saves a matplotlib figure atomically, in the format of the path's extension.

  Args:
    fig: the figure.
    path: e.g. 'plot.png' or 'plot.pdf'.
    dpi: resolution of raster formats.

  Returns:
    `path`.
  """
  fmt = os.path.splitext(path)[1].lstrip('.') or 'png'
  return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi), mode='wb')


def write_table(path_stem: str, rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
  """Writes rows as `<stem>.csv` and `<stem>.json` (atomically, see `atomic_write`).

  Args:
    path_stem: output path without extension.
    rows: dicts; the CSV holds their scalar fields (header: the union of keys in
      first-seen order), the JSON everything.

  Returns:
    The two paths written.
  """
  fields: list[str] = []
  for row in rows:
    fields += [k for k, v in row.items()
               if k not in fields and not isinstance(v, (list, tuple, dict))]

  def write_csv(f: IO[str]) -> None:
    # Nested values (per-seed runs) go to the JSON file only.
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)

  csv_path = atomic_write(f'{path_stem}.csv', write_csv)
  return csv_path, write_json(f'{path_stem}.json', list(rows))


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """Formats rows as a fixed-width text table for the console.

  Args:
    rows: dicts holding at least `columns`.
    columns: the columns to show, in order.

  Returns:
    The table as a string.
  """
  def cell(v: Any) -> str:
    if isinstance(v, float):
      return f'{v:.4f}'
    return '-' if v is None else str(v)
  body = [[cell(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c)
            for i, c in enumerate(columns)]
  lines = ['  '.join(c.rjust(w) for c, w in zip(columns, widths))]
  lines += ['  '.join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
  return '\n'.join(lines)


def plot_accuracy_vs_sparsity(path: str, curves: Mapping[str, Sequence[Mapping[str, Any]]],
                              dense: Sequence[float] | None = None, title: str = '',
                              accuracy_key: str = 'test_accuracy') -> str:
  """Plots accuracy against sparsity, one curve per method, with the dense band.

  Args:
    path: PNG path to write.
    curves: name -> rows with 'sparsity', `accuracy_key` and optionally
      f'{accuracy_key}_std' (drawn as error bars).
    dense: dense-run accuracies; their mean is a dashed line and +-1 std a band.
    title: the plot title.
    accuracy_key: which accuracy to plot.

  Returns:
    `path`.
  """
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for name, rows in curves.items():
    rows = sorted(rows, key=lambda r: r['sparsity'])
    x = [100 * r['sparsity'] for r in rows]
    y = [100 * r[accuracy_key] for r in rows]
    err = [100 * r.get(f'{accuracy_key}_std', 0.0) for r in rows]
    ax.errorbar(x, y, yerr=err if any(err) else None, marker='o', ms=4, capsize=2,
                label=METHOD_LABELS.get(name, name))
  if dense:
    mean, std = mean_std(dense)
    ax.axhline(100 * mean, color='k', ls='--', lw=1, label='dense mean')
    ax.axhspan(100 * (mean - std), 100 * (mean + std), color='k', alpha=0.1,
               label='dense ±1 std')
  ax.set_xlabel('sparsity (%)')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path)
  plt.close(fig)
  return path


def report(workdir: str, rows: Sequence[Mapping[str, Any]],
           curves: Mapping[str, Sequence[Mapping[str, Any]]], dense: Sequence[float],
           title: str, columns: Sequence[str], suffix: str = '') -> str:
  """Writes results{suffix}.csv/.json and accuracy_vs_sparsity{suffix}.png in `workdir`.

  Args:
    workdir: the experiment's workdir.
    rows: the table rows.
    curves: name -> rows, one plotted curve each.
    dense: dense-run accuracies (the plot's band; may be empty).
    title: the plot title.
    columns: the console table's columns, in order (absent ones are skipped); the
      per-stage sparsities follow them.
    suffix: appended to the file names (one report per task).

  Returns:
    The console text: the table and where the files are.
  """
  stem = os.path.join(workdir, f'results{suffix}')
  write_table(stem, rows)
  plot = plot_accuracy_vs_sparsity(
      os.path.join(workdir, f'accuracy_vs_sparsity{suffix}.png'), curves, dense, title=title)
  shown = [c for c in columns if any(c in r for r in rows)]
  stages = sorted({k for r in rows for k in r if k.startswith('sparsity_layer')})
  return f'\n{format_table(rows, shown + stages)}\nResults: {stem}.csv/.json; plot: {plot}'
