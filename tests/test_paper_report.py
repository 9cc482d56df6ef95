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
      _row('random_layerwise', 'random_layerwise_round_01', 0.36, [0.70, 0.72],
           matching=True),
      _row('task_specific', 'task_specific_round_01', 0.2, [0.73, 0.73], matching=True),
      _row('simclr', 'dense', 0.0, [0.60, 0.64], pretraining='simclr', matching=True),
      _row('simclr', 'round_07', 0.8322, [0.55], pretraining='simclr', matching=False),
      _row('moco', 'dense', 0.0, [0.68, 0.66, 0.67], pretraining='moco', matching=True),
      _row('moco', 'round_03', 0.5904, [0.67, 0.66], pretraining='moco', matching=True),
  ]


def test_a_task_table_has_a_row_per_sparsity_and_a_column_per_curve():
  # The lines are by sparsity whatever the rows' order; the first columns are the curves
  # of the pre-training the baselines derive from, the others follow in the rows' order.
  rows = _rows()
  text = paper_report.markdown(rows[4:] + rows[:4], MIOU)
  assert text == (
      "| sparsity | θ_Sup tickets | random global | random, ticket's layers | task-specific "
      "| θ_SimCLR tickets | θ_MoCo tickets |\n"
      "|---|---|---|---|---|---|---|\n"
      "| 0% (dense θ_p, 3 seeds) | 71.00 ± 1.00 |  |  |  | 62.00 ± 2.83 | 67.00 ± 1.00 |\n"
      "| 20% |  |  |  | **73.00 ± 0.00** |  |  |\n"
      "| 36% | **71.00 ± 0.00** | 51.00 ± 1.41 | **71.00 ± 1.41** |  |  |  |\n"
      "| 59% | 61.00 ± 1.41 |  |  |  |  | **66.50 ± 0.71** |\n"
      "| 83.2% |  |  |  |  | 55.00 (one run) |  |\n"
      "\n"
      "Training from scratch: 42.00 ± 2.83 (40.00, 44.00). Test mIoU at the best validation "
      "epoch, mean ± std over 2 seeds (the dense networks over 3); bold: matching, within "
      "one std of the same pre-training's dense transfer.\n")


def test_each_baseline_curve_starts_at_the_dense_point_of_its_pretraining():
  rows = _rows()
  curves = paper_report._curves(rows)
  supervised_dense = rows[1]
  assert [r['ticket'] for r in curves['supervised']] == ['dense', 'round_01', 'round_03']
  for method in ('random_global', 'random_layerwise', 'task_specific'):
    assert curves[method][0] is supervised_dense and len(curves[method]) == 2
  assert curves['moco'][0]['ticket'] == 'dense' and curves['scratch'] == [rows[0]]


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
  table = (tmp_path / 'table_seg.md').read_text(encoding='utf-8')
  assert table == paper_report.markdown(_rows(), MIOU) and table in text
  assert {p.name for p in tmp_path.iterdir()} >= {
      'results_seg.csv', 'results_seg.json', 'miou_vs_sparsity_seg.png', 'table_seg.md'}


def test_rows_the_table_cannot_hold_do_not_stop_the_results(tmp_path):
  rows = _rows() + [_row('supervised', 'round_09', 0.36, [0.5])]
  text = paper_report.write(str(tmp_path), 'seg', rows, MIOU)
  said = "No table of seg: 'round_01' and 'round_09' of supervised both fall on 36%"
  assert said in text and (tmp_path / 'table_seg.md').read_text().startswith(said)
  assert (tmp_path / 'results_seg.json').exists()


def test_a_pretraining_lth_jax_does_not_name_is_headed_by_its_own_name():
  rows = [{**r, 'pretraining': 'byol', 'method': 'byol'} if r['pretraining'] == 'moco' else r
          for r in _rows()]
  assert paper_report.markdown(rows, MIOU).splitlines()[0].endswith('| θ_p (byol) tickets |')


def test_one_seed_is_said_in_the_singular():
  rows = [{**r, 'runs': r['runs'][:1], 'test_miou_std': None} for r in _rows()]
  text = paper_report.markdown(rows, MIOU)
  assert '| 0% (dense θ_p, 1 seed) |' in text and 'over 1 seed (the dense networks over 1)' in text
  assert 'Training from scratch: 42.00 (one run). Test' in text


def test_a_theta_p_whose_dense_runs_did_not_train_is_named_under_the_table():
  # Against a chance level of 65%: θ_Sup's dense runs (71 ± 1) trained, θ_SimCLR's (62)
  # and θ_MoCo's (67, 2 points above) did not, so their bold cells mean nothing.
  text = paper_report.markdown(_rows(), Metric('miou', 'mIoU', 'miou', chance=0.65))
  smoke = [line for line in text.splitlines() if 'smoke run' in line]
  assert [line.split(':')[0] for line in smoke] == ['θ_SimCLR', 'θ_MoCo']
  assert 'the dense runs reach 67.00% ± 1.00 where chance is 65.00%' in smoke[1]
  assert 'smoke run' not in paper_report.markdown(_rows(), MIOU)  # chance unknown: no word
