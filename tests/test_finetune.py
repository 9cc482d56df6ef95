"""The previous IMP round's folder (lottery.imp) and the cached pre-training (wiring)."""

from __future__ import annotations

import os

import jax
import numpy as np

from lth_jax.experiments import wiring
from lth_jax.lottery import imp
from lth_jax.models import create_model, init_variables


def test_previous_round_dir(tmp_path):
  run = tmp_path / 'moco'
  (run / 'round_02' / 'seed_0').mkdir(parents=True)
  assert imp.previous_round_dir(str(run / 'round_03' / 'seed_0')) == str(
      run / 'round_02' / 'seed_0')
  assert imp.previous_round_dir(str(run / 'round_03' / 'seed_1')) is None  # absent
  assert imp.previous_round_dir(str(run / 'round_00' / 'seed_0')) is None
  assert imp.previous_round_dir(str(tmp_path / 'pretrain' / 'train')) is None


class _Fit:
  def __init__(self, variables):
    self.variables, self.metric, self.test = variables, 'accuracy', 0.5


def test_pretrain_once_trains_once_then_reads_the_cache(tmp_path):
  model = create_model('resnet18', num_classes=3, stem='cifar', width_multiplier=0.125)
  like = jax.device_get(init_variables(model, jax.random.key(0), 8))
  calls = []

  def fake_finetune(variables, masks, *, seed, checkpoint_dir, rewind_step=None):
    calls.append((seed, checkpoint_dir, masks))
    return _Fit(jax.tree.map(lambda x: x + 1, variables))

  first = wiring.pretrain_once(str(tmp_path), like, fake_finetune, seed=4, description='x')
  again = wiring.pretrain_once(str(tmp_path), like, fake_finetune, seed=4, description='x')
  assert calls == [(4, os.path.join(str(tmp_path), 'pretrain', 'train'), None)]
  for a, b, c in zip(*map(jax.tree.leaves, (first, again, like))):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c + 1)
