"""What results say about themselves: smoke runs, chance, single runs, axes and legends.

Most tests build tables and plots from fake rows; one runs `demo.py:tiny` on fake
fine-tunes for the lines only the experiment prints.
"""

from __future__ import annotations

import csv
import inspect
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import data, experiments, masks, pruning, tasks
from lth_jax.analysis import imp_runs, plots
from lth_jax.experiments import config as config_lib
from lth_jax.lottery import result_files, results
from lth_jax.models import create_model
from lth_jax.tasks.classification import ACCURACY

TEN_CLASSES = tasks.get('classification').headline(data.get_info('digits'))
MIOU = tasks.Metric('miou', 'mIoU', 'miou')


def _rows(dense: list[float], sparse: list[float | None]) -> list[dict]:
  """IMP rows: the dense round's runs, then one single-seed round per value."""
  mean, std = results.mean_std(dense)
  rows = [{'method': 'magnitude', 'round': 0, 'sparsity': 0.0, 'test_accuracy': mean,
           'test_accuracy_std': std, 'runs': [{'test_accuracy': v} for v in dense]}]
  rows += [{'method': 'magnitude', 'round': k + 1, 'sparsity': 1 - 0.8 ** (k + 1),
            'test_accuracy': v, 'test_accuracy_std': None} for k, v in enumerate(sparse)]
  return rows


def _figure(monkeypatch, module) -> list:
  """Figures `module` saves, captured (they are not written)."""
  figures = []
  monkeypatch.setattr(module.files, 'save_figure', lambda fig, path, **kw: figures.append(fig))
  return figures


def _legend(ax) -> list[str]:
  return [t.get_text() for t in ax.get_legend().get_texts()]


# ----------------------------------------------------------------------- chance, smoke runs


def test_chance_is_known_for_accuracy_only():
  assert TEN_CLASSES.chance == pytest.approx(0.1) and TEN_CLASSES.key == 'accuracy'
  assert ACCURACY.chance is None  # a task's metric knows no dataset
  assert tasks.get('segmentation').headline(data.get_info('digit_canvas_seg')) == (
      tasks.get('segmentation').metric)  # mIoU's chance level depends on the data


def test_the_engine_has_no_metric_of_its_own():
  """Tasks name their headline metric; the lottery engine takes it, with no default."""
  from lth_jax import lottery
  assert not hasattr(lottery, 'Metric') and not hasattr(results, 'ACCURACY')
  assert not hasattr(results, 'with_chance')
  for fn, name in ((result_files.write, 'metric'), (result_files.plot_vs_sparsity, 'metric'),
                   (results.extreme_sparsity, 'key'), (lottery.run_transfer, 'metric')):
    assert inspect.signature(fn).parameters[name].default is inspect.Parameter.empty, fn
  assert isinstance(tasks.get('detection').metric, tasks.Metric)


def test_matching_is_marked_in_one_place():
  rows = [{'sparsity': 0.0, 'test_miou': 0.5}, {'sparsity': 0.2, 'test_miou': 0.49},
          {'sparsity': 0.36, 'test_miou': 0.4}]
  # The band: 0.5 - 0.0283 (the sample std of the two dense runs).
  assert results.mark_matching(rows, [0.48, 0.52], 'test_miou') == 0.2
  assert [r['matching'] for r in rows] == [True, True, False]
  assert list(rows[1]) == ['sparsity', 'test_miou', 'matching']  # the tables' last column
  # One dense run: the band is its value alone.
  assert results.mark_matching(rows, [0.49], 'test_miou') == 0.2
  # No dense round (IMP that pruned before round 0): nothing is judged.
  assert results.mark_matching(rows, [], 'test_miou') is None
  assert [r['matching'] for r in rows] == [None] * 3


@pytest.mark.parametrize('dense, smoke, why', [
    ([0.07, 0.31], True, 'their std is at least their gap to it'),  # 19% ± 17: the tiny demo
    ([0.10, 0.11], True, 'less than 5 points above it'),  # learning_rate=8: chance
    ([0.14], True, 'less than 5 points above it'),
    ([0.16], False, ''),  # one run 6 points above chance (std 0)
    ([0.30, 0.40], False, ''),  # 35% ± 7: 25 points above chance, more than the std
    ([0.95, 0.96, 0.97], False, ''),
    ([], False, ''),  # no dense runs: nothing to judge
])
def test_untrained_rule(dense, smoke, why):
  note = results.untrained(dense, TEN_CLASSES)
  assert bool(note) == smoke
  assert why in note
  if smoke:
    assert note.startswith('smoke run: the dense runs reach') and 'chance is 10.00%' in note
  # Where chance is not known (mIoU, mAP), nothing is judged.
  assert results.untrained(dense, MIOU) == ''


