"""The paper-style metric-against-sparsity figure (lth_jax.lottery.results)."""

from __future__ import annotations

import pytest

from lth_jax.lottery import results


def test_ticks_are_one_imp_round_apart():
  assert results.remaining_ticks(100.0) == [100.0]
  ticks = results.remaining_ticks(16.8)
  assert ticks == pytest.approx([100 * 0.8 ** k for k in range(9)])
  assert ticks[-2] > 16.8 >= ticks[-1]
  assert results.remaining_ticks(50, fraction=0.5) == [100.0, 50.0]


def test_figure_is_written_as_png_and_pdf(tmp_path):
  rows = [{'sparsity': 1 - 0.8 ** k, 'test_accuracy': 0.9 - 0.01 * k,
           'test_accuracy_std': 0.005} for k in range(6)]
  random = [{**r, 'test_accuracy': r['test_accuracy'] - 0.03} for r in rows]
  path = results.plot_vs_sparsity(str(tmp_path / 'accuracy_vs_sparsity.png'),
                                  {'magnitude': rows, 'random_global': random},
                                  dense=[0.9, 0.91, 0.89], title='test')
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  assert (tmp_path / 'accuracy_vs_sparsity.pdf').read_bytes()[:4] == b'%PDF'
