"""What a ticket search shows: its table (CSV, JSON, console) and its plot against sparsity.

The numbers are `lth_jax.lottery.results`' (summaries, matching, extreme sparsity); this
module lays them out: the x axis as the paper's figures space it (one IMP round a tick,
labelled in sparsity), bands over seeds, the dense line, each curve's extreme matching
sparsity, the chance level, and the smoke-run note where the dense runs did not train.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lth_jax.lottery.results import (
    METHOD_LABELS, ONE_RUN, Headline, extreme_sparsity, mean_std, untrained)
from lth_jax.runtime import console, files, paths


def remaining_ticks(smallest: float, fraction: float = 0.2) -> list[float]:
  """The paper's x ticks: 100 * (1 - fraction)^k percent of weights remaining.

  Args:
    smallest: the smallest percentage plotted.
    fraction: the share pruned per IMP round.

  Returns:
    100, 80, 64, ... down to the first tick at or below `smallest`.
  """
  ticks = [100.0]
  # Exact-count sparsities sit a hair off 0.8^k; a tick within 1e-4 counts as reached.
  while ticks[-1] > smallest * (1 + 1e-4) and len(ticks) < 60:
    ticks.append(ticks[-1] * (1 - fraction))
  return ticks


def sparsity_label(remaining: float) -> str:
  """A tick's sparsity in percent, to three significant digits of the weights remaining.

  Args:
    remaining: the percentage of weights remaining (100 * 0.8^k for IMP's ticks).

  Returns:
    '0', '20', '48.8', '91.41', '99.5': sparse ticks keep the digits that tell them apart.
  """
  decimals = max(0, 2 - math.floor(math.log10(remaining)))
  text = f'{100 - remaining:.{decimals}f}'
  return text.rstrip('0').rstrip('.') if decimals else text


def sparsity_axis(ax: Any, smallest: float) -> None:
  """Sets a plot's x axis as the paper's figures space it, labelled in sparsity.

  Points sit at their percentage of weights remaining on a log scale, sparser to the
  right (one IMP round a tick); ticks are labelled in sparsity, as every table says.

  Args:
    ax: the matplotlib axes, whose points have x = 100 * (1 - sparsity).
    smallest: the smallest percentage of weights remaining plotted.
  """
  from matplotlib import ticker

  ax.set_xscale('log')
  ticks = remaining_ticks(smallest)
  ax.set_xticks(ticks)
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: sparsity_label(v)))
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  if len(ticks) > 9:
    ax.tick_params(axis='x', labelsize=7, labelrotation=45)
  ax.set_xlim(ticks[0] * 1.04, ticks[-1] / 1.04)  # sparser to the right
  ax.set_xlabel('sparsity (%)')


def _chance_line(ax: Any, metric: Headline) -> None:
  """Draws the metric's chance level, if known, named in the legend even off the plot."""
  if metric.chance is None:
    return
  # A chance level far below the curves would squash them: the axis keeps the curves'
  # range and the legend says where the line is.
  low, high = ax.get_ylim()
  chance = 100 * metric.chance
  below = chance < low
  ax.axhline(chance, color='tab:red', ls='-.', lw=1,
             label=f'chance ({chance:.3g}%' + (', below this range)' if below else ')'))
  if below:
    ax.set_ylim(low, high)


def plot_vs_sparsity(path: str, curves: Mapping[str, Sequence[Mapping[str, Any]]],
                     dense: Sequence[float] | None = None, title: str = '', *,
                     metric: Headline, labels: Mapping[str, str] | None = None) -> str:
  """Plots a metric against sparsity, spaced as the paper's figures are.

  The x axis is `sparsity_axis`; every curve has its ±1 std band over seeds (one legend
  entry names the shading); the dense mean and band are drawn once; each curve's extreme
  matching sparsity is a star, judged against `dense` or else the runs of the curve's
  own dense point (curves of several pre-trainings each against their own θ_p); a curve
  of one dense point (training from scratch) is a dotted line; the chance level, where
  known, a dash-dotted one (in the legend even below the plotted range). A smoke run
  (`untrained`) says so in the title. A PDF is written beside the PNG.

  Args:
    path: PNG path to write (the PDF takes the same name).
    curves: name -> rows with 'sparsity', `metric.test` and optionally its '_std'.
    dense: the dense runs' values (the reference line, band and matching), or None.
    title: the plot title.
    metric: what is plotted (its `chance` draws the chance line).
    labels: curve name -> legend text (default `METHOD_LABELS`, else the name).

  Returns:
    `path`.
  """
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib.patches import Patch

  fig, ax = plt.subplots(figsize=(6.4, 5.4))
  smallest, banded = 100.0, False
  for name, rows in curves.items():
    rows = sorted(rows, key=lambda r: r['sparsity'])
    x = np.array([100 * (1 - r['sparsity']) for r in rows])
    y = np.array([100 * r[metric.test] for r in rows])
    # With `dense` given, its band is drawn once, not again at each curve's first point.
    err = np.array([0.0 if dense and r['sparsity'] == 0 else 100 * (r.get(f'{metric.test}_std') or 0.0)
                    for r in rows])
    banded = banded or bool(err.any())
    label = {**METHOD_LABELS, **(labels or {})}.get(name, name)
    if len(rows) == 1 and rows[0]['sparsity'] == 0:
      line = ax.axhline(y[0], ls=':', lw=1.2, color='0.35', label=label)
      ax.axhspan(y[0] - err[0], y[0] + err[0], color='0.35', alpha=0.08, lw=0)
      continue
    smallest = min(smallest, x.min())
    line, = ax.plot(x, y, marker='o', ms=4, label=label)
    if err.any():
      ax.fill_between(x, y - err, y + err, color=line.get_color(), alpha=0.15, lw=0)
    own = [run[metric.test] for r in rows if r['sparsity'] == 0 for run in r.get('runs', [])]
    judge = dense or own
    extreme = extreme_sparsity(rows, judge, metric.test) if judge else None
    if extreme is not None:
      at = next(r for r in rows if r['sparsity'] == extreme)
      ax.plot(100 * (1 - extreme), 100 * at[metric.test], marker='*', ms=13,
              color=line.get_color(), mec='k', mew=0.6, ls='none')
  if dense:
    mean, std = mean_std(dense)
    ax.axhline(100 * mean, color='k', ls='--', lw=1, label='dense')
    ax.axhspan(100 * (mean - std), 100 * (mean + std), color='k', alpha=0.08, lw=0)
    banded = banded or std > 0
  _chance_line(ax, metric)
  sparsity_axis(ax, smallest)
  ax.set_ylabel(f'test {metric.label} (%)')
  smoke = ('\nSMOKE RUN: the dense runs did not train, "matching" means nothing'
           if untrained(dense or [], metric) else '')
  ax.set_title(title + smoke + '\n(★ extreme matching sparsity)', fontsize=10)
  ax.grid(alpha=0.3)
  handles, texts = ax.get_legend_handles_labels()
  if banded:
    handles.append(Patch(color='0.5', alpha=0.25, lw=0))
    texts.append('shaded: ±1 std over seeds')
  # Below the axes: inside, it hid the curves it names.
  ax.legend(handles, texts, fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.16),
            ncol=2, frameon=False)
  fig.tight_layout()
  files.save_figure(fig, path)
  files.save_figure(fig, os.path.splitext(path)[0] + '.pdf')
  plt.close(fig)
  return path