def test_smoke_run_is_flagged_in_csv_json_console_and_plot(tmp_path, monkeypatch):
  figures = _figure(monkeypatch, result_files)
  rows = _rows([0.07, 0.31], [0.17, 0.12])
  text = result_files.write(str(tmp_path), rows, {'magnitude': rows}, [0.07, 0.31], 'tiny',
                            ['method', 'round', 'test_accuracy', 'test_accuracy_std'],
                            metric=TEN_CLASSES)
  note = results.untrained([0.07, 0.31], TEN_CLASSES)
  with open(tmp_path / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert [r['note'] for r in table] == [note] * 3
  assert [r['note'] for r in json.load(open(tmp_path / 'results.json'))] == [note] * 3
  assert 'Smoke run: the dense runs reach 19.00% ± 16.97 where chance is 10.00%' in text
  ax = figures[0].axes[0]
  assert 'SMOKE RUN' in ax.get_title()
  chance = [line for line in ax.get_lines() if line.get_label().startswith('chance')]
  assert [list(line.get_ydata()) for line in chance] == [[10.0, 10.0]]
  assert 'chance (10%)' in _legend(ax)


def test_trained_run_has_no_note_and_chance_below_the_curves_keeps_their_range(
    tmp_path, monkeypatch):
  figures = _figure(monkeypatch, result_files)
  rows = _rows([0.95, 0.96], [0.955, 0.94])
  text = result_files.write(str(tmp_path), rows, {'magnitude': rows}, [0.95, 0.96], 'demo',
                            ['method', 'test_accuracy'], metric=TEN_CLASSES)
  assert 'note' not in open(tmp_path / 'results.csv').readline().split(',')
  assert 'moke run' not in text
  ax = figures[0].axes[0]
  assert 'SMOKE RUN' not in ax.get_title()
  assert ax.get_ylim()[0] > 90  # the curves keep the plot; the legend says where chance is
  assert 'chance (10%, below this range)' in _legend(ax)


def test_single_run_std_reads_one_run_in_the_table_as_in_the_log(tmp_path):
  rows = _rows([0.95, 0.96], [0.94])
  text = result_files.write(str(tmp_path), rows, {'magnitude': rows}, [0.95, 0.96], 'demo',
                            ['round', 'test_accuracy', 'test_accuracy_std'], metric=TEN_CLASSES)
  line = next(s for s in text.splitlines() if s.startswith('1 '))
  assert line.split()[-2:] == ['(one', 'run)']
  assert results.shown(rows[1], 'test_accuracy') == '94.00% (one run)'
  with open(tmp_path / 'results.csv') as f:
    assert [r['test_accuracy_std'] for r in csv.DictReader(f)][1] == ''  # empty, as before


# ---------------------------------------------------------------------- axes and legends


def test_plot_x_axis_is_sparsity_and_the_std_band_is_in_the_legend(tmp_path, monkeypatch):
  figures = _figure(monkeypatch, result_files)
  rows = _rows([0.90, 0.92], [0.91, 0.90, 0.89, 0.85, 0.80])
  for r in rows[1:]:
    r['test_accuracy_std'] = 0.01
  result_files.plot_vs_sparsity(str(tmp_path / 'p.png'), {'magnitude': rows},
                                dense=[0.90, 0.92], metric=ACCURACY)
  ax = figures[0].axes[0]
  assert ax.get_xlabel() == 'sparsity (%)'
  labels = [ax.xaxis.get_major_formatter()(t, i) for i, t in enumerate(ax.get_xticks())]
  assert labels == ['0', '20', '36', '48.8', '59', '67.2']
  assert 'shaded: ±1 std over seeds' in _legend(ax)
  assert not any(label.startswith('chance') for label in _legend(ax))  # ACCURACY: unknown


def test_sparsity_labels_keep_three_digits_of_the_weights_remaining():
  ticks = result_files.remaining_ticks(2.9)
  assert [result_files.sparsity_label(t) for t in ticks][-4:] == ['94.5', '95.6', '96.48', '97.19']
  assert result_files.sparsity_label(0.5) == '99.5'


def test_overlap_plot_names_the_expectation_once_on_the_results_axis(tmp_path, monkeypatch):
  figures = _figure(monkeypatch, plots)
  rows = [{'pair': 'magnitude vs random', 'sparsity': s, 'iou': 1 - s, 'expected_iou': 1 - s}
          for s in (0.2, 0.36)]
  plots.overlap_vs_sparsity(str(tmp_path / 'o.png'), rows)
  ax = figures[0].axes[0]
  assert _legend(ax) == ['magnitude vs random', 'dashed: expected for independent random '
                         'masks\nwith the same layer densities']
  assert ax.get_xlabel() == 'sparsity (%)'
  # Equal here, as for any pair with a random run: a thin dashed line over a wide one.
  measured, expected = ax.get_lines()
  assert expected.get_zorder() > measured.get_zorder()
  assert expected.get_linewidth() < measured.get_linewidth()


def test_layer_overlap_legend_names_no_run_random(tmp_path, monkeypatch):
  figures = _figure(monkeypatch, plots)
  layer = {'iou': 0.5, 'expected_iou': 0.5}
  plots.layer_overlap(str(tmp_path / 'l.png'), {'magnitude vs random': {
      'layer1/kernel': layer, 'layer2/kernel': layer, 'total': layer}})
  assert not any(t.endswith(': random') for t in _legend(figures[0].axes[0]))


# ---------------------------------------------------------------------- runs on disk


@pytest.fixture(scope='module')
def params() -> dict:
  model = create_model('resnet18', num_classes=10, stem='cifar', width_multiplier=0.125)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)),
                      shapes['params'])


