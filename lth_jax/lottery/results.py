"""Results of a ticket search: per-seed summaries, matching, extreme sparsity, labels.

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

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np


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
