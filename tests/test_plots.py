"""The paper-style metric-against-sparsity figure (lth_jax.lottery.results)."""

from __future__ import annotations

import pytest

from lth_jax.lottery import result_files
from lth_jax.tasks.classification import ACCURACY


def test_ticks_are_one_imp_round_apart():
  assert result_files.remaining_ticks(100.0) == [100.0]
  ticks = result_files.remaining_ticks(16.8)
  assert ticks == pytest.approx([100 * 0.8 ** k for k in range(9)])
  assert ticks[-2] > 16.8 >= ticks[-1]
  assert result_files.remaining_ticks(50, fraction=0.5) == [100.0, 50.0]
  # 36% sparsity as an exact count (63.99998% remaining) ends at the 64 tick, not 51.2.
  assert result_files.remaining_ticks(100 * (1 - 0.36000022944)) == pytest.approx([100, 80, 64])


def test_figure_is_written_as_png_and_pdf(tmp_path):
  rows = [{'sparsity': 1 - 0.8 ** k, 'test_accuracy': 0.9 - 0.01 * k,
           'test_accuracy_std': 0.005} for k in range(6)]
  random = [{**r, 'test_accuracy': r['test_accuracy'] - 0.03} for r in rows]
  path = result_files.plot_vs_sparsity(str(tmp_path / 'accuracy_vs_sparsity.png'),
                                       {'magnitude': rows, 'random_global': random},
                                       dense=[0.9, 0.91, 0.89], title='test', metric=ACCURACY)
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  assert (tmp_path / 'accuracy_vs_sparsity.pdf').read_bytes()[:4] == b'%PDF'


def _drawn(monkeypatch, tmp_path, curves, **kwargs):
  """Plots `curves` and returns the figure's axes (captured before it is closed)."""
  figures = []
  monkeypatch.setattr(result_files.files, 'save_figure', lambda fig, path: figures.append(fig))
  result_files.plot_vs_sparsity(str(tmp_path / 'p.png'), curves, metric=ACCURACY, **kwargs)
  return figures[0].axes[0]


def test_stars_judge_each_curve_against_its_own_dense_point(monkeypatch, tmp_path):
  def curve(dense_runs, sparse):
    dense = {'sparsity': 0.0, 'test_accuracy': sum(dense_runs) / len(dense_runs),
             'runs': [{'test_accuracy': v} for v in dense_runs]}
    return [dense] + [{'sparsity': 1 - 0.8 ** (k + 1), 'test_accuracy': v}
                      for k, v in enumerate(sparse)]
  curves = {
      # Dense 0.90 ± 0.01: 0.895 and 0.89 match, 0.85 does not -> star at 36%.
      'supervised': curve([0.89, 0.91], [0.895, 0.89, 0.85]),
      # Dense 0.80 ± 0.00: judged against its own runs, not supervised's -> star at 48.8%.
      'moco': curve([0.80, 0.80], [0.81, 0.80, 0.80]),
      'scratch': [{'sparsity': 0.0, 'test_accuracy': 0.7, 'test_accuracy_std': 0.01}],
  }
  ax = _drawn(monkeypatch, tmp_path, curves, labels={'supervised': 'IMP, rewind to θ_p'})
  stars = sorted((round(float(line.get_xdata()[0]), 2), round(float(line.get_ydata()[0]), 2))
                 for line in ax.get_lines() if line.get_marker() == '*')
  assert stars == [(51.2, 80.0), (64.0, 89.0)]
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend == ['IMP, rewind to θ_p', 'moco', 'dense from scratch (no pre-training)',
                    'shaded: ±1 std over seeds']  # scratch's band
  scratch = [line for line in ax.get_lines() if line.get_label().startswith('dense from')][0]
  assert list(scratch.get_ydata()) == [70.0, 70.0]  # one horizontal reference line


def test_shared_dense_is_drawn_once_and_judges_every_curve(monkeypatch, tmp_path):
  rows = [{'sparsity': 0.0, 'test_accuracy': 0.9, 'test_accuracy_std': 0.01},
          {'sparsity': 0.2, 'test_accuracy': 0.895}, {'sparsity': 0.36, 'test_accuracy': 0.8}]
  ax = _drawn(monkeypatch, tmp_path, {'magnitude': rows}, dense=[0.89, 0.91])
  stars = [float(line.get_xdata()[0]) for line in ax.get_lines() if line.get_marker() == '*']
  assert stars == pytest.approx([80.0])
  assert [line.get_label() for line in ax.get_lines()].count('dense') == 1
  assert not ax.collections  # the dense band is not drawn again at the curve's first point
