"""Results of a ticket search: per-seed summaries, matching, extreme sparsity, tables, plots.

Numbers are named by the task's headline metric (`test_accuracy`, `test_miou`,
`test_map50`): each task names its own (`lth_jax.metrics.headline.Metric`), read here as
a `Headline`; results know none of their own.
The paper's criterion (REFERENCE.md), judged here only (`is_matching`, and
`mark_matching` for rows): a sparse network *matches* when its mean metric is at least
the dense model's mean minus one standard deviation of the dense runs; the *extreme
sparsity* is the highest sparsity on the grid that still matches. Standard deviations
are sample standard deviations (ddof=1) over independent runs; a single run has none
(None in records, shown as "(one run)"), so one dense run's band is its value alone.
Where the metric's chance level is known (accuracy: 1 / classes), dense runs within the
noise of chance make the experiment a smoke run, and its outputs say so (`untrained`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from lth_jax.runtime import console, files, paths


class Headline(Protocol):
  """What results read of a task's headline metric (a `lth_jax.tasks.Metric`).

  Attributes:
    key: the suffix of the result fields ('miou': 'test_miou', 'test_miou_std').
    label: how tables and plots call it.
    file: the plot's file name stem.
    chance: the value a network that did not learn scores, or None where unknown.
    test: the result field of the test value ('test_miou').
  """
  key: str
  label: str
  file: str
  chance: float | None

  @property
  def test(self) -> str: ...


# How a single run's missing std is shown in tables and logs (the CSV leaves it empty).
ONE_RUN = '(one run)'

# Dense runs less than this above chance did not train: matching them means nothing.
NEAR_CHANCE = 0.05

# What each method's curve is, in words, where its name alone could mislead.
METHOD_LABELS = {
    'random': 'random pruning (global, as an IMP branch)',
    'random_global': 'random pruning (global)',
    'random_layerwise': "random, ticket's layer profile",
    'scratch': 'dense from scratch (no pre-training)',
    'task_specific': 'task-specific IMP (on the task, from θ_p)',
}


def untrained(dense: Sequence[float], metric: Headline) -> str:
  """Why matching against these dense runs means nothing, or '' when it means something.

  The dense runs did not train when their mean is less than `NEAR_CHANCE` (5 points)
  above the metric's chance level, or when their std over seeds (a single run has none:
  only its gap counts) is at least that gap: a sparse network then "matches" anywhere
  in the noise around chance. A metric of unknown chance level is never judged.

  Args:
    dense: the dense runs' values (may be empty).
    metric: the headline metric, with its `chance`.

  Returns:
    '' or a note that starts 'smoke run:' and gives the numbers.
  """
  if metric.chance is None or not dense:
    return ''
  mean, std = mean_std(dense)
  gap = mean - metric.chance
  if gap >= NEAR_CHANCE and std < gap:
    return ''
  why = (f'less than {100 * NEAR_CHANCE:g} points above it' if gap < NEAR_CHANCE else
         'their std is at least their gap to it')
  spread = f'± {100 * std:.2f}' if len(dense) > 1 else ONE_RUN
  return (f'smoke run: the dense runs reach {100 * mean:.2f}% {spread} where chance is '
          f'{100 * metric.chance:.2f}% ({why}), so the recipe did not train and '
          f'"matching" means nothing here')


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation: the centre and half-width of the matching band.

  Args:
    values: the metric of repeated runs.

  Returns:
    (mean, std); one value has no spread, its band no width: (value, 0.0) (records say
    None, see `std_over_runs`).
  """
  arr = np.asarray(values, np.float64)
  if arr.size == 0:
    raise ValueError('mean_std needs at least one value.')
  return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


# How many times the larger seed std a pre-training's gain over training from scratch
# must exceed before a task can show whether tickets keep that gain.
CLAIM_BAR_STDS = 2


def pretraining_gain(dense: Sequence[float],
                     scratch: Sequence[float]) -> tuple[float, float, bool | None]:
  """Does pre-training matter on a task? The gain of θ_p's dense runs over scratch.

  Args:
    dense: the metric of the dense runs from θ_p, one per seed.
    scratch: the metric of the dense runs from a random init, one per seed.

  Returns:
    (gain of the means, bar = CLAIM_BAR_STDS x the larger of the two stds, gain > bar);
    the last is None when either side has one run (no spread to judge the gain by).
  """
  (dense_mean, dense_std), (scratch_mean, scratch_std) = mean_std(dense), mean_std(scratch)
  gain, bar = dense_mean - scratch_mean, CLAIM_BAR_STDS * max(dense_std, scratch_std)
  return gain, bar, (gain > bar if min(len(dense), len(scratch)) > 1 else None)


