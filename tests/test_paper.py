"""Tests for the paper in miniature (lth_jax.paper, configs/paper_offline.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lth_jax import defaults, experiments, imp, masks as masks_lib


def test_paper_offline_tiny_end_to_end(tmp_path):
  config = defaults.load_config('paper_offline:tiny')
  out = experiments.run(config, str(tmp_path))
  rows = out['rows']
  methods = {(r['method'], r['ticket']) for r in rows}
  assert methods == {('supervised', 'dense'), ('supervised', 'round_00'),
                     ('supervised', 'round_01'), ('random', 'random_round_00'),
                     ('random', 'random_round_01'), ('moco', 'dense'), ('moco', 'round_00'),
                     ('moco', 'round_01')}
  assert all(r['task'] == 'digits' and 0 < r['test_accuracy'] <= 1 for r in rows)
  sparsity = {(r['method'], r['ticket']): r['sparsity'] for r in rows}
  np.testing.assert_allclose([sparsity['supervised', 'round_00'], sparsity['moco', 'round_01']],
                             [0.2, 0.36], atol=1e-4)
  # The random baseline has exactly the supervised tickets' prunable counts.
  for k in (0, 1):
    ticket = imp.load_round_mask(str(tmp_path / 'upstream' / 'supervised' / 'supervised'), k)
    assert sparsity['random', f'random_round_{k:02d}'] == masks_lib.sparsity(ticket)
  # Each pre-training's transfer starts from its own θ_p.
  dense = {r['pretraining']: r['test_accuracy'] for r in rows if r['ticket'] == 'dense'}
  assert dense['supervised'] != dense['moco']
  extreme = {(r['method'], r['pretraining']): r for r in out['extreme']}
  assert set(extreme) == {('supervised', 'supervised'), ('random', 'supervised'),
                          ('moco', 'moco')}
  for r in out['extreme']:
    assert r['extreme_sparsity'] is None or r['extreme_sparsity'] in sparsity.values()
  for name in ('results.csv', 'extreme_sparsity.csv', 'accuracy_vs_sparsity_digits.png',
               'upstream/moco/pretrain/variables', 'upstream/moco/theta_p.json'):
    assert os.path.exists(tmp_path / name), name

  again = experiments.run(config, str(tmp_path))  # finished: read back, not recomputed
  assert [r['test_accuracy'] for r in again['rows']] == [r['test_accuracy'] for r in rows]


@pytest.mark.parametrize('field, value, message', [
    ('paper.pretrainings', 'supervised,byol', 'paper.pretrainings'),
    ('paper.tasks', 'mnist5k,imagenet21k', 'paper.tasks'),
    ('paper.transfer_every', 3, 'must be <= imp.num_rounds')])
def test_bad_paper_config_is_refused(tmp_path, field, value, message):
  config = defaults.load_config('paper_offline:tiny')
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    experiments.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_paper_config_matches_its_docstring():
  config = defaults.load_config('paper_offline')
  assert config.paper.pretrainings.split(',') == ['supervised', 'simclr', 'moco']
  assert config.paper.tasks.split(',') == ['mnist5k', 'digits']
  assert config.num_seeds == 3 and config.imp.num_rounds == 8
  assert 1 - 0.8 ** config.imp.num_rounds == pytest.approx(0.832, abs=1e-3)

