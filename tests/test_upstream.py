"""Tests for upstream IMP: contrastive objectives in the train step, lth_jax.experiments.upstream.

MoCo's key encoder under masks, one device against eight, state carried between
runs, checkpoints with and without heads, and small end-to-end upstream IMP runs on
the offline digits.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lth_jax import data, experiments, masks as masks_lib, objectives, pruning
from lth_jax.experiments import config as defaults
from lth_jax.experiments import upstream
from lth_jax.interop import checkpoints as convert
from lth_jax.interop import mask_files
from lth_jax.objectives import contrastive
from lth_jax.objectives import views as augment
from lth_jax.runtime import sharding
from lth_jax.tasks.classification import cross_entropy
from lth_jax.training import optim
from lth_jax.training import steps as train
from lth_jax.training import evaluators
from lth_jax.training.evaluators import knn_evaluator, linear_probe_evaluator
from lth_jax.models import create_model, init_variables

IMAGE, BATCH, QUEUE = 12, 16, 40  # 40 is no multiple of 16: batches wrap around the queue
MOCO = contrastive.MoCo(momentum=0.9, queue_size=QUEUE)
SIMCLR = contrastive.SimCLR()


@pytest.fixture(scope='module')
def tiny():
  """A tiny ResNet-18 with the MLP head, its variables and a ~50% random mask."""
  model = create_model('resnet18', num_classes=16, stem='cifar', width_multiplier=0.125,
                       head='mlp')
  variables = jax.device_get(init_variables(model, jax.random.key(0), IMAGE))
  masks = pruning.random(jax.random.key(1), masks_lib.init(variables['params']), 0.5)
  return model, variables, jax.device_get(masks)


def recipe():
  return optim.Recipe(learning_rate=0.05, weight_decay=5e-3, schedule='constant',
                      warmup_epochs=0, num_epochs=1)


def images(seed):
  return {'image': np.random.default_rng(seed).random((BATCH, IMAGE, IMAGE, 3), np.float32)}


def start(steps, variables, masks, rng=None, carry=None):
  mesh = steps.mesh
  return steps.init(sharding.replicate(variables['params'], mesh),
                    sharding.replicate(variables['batch_stats'], mesh),
                    sharding.replicate(masks, mesh), rng, carry)


def test_moco_key_encoder_follows_by_momentum_under_the_query_mask(tiny):
  model, variables, masks = tiny
  steps = train.make_train_steps(model, recipe(), 100, objective=MOCO)
  state = start(steps, variables, masks, jax.random.key(2))
  mesh_masks = sharding.replicate(masks, steps.mesh)
  want = jax.tree.map(lambda p, m: np.where(m, p, 0).astype(np.float64), variables['params'],
                      masks)
  np.testing.assert_array_equal(jax.tree.leaves(state.extra['key_params'])[5],
                                jax.tree.leaves(want)[5])
  for step in range(25):
    state, metrics = steps.train(state, mesh_masks, sharding.shard_batch(images(step), steps.mesh))
    query = jax.device_get(state.params)
    want = jax.tree.map(lambda k, q, m: np.where(m, 0.9 * k + 0.1 * q, 0), want, query, masks)
  key_params = jax.device_get(state.extra['key_params'])
  for k, w, q, m in zip(*map(jax.tree.leaves, (key_params, want, query, masks))):
    np.testing.assert_allclose(k, w, rtol=1e-4, atol=1e-6)
    assert not k[~m].any() and not q[~m].any()  # pruned: exactly zero in both encoders
  assert not np.allclose(jax.tree.leaves(key_params)[3], jax.tree.leaves(query)[3])
  assert int(state.extra['queue_pointer']) == 25 * BATCH % QUEUE
  np.testing.assert_allclose(np.linalg.norm(state.extra['queue'], axis=1), 1.0, rtol=1e-5)
  assert np.isfinite(float(metrics['loss'])) and 'contrastive_accuracy' in metrics


@pytest.mark.parametrize('objective', [MOCO, SIMCLR], ids=['moco', 'simclr'])
def test_contrastive_step_on_eight_devices_equals_one(tiny, objective):
  # Dense: a randomly pruned tiny network has channels whose pre-activations sit exactly
  # on ReLU's kink, where the float rounding of a different reduction order flips the
  # gradient (by several % on either jax 0.10 or 0.12); the masked step is tested above.
  model, variables, _ = tiny
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    steps = train.make_train_steps(model, recipe(), 100, sharding.make_mesh(devices),
                                   objective=objective)
    state = start(steps, variables, None, jax.random.key(3))
    for step in range(2):
      state, metrics = steps.train(state, None, sharding.shard_batch(images(step), steps.mesh))
    results.append(jax.device_get((state.params, state.extra, metrics)))
  (params_1, extra_1, metrics_1), (params_8, extra_8, metrics_8) = results
  np.testing.assert_allclose(metrics_8['loss'], metrics_1['loss'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves((params_8, extra_8)), jax.tree.leaves((params_1, extra_1))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_init_carries_optimizer_state_and_queue_but_not_the_key_encoder(tiny):
  model, variables, masks = tiny
  steps = train.make_train_steps(model, recipe(), 100, objective=MOCO)
  state = start(steps, variables, masks, jax.random.key(2))
  state, _ = steps.train(state, sharding.replicate(masks, steps.mesh),
                         sharding.shard_batch(images(0), steps.mesh))
  previous = jax.device_get(state)
  fewer = pruning.global_magnitude(variables['params'], masks, 0.2)
  carried = jax.device_get(start(steps, variables, fewer, jax.random.key(4),
                                 sharding.replicate(previous, steps.mesh)))
  np.testing.assert_array_equal(carried.extra['queue'], previous.extra['queue'])
  assert int(carried.extra['queue_pointer']) == BATCH
  for a, b in zip(jax.tree.leaves(carried.opt_state), jax.tree.leaves(previous.opt_state)):
    np.testing.assert_array_equal(a, b)
  rewound = masks_lib.apply(variables['params'], fewer)
  for a, b in zip(jax.tree.leaves(carried.extra['key_params']), jax.tree.leaves(rewound)):
    np.testing.assert_array_equal(a, b)
  fresh = jax.device_get(start(steps, variables, fewer, jax.random.key(4)))
  assert int(fresh.extra['queue_pointer']) == 0
  assert not np.array_equal(fresh.extra['queue'], previous.extra['queue'])


def test_checkpoints_load_with_the_heads_the_objective_needs(tmp_path):
  config = defaults.load_config('moco_imp:demo')
  config.data.dataset = 'digits'
  config.model.width_multiplier = 0.125
  model = upstream.build_model(experiments.specs.build(config))
  query = jax.device_get(init_variables(model, jax.random.key(5), 8))
  key_encoder = jax.device_get(init_variables(model, jax.random.key(6), 8))
  state_dict = {f'module.encoder_q.{k}': v for k, v in convert.to_pytorch(query).items()}
  state_dict.update({f'module.encoder_k.{k}': v
                     for k, v in convert.to_pytorch(key_encoder).items()})
  state_dict['module.queue'] = np.zeros((16, 8), np.float32)
  np.savez(tmp_path / 'moco.npz', **state_dict)
  config.pretrained.update(source='moco', path=str(tmp_path / 'moco.npz'))
  mesh = sharding.make_mesh()
  loaded = upstream.start_variables(experiments.specs.build(config), model, None,
                                    str(tmp_path), mesh)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(query)):
    np.testing.assert_array_equal(a, b)  # the MLP head included, never the key encoder

  headless = {k: v for k, v in convert.to_pytorch(query).items() if not k.startswith('fc')}
  np.savez(tmp_path / 'simclr.npz', **headless)
  config.upstream.objective = 'simclr'
  config.pretrained.update(source='simclr', path=str(tmp_path / 'simclr.npz'))
  loaded = upstream.start_variables(experiments.specs.build(config), model, None,
                                    str(tmp_path), mesh)
  assert not np.allclose(loaded['params']['fc_0']['kernel'], query['params']['fc_0']['kernel'])
  np.testing.assert_array_equal(loaded['params']['layer4_1']['conv2']['kernel'],
                                query['params']['layer4_1']['conv2']['kernel'])


def _numpy_features(model, variables, split):
  """The digits split's L2-normalised pooled features (float64) and labels, in numpy."""
  batches = list(data.eval_batches('digits', split, batch_size=64))
  image, label, mask = (np.concatenate([b[k] for b in batches])
                        for k in ('image', 'label', 'mask'))
  f = np.asarray(model.clone(head='none').apply(variables, image), np.float64)[mask > 0]
  return f / np.linalg.norm(f, axis=1, keepdims=True), label[mask > 0]


