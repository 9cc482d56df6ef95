"""The cached pre-training (wiring)."""

from __future__ import annotations

import os

import jax
import numpy as np

from lth_jax.experiments import config as config_lib
from lth_jax.experiments import specs, wiring
from lth_jax.models import create_model, init_variables


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


def test_a_finetune_carries_state_from_the_run_it_is_handed(monkeypatch, tmp_path):
  """upstream.keep_state: the optimizer state comes from `continue_from`, as given."""
  config = config_lib.load_config('demo:tiny')
  config.data.pipeline = 'host'  # no dataset is read: `fit` is replaced
  experiment = specs.build(config)
  task, info = wiring.task_and_data(experiment.data, config.data.dataset)
  model = task.build_model(experiment.model, info)
  carried = []
  monkeypatch.setattr(wiring, 'fit', lambda *args, **kwargs: carried.append(
      kwargs['carry_from']))
  run = str(tmp_path / 'run' / 'round_03' / 'seed_0')
  for carry_state in (False, True):
    finetune = wiring.make_finetune(experiment, model, task, info, wiring.mesh_for(experiment),
                                    evaluator=lambda *args: None, carry_state=carry_state)
    for continue_from in (None, str(tmp_path / 'elsewhere')):
      finetune({}, None, seed=0, checkpoint_dir=run, continue_from=continue_from)
  # Only what it is handed: never a folder derived from the checkpoint folder's name.
  assert carried == [None, None, None, str(tmp_path / 'elsewhere')]
