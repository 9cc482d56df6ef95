"""Tests for the paper in miniature (lth_jax.experiments.paper, configs/paper_offline.py)."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from lth_jax import data, errors, experiments, masks as masks_lib, objectives
from lth_jax.experiments import config as defaults
from lth_jax.experiments import paper, upstream
from lth_jax.lottery import imp


@pytest.mark.slow
def test_paper_offline_tiny_end_to_end(tmp_path):
  config = defaults.load_config('paper_offline:tiny')
  out = experiments.run(config, str(tmp_path))
  rows = out['rows']
  by_key = {(r['method'], r['ticket']): r for r in rows}
  assert set(by_key) == {
      ('scratch', 'scratch'), ('supervised', 'dense'), ('supervised', 'round_00'),
      ('supervised', 'round_01'), ('random_global', 'random_global_round_00'),
      ('random_global', 'random_global_round_01'),
      ('random_layerwise', 'random_layerwise_round_00'),
      ('random_layerwise', 'random_layerwise_round_01'), ('moco', 'dense'),
      ('moco', 'round_00'), ('moco', 'round_01')}
  assert all(r['task'] == 'digits' and 0 < r['test_accuracy'] <= 1 for r in rows)
  np.testing.assert_allclose([by_key['supervised', 'round_00']['sparsity'],
                              by_key['moco', 'round_01']['sparsity']], [0.2, 0.36], atol=1e-4)
  for k in (0, 1):
    ticket = imp.load_round_mask(str(tmp_path / 'upstream' / 'supervised' / 'supervised'), k)
    ticket_rows = masks_lib.summary(ticket)
    for method, layerwise in paper.RANDOM_BASELINES.items():
      row = by_key[method, f'{method}_round_{k:02d}']
      # Both baselines keep exactly the ticket's total count ...
      assert row['sparsity'] == ticket_rows['total']['sparsity']
      rand = masks_lib.load(os.path.join(tmp_path, 'random_masks', f'{method}_round_{k:02d}'))
      rand_rows = masks_lib.summary(rand)
      kept = [(rand_rows[n]['kept'], ticket_rows[n]['kept']) for n in ticket_rows
              if n != 'total']
      if layerwise:  # ... the layer profile keeps every layer's count,
        assert all(a == b for a, b in kept)
      else:  # ... random global pruning spreads it evenly over the layers.
        assert sum(a != b for a, b in kept) > len(kept) // 2
        for stage in ('layer1', 'layer4'):
          assert row[f'sparsity_{stage}'] == pytest.approx(row['sparsity'], abs=0.03)
  # The ticket itself prunes layer4 far more than layer1 (global magnitude).
  ticket_row = by_key['supervised', 'round_01']
  assert ticket_row['sparsity_layer4'] - ticket_row['sparsity_layer1'] > 0.1
  # Each pre-training's transfer starts from its own θ_p; scratch from a random init.
  dense = {r['pretraining']: r['test_accuracy'] for r in rows if r['ticket'] == 'dense'}
  assert dense['supervised'] != dense['moco']
  scratch = by_key['scratch', 'scratch']['test_accuracy']
  # The extreme sparsity of every curve, recomputed from the rows (dense mean - 1 std).
  extreme = {(r['method'], r['pretraining']): r for r in out['extreme']}
  assert set(extreme) == {('supervised', 'supervised'), ('random_global', 'supervised'),
                          ('random_layerwise', 'supervised'), ('moco', 'moco')}
  for (method, pretraining), r in extreme.items():
    runs = [x['test_accuracy'] for x in by_key[pretraining, 'dense']['runs']]
    floor = np.mean(runs) - (np.std(runs, ddof=1) if len(runs) > 1 else 0.0)
    matching = [x['sparsity'] for x in rows
                if x['method'] == method and x['pretraining'] == pretraining
                and x['sparsity'] > 0 and x['test_accuracy'] >= floor - 1e-9]
    assert r['extreme_sparsity'] == (max(matching) if matching else None)
    assert r['scratch'] == scratch and r['metric'] == 'accuracy'
    assert r['pretraining_gain'] == pytest.approx(dense[pretraining] - scratch)
    assert r['can_test_claim'] is None  # one seed: no spread to judge the gain by
  for name in ('results.csv', 'extreme_sparsity.csv', 'accuracy_vs_sparsity_digits.png',
               'upstream/moco/pretrain/variables', 'upstream/moco/theta_p.json'):
    assert os.path.exists(tmp_path / name), name

  # The experiment ETA counts every transfer fine-tune: one folder each.
  trained = glob.glob(str(tmp_path / 'transfer' / '**' / 'seed_*'), recursive=True)
  assert len(trained) == len(rows) == paper._transfer_units(
      {'supervised': {'round_00': 0, 'round_01': 0}, 'moco': {'round_00': 0, 'round_01': 0}},
      dict.fromkeys(range(4)), task_imp_rounds=0)
  assert paper._transfer_units({'a': {'r': 0}}, {}, task_imp_rounds=3) == 1 + 2 + 2

  again = experiments.run(config, str(tmp_path))  # finished: read back, not recomputed
  assert [r['test_accuracy'] for r in again['rows']] == [r['test_accuracy'] for r in rows]


def test_every_pretraining_is_transferred_on_the_inputs_it_was_made_with():
  config = defaults.load_config('paper_offline')
  for objective in defaults.split_names(config.paper.pretrainings):
    sub = paper.upstream_config(config, objective)
    objective_fn = objectives.get(objective).build(upstream.settings(sub))
    info = data.get_info(sub.data.dataset)
    if objective == 'supervised':  # the dataset pipeline normalises, as in transfer
      continue
    assert (objective_fn.mean, objective_fn.std) == (info.mean, info.std), objective


@pytest.mark.parametrize('pipeline', ['device', 'host'])
def test_every_pretraining_trains_on_the_pipeline_the_paper_config_resolved(pipeline):
  # The upstream runs once read their data through tf.data whatever the experiment chose.
  config = defaults.load_config('paper_offline')
  config.data.pipeline = pipeline
  for objective in defaults.split_names(config.paper.pretrainings):
    assert paper.upstream_config(config, objective).data.pipeline == pipeline, objective


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


def test_task_specific_imp_refuses_prune_first_before_any_compute(tmp_path):
  """Its round 0 is the dense band: prune_first would record a 20% sparse run as dense."""
  config = defaults.load_config('segmentation_offline:tiny')
  config.imp.prune_first = True
  with pytest.raises(errors.ConfigError,
                     match=r'config\.imp\.prune_first=True.*--config\.imp\.prune_first=False'):
    defaults.validate(config)
  with pytest.raises(errors.ConfigError, match='imp.prune_first'):
    experiments.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)
  config.paper.task_imp_rounds = 0  # no task-specific IMP: the field is not read
  defaults.validate(config)


def test_paper_config_matches_its_docstring():
  config = defaults.load_config('paper_offline')
  assert config.paper.pretrainings.split(',') == ['supervised', 'simclr', 'moco']
  assert config.paper.tasks.split(',') == ['animal_mnist_b_few']
  assert config.pretrain.dataset == 'animal_mnist_a'
  assert data.get_info('animal_mnist_b_few').split_sizes['train'] == 5 * 20
  # The upstream recipe keeps its own batch size; transfer uses the config's.
  assert paper.upstream_config(config, 'moco').data.batch_size == 128 != config.data.batch_size
  assert config.num_seeds == 3 and config.imp.num_rounds == 8
  assert 1 - 0.8 ** config.imp.num_rounds == pytest.approx(0.832, abs=1e-3)