def test_the_linear_probe_fit_is_scikit_learns_logistic_regression():
  from sklearn.linear_model import LogisticRegression
  rng = np.random.RandomState(0)
  x = rng.randn(400, 12).astype(np.float32)
  y = (x @ rng.randn(12, 4) + rng.randn(400, 4)).argmax(1)   # not separable
  for weight_decay in evaluators.PROBE_WEIGHT_DECAYS:
    weights, bias = evaluators._fit_probe(x, y, 4, weight_decay, 100)
    # sklearn minimises C * sum(loss) + |W|^2 / 2 (the bias free), ours mean(loss) + wd |W|^2.
    reference = LogisticRegression(C=1 / (2 * len(x) * weight_decay), tol=1e-10,
                                   max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(np.asarray(weights), reference.coef_.T, atol=2e-3)
    np.testing.assert_allclose(np.asarray(bias), reference.intercept_, atol=2e-3)


def test_the_linear_probe_picks_its_penalty_on_val_and_fits_once_per_variables(monkeypatch):
  model = create_model('resnet18', num_classes=16, stem='cifar', in_channels=1,
                       width_multiplier=0.125, head='mlp')
  variables = jax.device_get(init_variables(model, jax.random.key(7), 8))
  reads, fits = [], []
  real_eval_batches, real_fit = data.eval_batches, evaluators._fit_probe
  read = lambda split: reads.append(split) or real_eval_batches('digits', split, batch_size=64)
  monkeypatch.setattr(evaluators, '_fit_probe', lambda *a: fits.append(a[3]) or real_fit(*a))
  evaluate = linear_probe_evaluator(model, read, num_classes=10, mesh=sharding.make_mesh(),
                                    weight_decays=(1e-4, 1e-1))
  # As fit calls it: 'val' and 'test' of one epoch with the same replicated variables.
  placed = sharding.replicate(variables, sharding.make_mesh())
  got = {split: evaluate(placed, split) for split in ('val', 'test')}
  assert reads == ['train', 'val', 'test'] and len(fits) == 1   # one (vmapped) fit, traced once

  x, y = _numpy_features(model, variables, 'train')
  mean, std = x.mean(0), x.std(0) + 1e-6
  fitted = [real_fit(((x - mean) / std).astype(np.float32), y, 10, wd, 100)
            for wd in (1e-4, 1e-1)]
  accuracy = {split: [np.mean(np.argmax(((f - mean) / std) @ np.asarray(w) + np.asarray(b), 1)
                              == label) for w, b in fitted]
              for split, (f, label) in ((s, _numpy_features(model, variables, s))
                                        for s in ('val', 'test'))}
  best = int(np.argmax(accuracy['val']))
  assert accuracy['val'][0] != accuracy['val'][1]   # the choice matters here
  for split in ('val', 'test'):
    assert got[split]['weight_decay'] == (1e-4, 1e-1)[best]
    assert got[split]['accuracy'] == pytest.approx(accuracy[split][best], abs=1e-9)


def test_knn_evaluator_equals_numpy(monkeypatch):
  model = create_model('resnet18', num_classes=16, stem='cifar', in_channels=1,
                       width_multiplier=0.125, head='mlp')
  variables = jax.device_get(init_variables(model, jax.random.key(7), 8))
  reads = []
  real_eval_batches = data.eval_batches
  monkeypatch.setattr(upstream.data, 'eval_batches',
                      lambda name, split, **kw: reads.append(split) or real_eval_batches(
                          name, split, **kw))
  mesh = sharding.make_mesh()
  read = lambda split: upstream.data.eval_batches('digits', split, batch_size=64)
  evaluate = knn_evaluator(model, read, num_classes=10, mesh=mesh, k=5, temperature=0.1,
                           bank_size=300)
  got = evaluate(variables, 'test')
  # fit evaluates 'val' and 'test' of one epoch with the same (replicated) variables: the
  # memory bank of train features is built once for both, and again for new variables.
  placed = sharding.replicate(variables, mesh)
  reads.clear()
  evaluate(placed, 'val')
  assert evaluate(placed, 'test') == got
  assert reads == ['train', 'val', 'test']
  evaluate(sharding.replicate(jax.tree.map(lambda x: x * 1.5, variables), mesh), 'val')
  assert reads == ['train', 'val', 'test', 'train', 'val']

  bank, bank_labels = (x[:300] for x in _numpy_features(model, variables, 'train'))
  query, labels = _numpy_features(model, variables, 'test')
  similarity = query @ bank.T
  nearest = np.argsort(-similarity, axis=1)[:, :5]
  votes = np.zeros((len(query), 10))
  for i, row in enumerate(nearest):
    np.add.at(votes[i], bank_labels[row], np.exp(similarity[i, row] / 0.1))
  probability = votes / votes.sum(1, keepdims=True)
  assert got['accuracy'] == pytest.approx(np.mean(votes.argmax(1) == labels))
  assert got['loss'] == pytest.approx(
      -np.mean(np.log(probability[np.arange(len(labels)), labels] + 1e-12)), rel=1e-4)


def tiny_upstream(objective, **overrides):
  """The demo config of an objective shrunk to seconds: digits, width 1/16, one epoch."""
  c = defaults.load_config(f'{objective}_imp:demo')
  c.data.dataset = c.pretrain.dataset = 'digits'
  c.model.width_multiplier = 0.0625
  c.data.batch_size = c.data.eval_batch_size = 64
  c.pretrain.optim.num_epochs = 1
  c.upstream.queue_size = 256
  c.imp.num_rounds = 1
  c.update_from_flattened_dict(overrides)
  return c


def _round_state(run_dir, k):
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(run_dir, f'round_{k:02d}',
                                                               'seed_0')))
  try:
    restored = manager.restore(manager.latest_step(),
                               args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  finally:
    manager.close()
  return restored['state']


@pytest.mark.slow
def test_moco_upstream_imp_end_to_end(tmp_path):
  config = tiny_upstream('moco', **{'imp.num_rounds': 2, 'upstream.keep_state': True})
  out = experiments.run(config, str(tmp_path))
  run_dir = out['run_dir']
  assert [r['round'] for r in out['records']] == [0, 1]
  np.testing.assert_allclose([r['sparsity'] for r in out['records']], [0.2, 0.36], atol=1e-4)
  assert 0 < out['theta_p']['test_accuracy'] <= 1
  assert all(0 < r['test_accuracy'] <= 1 for r in out['records'])
  for name in ('results.csv', 'theta_p.json', 'accuracy_vs_sparsity.png',
               os.path.join('pretrain', 'variables')):
    assert os.path.exists(tmp_path / name), name
  tickets = [masks_lib.load(os.path.join(run_dir, f'round_{k:02d}', 'mask')) for k in range(3)]
  for earlier, later in zip(tickets, tickets[1:]):
    assert all(not (b & ~a).any() for a, b in zip(*map(jax.tree.leaves, (earlier, later))))
  torch_installed = importlib.util.find_spec('torch') is not None
  for k, ticket in enumerate(tickets):
    files = ['mask_torch.npz'] + (['mask_torch.pth'] if torch_installed else [])
    for name in files:
      path = os.path.join(run_dir, f'round_{k:02d}', name)
      # ResNet-18: 16 block convs and 3 downsample convs.
      assert len(masks_lib.prunable_leaves(mask_files.from_pytorch(path))) == 19
      from_torch = mask_files.from_pytorch(path, like=ticket)
      assert all(np.array_equal(a, b)
                 for a, b in zip(*map(jax.tree.leaves, (from_torch, ticket))))
  if torch_installed:
    import torch
    state = torch.load(os.path.join(run_dir, 'round_01', 'mask_torch.pth'), weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())  # as torch's prune
  # keep_state: round 1 continued round 0's queue, 19 batches of 64 per epoch.
  steps = 1266 // 64
  assert int(_round_state(run_dir, 0)['extra']['queue_pointer']) == steps * 64 % 256
  assert int(_round_state(run_dir, 1)['extra']['queue_pointer']) == 2 * steps * 64 % 256

  again = experiments.run(config, str(tmp_path))  # finished: read back, not recomputed
  assert again['records'] == out['records']


@pytest.mark.slow
def test_supervised_upstream_imp_prunes_theta_p_and_trains_the_round(tmp_path):
  # MoCo's real run is the test above; SimCLR's step is test_contrastive_step_*, and its
  # upstream run on fake fine-tunes test_registries.py's SNIP test.
  config = tiny_upstream('supervised', **{'pretrained.source': 'random'})
  out = experiments.run(config, str(tmp_path))
  assert len(out['records']) == 1 and out['records'][0]['sparsity'] == pytest.approx(0.2, 1e-3)
  assert os.path.isdir(os.path.join(out['run_dir'], 'round_01', 'mask'))


@pytest.mark.parametrize('field, value, message', [
    ('upstream.objective', 'byol', 'choose one of'),
    ('upstream.queue_size', 32, 'at least one global batch'),
    ('pretrain.dataset', 'mnist5k', "continues θ_p's pre-training on its own task"),
    ('imp.rewind', 'step', "rewinds to θ_p"),
    ('imp.random_baseline', True, 'runs no random-pruning branch'),
    ('dense_seeds', 2, 'prune_first prunes θ_p before it, so no round is dense'),
    ('upstream.views', 'byol', 'choose one of')])
def test_bad_upstream_config_is_refused(tmp_path, field, value, message):
  config = tiny_upstream('moco', **{field: value})
  with pytest.raises(ValueError, match=message):
    experiments.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)  # refused before anything was written


