"""Tests for paper mode's per-task outputs (lth_jax.experiments.paper_report)."""

from __future__ import annotations

import pytest

from lth_jax.experiments import paper_report
from lth_jax.metrics.headline import Metric

MIOU = Metric('miou', 'mIoU', 'miou')


def _row(method, ticket, sparsity, values, pretraining='supervised', matching=None):
  mean = sum(values) / len(values)
  std = (None if len(values) == 1
         else (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5)
  return {'task': 'seg', 'pretraining': pretraining, 'method': method, 'ticket': ticket,
          'sparsity': sparsity, 'test_miou': mean, 'test_miou_std': std, 'matching': matching,
          'runs': [{'seed': i, 'test_miou': v} for i, v in enumerate(values)]}


def _rows():
  return [
      _row('scratch', 'scratch', 0.0, [0.40, 0.44], pretraining='scratch'),
      _row('supervised', 'dense', 0.0, [0.70, 0.72, 0.71], matching=True),
      _row('supervised', 'round_01', 0.36, [0.71, 0.71], matching=True),
      _row('supervised', 'round_03', 0.5904, [0.60, 0.62], matching=False),
      _row('random_global', 'random_global_round_01', 0.36, [0.50, 0.52], matching=False),
      _row('task_specific', 'task_specific_round_01', 0.2, [0.73], matching=True),
      _row('moco', 'dense', 0.0, [0.68, 0.66, 0.67], pretraining='moco', matching=True),
      _row('moco', 'round_03', 0.5904, [0.67, 0.66], pretraining='moco', matching=True),
  ]


def test_a_task_table_has_a_row_per_sparsity_and_a_column_per_curve():
  # Rows in any order: the lines are by sparsity, the columns the first pre-training's
  # curves, then the other pre-trainings'.
  text = paper_report.markdown(_rows()[::-1], MIOU)
  assert text == (
      "| sparsity | θ_Sup tickets | random global | task-specific | θ_MoCo tickets |\n"
      "|---|---|---|---|---|\n"
      "| 0% (dense θ_p, 3 seeds) | 71.00 ± 1.00 |  |  | 67.00 ± 1.00 |\n"
      "| 20% |  |  | **73.00 (one run)** |  |\n"
      "| 36% | **71.00 ± 0.00** | 51.00 ± 1.41 |  |  |\n"
      "| 59% | 61.00 ± 1.41 |  |  | **66.50 ± 0.71** |\n"
      "\n"
      "Training from scratch: 42.00 ± 2.83 (40.00, 44.00). Test mIoU at the best validation "
      "epoch, mean ± std over the seeds; bold: matching, within one std of the same "
      "pre-training's dense transfer.\n")


def test_two_rows_of_one_curve_on_one_sparsity_are_refused_naming_both():
  rows = _rows() + [_row('supervised', 'round_09', 0.36, [0.5])]
  with pytest.raises(ValueError, match=r"'round_01' and 'round_09' of supervised both fall "
                                       r'on 36% sparsity'):
    paper_report.markdown(rows, MIOU)


def test_a_table_without_scratch_is_refused():
  with pytest.raises(ValueError, match='no scratch row'):
    paper_report.markdown(_rows()[1:], MIOU)


def test_write_puts_the_table_beside_the_rows_and_the_plot(tmp_path):
  text = paper_report.write(str(tmp_path), 'seg', _rows(), MIOU)
  table = (tmp_path / 'table_seg.md').read_text()
  assert table == paper_report.markdown(_rows(), MIOU) and table in text
  assert {p.name for p in tmp_path.iterdir()} >= {
      'results_seg.csv', 'results_seg.json', 'miou_vs_sparsity_seg.png', 'table_seg.md'}


def test_a_pretraining_lth_jax_does_not_name_is_headed_by_its_own_name():
  rows = [{**r, 'pretraining': 'byol', 'method': 'byol'} if r['pretraining'] == 'moco' else r
          for r in _rows()]
  assert paper_report.markdown(rows, MIOU).splitlines()[0].endswith('| θ_p (byol) tickets |')