def summarize(runs: Sequence[Mapping[str, Any]], metric: str) -> dict[str, float]:
  """Mean and std over seeds of a set of runs' test and validation values.

  Args:
    runs: one dict per seed with f'test_{metric}' and f'val_{metric}'.
    metric: the headline metric's key.

  Returns:
    {'test_<metric>', 'test_<metric>_std', 'val_<metric>', 'val_<metric>_std'}, and the
    same mean and std of every other test metric all runs have (e.g. detection's
    test_map, mAP@[.5:.95]); the stds are None for a single run.
  """
  out = {}
  others = [k for k in runs[0] if k.startswith('test_') and k != f'test_{metric}'
            and all(k in r for r in runs)]
  for key in (f'test_{metric}', f'val_{metric}', *others):
    values = [r[key] for r in runs]
    out[key], out[f'{key}_std'] = mean_std(values)[0], std_over_runs(values)
  return out


def std_over_runs(values: Sequence[float]) -> float | None:
  """The sample std of repeated runs, or None for one run (it has no spread to report)."""
  return mean_std(values)[1] if len(values) > 1 else None


def shown(record: Mapping[str, Any], key: str) -> str:
  """'93.27% ± 1.05' for a record's mean and std of `key` ('93.27% (one run)' without std)."""
  std = record.get(f'{key}_std')
  return f'{100 * record[key]:.2f}% ' + (ONE_RUN if std is None else f'± {100 * std:.2f}')


def dense_runs(record: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
  """The runs of a record taken as the dense network, whose spread is the matching band.

  Args:
    record: a round record or transfer row ('sparsity', 'runs').
    name: what the record is, for the error.

  Returns:
    Its runs.

  Raises:
    ValueError: a sparse record (its runs would judge tickets against a pruned network).
  """
  if record['sparsity'] != 0:
    raise ValueError(f'{name} is taken as the dense network, but its sparsity is '
                     f'{100 * record["sparsity"]:.2f}%.')
  return list(record['runs'])


def is_matching(value: float, dense: Sequence[float]) -> bool:
  """Whether a sparse network's value matches the dense runs (>= mean - one std).

  Args:
    value: the sparse network's (mean) metric.
    dense: the metric of the dense runs.

  Returns:
    True when the sparse network matches.
  """
  mean, std = mean_std(dense)
  # A tiny tolerance keeps a sparse run that equals the band's edge from failing on
  # float rounding of metrics computed as fractions.
  return value >= mean - std - 1e-9


def extreme_sparsity(rows: Sequence[Mapping[str, Any]], dense: Sequence[float],
                     key: str) -> float | None:
  """The highest sparsity among `rows` whose value matches the dense runs.

  Args:
    rows: dicts with 'sparsity' and `key`.
    dense: the metric of the dense runs.
    key: the field to judge (e.g. 'test_accuracy').

  Returns:
    The extreme matching sparsity, or None when nothing sparse matches.
  """
  matching = [r['sparsity'] for r in rows if r['sparsity'] > 0 and is_matching(r[key], dense)]
  return max(matching) if matching else None


def mark_matching(rows: Sequence[dict[str, Any]], dense: Sequence[float],
                  key: str) -> float | None:
  """Marks every row of a curve `matching` against the dense runs; its extreme sparsity.

  Every mode's curves (IMP rounds, transferred tickets, baselines), the dense point
  included: each row gets 'matching' (`is_matching`).

  Args:
    rows: dicts with 'sparsity' and `key`, updated in place ('matching' is added last).
    dense: the metric of the dense runs; empty when there is no dense round to judge
      against (e.g. IMP that pruned before round 0), and every row's 'matching' is None.
    key: the field to judge (e.g. 'test_miou').

  Returns:
    The extreme matching sparsity, or None when nothing sparse matches (or no dense runs).
  """
  for row in rows:
    row['matching'] = is_matching(row[key], dense) if dense else None
  return extreme_sparsity(rows, dense, key) if dense else None


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

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
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
  ax.legend(handles, texts, fontsize=8)
  fig.tight_layout()
  files.save_figure(fig, path)
  files.save_figure(fig, os.path.splitext(path)[0] + '.pdf')
  plt.close(fig)
  return path


def report(workdir: str, rows: Sequence[Mapping[str, Any]],
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