def _write_round(run_dir, k: int, m, accuracy: float | None) -> None:
  round_dir = os.path.join(run_dir, f'round_{k:02d}')
  masks.save(os.path.join(round_dir, 'mask'), m)
  if accuracy is not None:
    with open(os.path.join(round_dir, 'round.json'), 'w') as f:
      json.dump({'round': k, 'sparsity': masks.sparsity(m), 'test_accuracy': accuracy,
                 'test_accuracy_std': None}, f)


def test_analysis_compares_trained_masks_only(tmp_path, params):
  imp_masks = [masks.init(params)]
  for _ in range(2):
    imp_masks.append(pruning.global_magnitude(params, imp_masks[-1], 0.2))
  rand = [imp_masks[0]]
  for k in (1, 2):
    rand.append(pruning.random(jax.random.key(k), rand[-1], 0.2))
  # Rounds 0-1 trained; round 2's masks were saved for a round that never ran.
  for k, m in enumerate(imp_masks):
    _write_round(tmp_path / 'magnitude', k, m, 0.9 if k < 2 else None)
  _write_round(tmp_path / 'random', 1, rand[1], 0.85)
  _write_round(tmp_path / 'random', 2, rand[2], None)
  path = imp_runs.analyze_workdirs([str(tmp_path)])
  with open(tmp_path / 'analysis' / 'overlap_vs_sparsity.json') as f:
    curve = json.load(f)
  assert [(r['pair'], round(r['sparsity'], 2)) for r in curve] == [('magnitude vs random', 0.2)]
  text = open(path).read()
  assert '| magnitude | 1 | 20.00 | 90.00 | (one run) |' in text
  assert '| magnitude | 2 | 36.00 | - | - |' in text  # not trained yet


def test_rerun_with_fewer_rounds_names_the_rounds_left_out(tmp_path):
  run = tmp_path / 'magnitude'
  for k in range(5):
    (run / f'round_{k:02d}').mkdir(parents=True)
    if k < 4:  # round 4 holds only the next mask
      (run / f'round_{k:02d}' / 'round.json').write_text('{}')
  line = imp_runs.rounds_left_out(str(run), 2)
  assert line == (f'{run}: results.csv holds the rounds below imp.num_rounds=2 only; rounds '
                  '2, 3 were trained before and stay on disk (--config.imp.num_rounds=4 tables '
                  'them again).')
  assert imp_runs.rounds_left_out(str(run), 3) == (
      f'{run}: results.csv holds the rounds below imp.num_rounds=3 only; round 3 was trained '
      'before and stays on disk (--config.imp.num_rounds=4 tables it again).')
  assert imp_runs.rounds_left_out(str(run), 4) == ''
  assert imp_runs.rounds_left_out(str(tmp_path / 'nothing'), 1) == ''


# ---------------------------------------------------------------------- the tiny demo


def test_tiny_demo_says_it_is_a_smoke_run_and_what_a_shorter_rerun_leaves_out(
    tmp_path, capsys, fake_finetunes):
  # Dense runs near chance (10% on digits), as the real tiny demo's are on the tests'
  # devices (its end-to-end test in test_experiments.py checks that it is flagged).
  fake_finetunes.value = lambda seed, sparsity: 0.12 + 0.01 * seed - 0.01 * sparsity
  config = config_lib.load_config('demo:tiny')
  config.num_devices = 1
  workdir = str(tmp_path / 'tiny')
  experiments.run(config, workdir)
  out = capsys.readouterr().out
  assert 'IMP (magnitude) on digits: rounds 0-2, 1 seed(s) a round (2 in the dense round 0): ' \
         '4 fine-tunes of 1 epoch.' in out
  assert 'IMP (random) on digits: rounds 1-2, 1 seed(s) a round: 2 fine-tunes of 1 epoch.' in out
  assert '[magnitude] round 1: sparsity 20.00%, test accuracy' in out
  assert '(one run) (best val epoch' in out and '[magnitude] round 0' in out
  assert '\nSmoke run: the dense runs reach' in out
  assert 'Extreme matching sparsity (magnitude): ' in out
  assert out.count('(meaningless: a smoke run, see above)') == 2
  with open(os.path.join(workdir, 'results.csv')) as f:
    assert all(r['note'].startswith('smoke run:') for r in csv.DictReader(f))
  config.imp.num_rounds = 2
  experiments.run(config, workdir)
  out = capsys.readouterr().out
  for method in ('magnitude', 'random'):
    assert (f'{os.path.join(workdir, method)}: results.csv holds the rounds below '
            'imp.num_rounds=2 only; round 2 was trained before and stays on disk') in out
  assert len(json.load(open(os.path.join(workdir, 'results.json')))) == 4