def write(workdir: str, rows: Sequence[Mapping[str, Any]],
          curves: Mapping[str, Sequence[Mapping[str, Any]]], dense: Sequence[float],
          title: str, columns: Sequence[str], suffix: str = '', *,
          metric: Headline, labels: Mapping[str, str] | None = None) -> str:
  """Writes results{suffix}.csv/.json and <metric>_vs_sparsity{suffix}.png in `workdir`.

  When the dense runs did not train (`untrained`), every row of the CSV and JSON gets
  the reason as its 'note', the console text says it under the table, and so does the
  plot's title.

  Args:
    workdir: the experiment's workdir.
    rows: the table rows.
    curves: name -> rows, one plotted curve each.
    dense: the dense runs' values (the plot's band; may be empty).
    title: the plot title.
    columns: the console table's columns, in order (absent ones are skipped); the
      per-stage sparsities follow them.
    suffix: appended to the file names (one report per task).
    metric: the headline metric.
    labels: curve name -> legend text.

  Returns:
    The console text: the table, the smoke-run note if any, and where the files are.
  """
  stem = paths.results_table(workdir, suffix)
  note = untrained(dense, metric)
  if note:
    rows = [{**r, 'note': note} for r in rows]
  files.write_table(stem, rows)
  plot = plot_vs_sparsity(paths.results_plot(workdir, metric.file, suffix),
                          curves, dense, title=title, metric=metric, labels=labels)
  shown = [c for c in columns if any(c in r for r in rows)]
  stages = sorted({k for r in rows for k in r if k.startswith('sparsity_layer')})
  # The CSV leaves a single run's std empty; the table says why, in the log's words.
  cells = [{k: ONE_RUN if v is None and k.endswith('_std') else v for k, v in r.items()}
           for r in rows]
  warning = f'{note[0].upper()}{note[1:]}.\n' if note else ''
  return (f'\n{console.format_table(cells, shown + stages)}\n{warning}Results: {stem}.csv/.json; '
          f'plot: {plot}')