def make_objective(config):
  return objectives.get(config.upstream.objective).build(upstream.settings(config))


def test_objectives_from_configs():
  moco = make_objective(defaults.load_config('moco_imp'))
  assert (moco.temperature, moco.momentum, moco.queue_size) == (0.2, 0.999, 65536)
  assert moco.views == augment.MOCO_V2 and moco.mean == (0.485, 0.456, 0.406)
  simclr = make_objective(defaults.load_config('simclr_imp'))
  assert simclr.temperature == 0.5 and simclr.views == augment.SIMCLR and simclr.mean is None
  demo = make_objective(defaults.load_config('moco_imp:demo'))
  assert demo.views.blur_prob == 0 and demo.views.crop_scale == (0.2, 1.0)
  assert demo.queue_size == 2048 and demo.mean == (0.2748,)
  assert make_objective(defaults.load_config('supervised_imp')) is cross_entropy


@pytest.mark.parametrize('name', ['supervised_imp', 'simclr_imp', 'moco_imp'])
def test_paper_configs(name):
  config = defaults.load_config(name)
  assert config.mode == 'upstream' and config.imp.prune_first and config.imp.num_rounds == 18
  assert (config.model.arch, config.data.dataset, config.data.batch_size,
          config.optim.num_epochs) == ('resnet50', 'imagenet2012', 256, 10)
  with pytest.raises(ValueError, match='Unknown variant'):
    defaults.load_config(f'{name}:paper')
