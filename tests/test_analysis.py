"""Tests for lth_jax.analysis and the `python -m lth_jax.analyze` command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import analysis, masks, pruning, training
from lth_jax.models import create_model


def _random_params(seed: int) -> dict:
  model = create_model('resnet18', num_classes=10, stem='cifar', width_multiplier=0.125)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)),
                      shapes['params'])


def _layered_masks(params: dict, seed: int) -> dict:
  """Random masks whose density differs from layer to layer (0.1 .. 0.9)."""
  rng = np.random.default_rng(seed)
  prunable = masks.prunable_leaves(params)
  densities = np.linspace(0.1, 0.9, len(prunable))
  rng.shuffle(densities)
  return masks.replace_leaves(masks.init(params), {
      name: jnp.asarray(rng.random(p.shape) < d)
      for (name, p), d in zip(prunable.items(), densities)})


def _counts(tree: dict) -> dict[str, int]:
  return {n: int(np.count_nonzero(m)) for n, m in masks.prunable_leaves(tree).items()}


def _tree_equal(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope='module')
def params() -> dict:
  return _random_params(0)


@pytest.fixture(scope='module')
def tickets(params) -> dict:
  return {'a': _layered_masks(params, 1), 'b': _layered_masks(params, 2),
          'c': _layered_masks(params, 3)}


# ------------------------------------------------------------------------------ structure


def test_overlap_matrix_is_symmetric_with_ones_on_the_diagonal(tickets):
  names, iou, expected = analysis.overlap_matrix(tickets)
  assert names == ['a', 'b', 'c']
  np.testing.assert_array_equal(iou, iou.T)
  np.testing.assert_array_equal(expected, expected.T)
  np.testing.assert_array_equal(np.diag(iou), 1.0)
  assert iou[0, 1] == masks.overlap(tickets['a'], tickets['b'])['total']['iou']
  # Independent random masks: the measured IoU sits near the random expectation.
  assert abs(iou[0, 1] - expected[0, 1]) < 0.02
  layer = 'layer2_0/conv1/kernel'
  _, iou_layer, _ = analysis.overlap_matrix(tickets, layer=layer)
  assert iou_layer[1, 2] == masks.overlap(tickets['b'], tickets['c'])[layer]['iou']
  with pytest.raises(ValueError, match='Unknown layer'):
    analysis.overlap_matrix(tickets, layer='layer9_0/conv1/kernel')


def test_expected_random_iou_matches_monte_carlo(tickets):
  a, b = tickets['a'], tickets['b']
  rows = analysis.pairwise_overlap(a, b)
  n = 30
  samples = [masks.overlap(analysis.shuffle_layerwise(jax.random.key(2 * i), a),
                           analysis.shuffle_layerwise(jax.random.key(2 * i + 1), b))
             for i in range(n)]
  for layer, row in rows.items():
    measured = np.array([s[layer]['iou'] for s in samples])
    # The per-layer IoU of the smallest layers (576 weights) varies by ~0.02.
    assert abs(measured.mean() - row['expected_iou']) < 0.015, layer
    intersections = np.array([s[layer]['intersection'] for s in samples])
    sem = intersections.std() / np.sqrt(n) + 1e-9
    assert abs(intersections.mean() - row['expected_intersection']) < 5 * sem + 1, layer
  assert rows['total']['expected_intersection'] == pytest.approx(
      sum(r['kept_a'] * r['kept_b'] / r['total'] for k, r in rows.items() if k != 'total'))


def test_layer_sparsity_profile_matches_summary(tickets):
  profile = analysis.layer_sparsity(tickets)
  summary = masks.summary(tickets['b'])
  assert list(profile) == list(summary)
  for layer, row in profile.items():
    assert row['b'] == summary[layer]['sparsity']
    assert row['total'] == summary[layer]['total']


def test_kernel_density_and_structure_on_a_handmade_mask(params):
  layer = 'layer1_0/conv1/kernel'  # 3x3, 8 -> 8
  m = np.ones((3, 3, 8, 8), bool)
  m[:, :, 0, 0] = False           # kernel in 0 -> out 0 pruned whole
  m[:, :, 1, 2] = False
  m[0, :, 1, 2] = True            # kernel 1 -> 2 keeps 3 of 9
  m[:, :, 5, 7] = False
  m[1, 1, 5, 7] = True            # kernel 5 -> 7 keeps its centre only
  tree = masks.replace_leaves(masks.init(params), {layer: jnp.asarray(m)})
  density = analysis.kernel_density(tree, layer)
  want = np.ones((8, 8))
  want[0, 0], want[1, 2], want[5, 7] = 0.0, 3 / 9, 1 / 9
  np.testing.assert_allclose(density, want)
  rows = analysis.kernel_structure(tree)
  assert rows[layer] == {'stage': 'layer1', 'kernels': 64, 'empty': 1, 'fraction': 1 / 64}
  assert 'layer2_0/downsample_conv/kernel' not in rows  # 1x1: no kernels to empty
  assert rows['layer1'] == {'stage': 'layer1', 'kernels': 4 * 64, 'empty': 1,
                            'fraction': 1 / 256}
  assert rows['layer2']['empty'] == 0
  total = sum(r['kernels'] for n, r in rows.items() if '/' in n)
  assert rows['total'] == {'stage': 'total', 'kernels': total, 'empty': 1,
                           'fraction': 1 / total}
  with pytest.raises(ValueError, match='not a prunable conv kernel'):
    analysis.kernel_density(tree, 'conv1/kernel')


def test_group_by_sparsity():
  groups = analysis.group_by_sparsity(
      {'x0': 0.0, 'x1': 0.2, 'y1': 0.19997, 'x2': 0.36, 'y2': 0.3601, 'z': 0.488})
  assert [keys for _, keys in groups] == [['x0'], ['x1', 'y1'], ['x2', 'y2'], ['z']]
  assert groups[2][0] == pytest.approx(0.36005)


# --------------------------------------------------------------------------- perturbation


def test_shuffle_keeps_each_layer_count(tickets):
  a = tickets['a']
  shuffled = analysis.shuffle_layerwise(jax.random.key(0), a)
  assert jax.tree.structure(shuffled) == jax.tree.structure(a)
  assert _counts(shuffled) == _counts(a)
  rows = masks.overlap(a, shuffled)
  assert all(r['hamming'] > 0 for n, r in rows.items())
  prunable = set(masks.prunable_paths(a))
  for path, leaf in jax.tree_util.tree_flatten_with_path(shuffled)[0]:
    if masks.path_str(path) not in prunable:
      assert np.all(leaf)


@pytest.mark.parametrize('fraction', [0.0, 0.3, 1.0])
def test_swap_keeps_counts_and_changes_exactly_the_asked_positions(tickets, fraction):
  a = tickets['a']
  swapped = analysis.swap(jax.random.key(1), a, fraction)
  assert _counts(swapped) == _counts(a)
  for name, row in masks.overlap(a, swapped).items():
    if name != 'total':
      assert row['hamming'] == 2 * analysis.swap_count(row['kept_a'], row['total'], fraction)
  if fraction == 1.0:  # the smaller side moves entirely
    for name, m in masks.prunable_leaves(a).items():
      s = np.asarray(masks.prunable_leaves(swapped)[name])
      small = m if np.count_nonzero(m) <= m.size / 2 else ~np.asarray(m)
      assert not np.any(np.asarray(m)[small] == s[small])


def test_swap_of_a_larger_fraction_extends_the_smaller_one(tickets):
  a = masks.prunable_leaves(tickets['c'])
  small = masks.prunable_leaves(analysis.swap(jax.random.key(3), tickets['c'], 0.2))
  large = masks.prunable_leaves(analysis.swap(jax.random.key(3), tickets['c'], 0.6))
  for name, m in a.items():
    changed_small = np.asarray(small[name]) != np.asarray(m)
    changed_large = np.asarray(large[name]) != np.asarray(m)
    assert np.all(changed_large[changed_small])


@pytest.mark.parametrize('bad', [-0.1, 1.5, True, 'half'])
def test_swap_refuses_a_bad_fraction(tickets, bad):
  with pytest.raises(ValueError, match='fraction must be a number in'):
    analysis.swap(jax.random.key(0), tickets['a'], bad)


def test_gaussian_noise_keeps_pruned_zero_with_each_layer_std(params, tickets):
  m = tickets['a']
  scale = 0.5
  noisy = analysis.gaussian_noise(jax.random.key(0), params, m, scale)
  prunable = masks.prunable_leaves(params)
  for name, w in prunable.items():
    keep = np.asarray(masks.prunable_leaves(m)[name])
    out = np.asarray(masks.prunable_leaves(noisy)[name])
    assert np.all(out[~keep] == 0)
    noise = out[keep] - np.asarray(w)[keep]
    if noise.size >= 2000:
      assert noise.std() == pytest.approx(scale * np.asarray(w).std(), rel=0.08), name
      assert abs(noise.mean()) < 0.1 * scale * np.asarray(w).std()
  for (path, leaf), before in zip(jax.tree_util.tree_flatten_with_path(noisy)[0],
                                  jax.tree.leaves(params)):
    if masks.path_str(path) not in prunable:
      np.testing.assert_array_equal(leaf, before)
  assert _tree_equal(analysis.gaussian_noise(jax.random.key(0), params, m, 0.0),
                     masks.apply(params, m))
  with pytest.raises(ValueError, match='scale must be'):
    analysis.gaussian_noise(jax.random.key(0), params, m, -1.0)


def test_reinit_replaces_the_asked_share_of_kept_weights(params, tickets):
  m, fresh = tickets['b'], _random_params(7)
  for fraction in (0.5, 1.0):
    out = analysis.reinit(jax.random.key(0), params, m, fresh, fraction)
    for name, w in masks.prunable_leaves(params).items():
      keep = np.asarray(masks.prunable_leaves(m)[name])
      o = np.asarray(masks.prunable_leaves(out)[name])
      f = np.asarray(masks.prunable_leaves(fresh)[name])
      assert np.all(o[~keep] == 0)
      from_fresh = (o == f) & keep
      assert np.count_nonzero(from_fresh) == round(fraction * np.count_nonzero(keep))
      np.testing.assert_array_equal(o[keep & ~from_fresh], np.asarray(w)[keep & ~from_fresh])
    np.testing.assert_array_equal(out['fc']['kernel'], params['fc']['kernel'])


def test_perturb_size_zero_is_the_ticket_and_bad_kinds_are_refused(params, tickets):
  m = tickets['c']
  variables = {'params': params, 'batch_stats': {'bn1': {'mean': jnp.ones(3)}}}
  want = masks.apply(params, m)
  for kind in analysis.PERTURBATIONS:
    v, out = analysis.perturb(kind, jax.random.key(0), 0, variables, m,
                              fresh_params=_random_params(5))
    assert _tree_equal(out, m), kind
    assert _tree_equal(v['params'], want), kind
    assert v['batch_stats'] is variables['batch_stats']
  v, shuffled = analysis.perturb('mask_shuffle', jax.random.key(0), 1, variables, m)
  assert _counts(shuffled) == _counts(m) and not _tree_equal(shuffled, m)
  assert _tree_equal(v['params'], masks.apply(params, shuffled))
  with pytest.raises(ValueError, match='size 0 or 1'):
    analysis.perturb('mask_shuffle', jax.random.key(0), 0.5, variables, m)
  with pytest.raises(ValueError, match='needs fresh_params'):
    analysis.perturb('weight_reinit', jax.random.key(0), 0.5, variables, m)
  with pytest.raises(ValueError, match='Unknown perturbation'):
    analysis.perturb('dropout', jax.random.key(0), 0.5, variables, m)


def test_error_barrier_of_handmade_curves():
  assert analysis.error_barrier([0.1, 0.3, 0.5, 0.2]) == pytest.approx(0.5 - 0.15)
  assert analysis.error_barrier([0.2, 0.1, 0.2]) == 0.0
  assert analysis.error_barrier([0.1, 0.3]) == pytest.approx(0.1)
  with pytest.raises(ValueError, match='both endpoints'):
    analysis.error_barrier([0.3])


def test_interpolate_endpoints_midpoint_and_zeros():
  a = {'params': {'w': jnp.array([0.0, 2.0, 4.0])}, 'batch_stats': {'m': jnp.array([1.0])}}
  b = {'params': {'w': jnp.array([0.0, 4.0, 0.0])}, 'batch_stats': {'m': jnp.array([3.0])}}
  assert _tree_equal(analysis.interpolate(a, b, 0.0), a)
  assert _tree_equal(analysis.interpolate(a, b, 1.0), b)
  mid = analysis.interpolate(a, b, 0.5)
  np.testing.assert_array_equal(mid['params']['w'], [0.0, 3.0, 2.0])
  np.testing.assert_array_equal(mid['batch_stats']['m'], [2.0])
  with pytest.raises(ValueError, match='same tree structure'):
    analysis.interpolate(a, {'params': b['params']}, 0.5)


# A toy classifier stands for the fine-tuning: softmax regression on fixed synthetic
# data, a few SGD steps in a data order given by the seed, pruned weights kept zero.
_POLICY = r'kernel$'
_RNG = np.random.default_rng(0)
_X = _RNG.standard_normal((96, 6)).astype(np.float32)
_Y = np.argmax(_X @ _RNG.standard_normal((6, 3)), axis=1)


def _toy_accuracy(variables) -> float:
  p = variables['params']['dense']
  logits = _X @ np.asarray(p['kernel']) + np.asarray(p['bias'])
  return float(np.mean(np.argmax(logits, axis=1) == _Y))


def _toy_finetune(calls: list):
  def loss(p, x, y):
    logits = x @ p['dense']['kernel'] + p['dense']['bias']
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

  grad = jax.jit(jax.grad(loss))

  def finetune(variables, m, *, seed, checkpoint_dir):
    calls.append({'seed': seed, 'checkpoint_dir': checkpoint_dir, 'masks': m,
                  'params': variables['params']})
    p = variables['params']
    order = np.random.default_rng(seed).permutation(len(_X))
    for step in range(12):
      idx = order[(step * 16) % len(_X):][:16]
      g = grad(p, _X[idx], _Y[idx])
      p = masks.apply(jax.tree.map(lambda w, d: w - 2.0 * d, p, g), m)
    out = {'params': p, 'batch_stats': {'count': jnp.asarray(float(seed))}}
    acc = _toy_accuracy(out)
    return training.FitResult(metric='accuracy', best_val=acc, best_epoch=1, test=acc, test_metrics={'accuracy': acc},
                           history=[], variables=out, rewind_variables=None)

  return finetune


def _toy_ticket():
  params = {'dense': {'kernel': jnp.asarray(_RNG.standard_normal((6, 3)), jnp.float32),
                      'bias': jnp.zeros(3)}}
  m = masks.replace_leaves(masks.init(params, _POLICY),
                           {'dense/kernel': jnp.asarray(_RNG.random((6, 3)) < 0.6)})
  return {'params': params, 'batch_stats': {'count': jnp.asarray(0.0)}}, m


def test_linear_mode_connectivity_with_a_toy_finetune(tmp_path):
  variables, m = _toy_ticket()
  calls = []
  seen = []

  def evaluate(v):
    seen.append(v)
    return _toy_accuracy(v)

  result = analysis.linear_mode_connectivity(variables, m, _toy_finetune(calls), evaluate,
                                             str(tmp_path), seeds=(3, 4), num_points=5)
  assert [c['checkpoint_dir'] for c in calls] == [str(tmp_path / 'seed_3'),
                                                  str(tmp_path / 'seed_4')]
  assert result['alpha'] == [0.0, 0.25, 0.5, 0.75, 1.0]
  assert result['error'][0] == pytest.approx(1 - result['test_accuracy'][0])
  assert result['error'][-1] == pytest.approx(1 - result['test_accuracy'][1])
  assert result['barrier'] == analysis.error_barrier(result['error'])
  assert [float(v['batch_stats']['count']) for v in seen] == [3.0, 3.25, 3.5, 3.75, 4.0]
  pruned = ~np.asarray(m['dense']['kernel'])
  assert all(np.all(np.asarray(v['params']['dense']['kernel'])[pruned] == 0) for v in seen)
  with pytest.raises(ValueError, match='two different seeds'):
    analysis.linear_mode_connectivity(variables, m, _toy_finetune([]), evaluate,
                                      str(tmp_path), seeds=(1, 1))


def test_sweep_fine_tunes_each_size_and_seed(tmp_path):
  variables, m = _toy_ticket()
  calls = []
  rows = analysis.sweep('mask_swap', [0.0, 0.5], variables, m, _toy_finetune(calls),
                        str(tmp_path), seeds=(0, 1), policy=_POLICY)
  assert [(r['size'], len(r['runs'])) for r in rows] == [(0.0, 2), (0.5, 2)]
  assert [os.path.relpath(c['checkpoint_dir'], tmp_path) for c in calls] == [
      f'mask_swap/size_{s}/seed_{seed}' for s in ('0', '0.5') for seed in (0, 1)]
  for c in calls[:2]:
    assert _tree_equal(c['masks'], m)
  for c in calls[2:]:
    kept = np.asarray(c['masks']['dense']['kernel'])
    assert kept.sum() == np.asarray(m['dense']['kernel']).sum()
    assert np.all(np.asarray(c['params']['dense']['kernel'])[~kept] == 0)
  for r in rows:
    assert r['test_accuracy'] == pytest.approx(np.mean(r['runs']))
    assert r['test_accuracy_std'] == pytest.approx(np.std(r['runs'], ddof=1))


# -------------------------------------------------------------------------------- report


def _png_links(report: str) -> list[str]:
  return re.findall(r'!\[[^\]]*\]\(([^)]+)\)', report)


def test_write_report_embeds_its_pngs(tmp_path, params):
  dense = masks.init(params)
  tickets = {'magnitude': pruning.to_sparsity(params, dense, 0.6),
             'random': pruning.random(jax.random.key(0), dense, 0.6)}
  sweep_rows = [{'kind': 'mask_swap', 'size': s, 'metric': 'accuracy',
                 'test_accuracy': 0.9 - s / 4, 'test_accuracy_std': 0.01, 'runs': [0.9]}
                for s in (0.0, 0.5, 1.0)]
  lmc = {'seeds': [0, 1], 'alpha': [0.0, 0.5, 1.0], 'error': [0.1, 0.3, 0.12],
         'barrier': 0.19, 'metric': 'accuracy', 'test_accuracy': [0.9, 0.88]}
  path = analysis.write_report(str(tmp_path), tickets,
                               perturbation={'mask_swap': {'magnitude': sweep_rows}},
                               connectivity={'magnitude': lmc})
  assert path == str(tmp_path / 'report.md')
  text = open(path).read()
  for heading in ('## Tickets', '## Mask similarity', '## Layer-wise sparsity',
                  '## Kernel structure', '## Perturbation sensitivity',
                  '## Linear mode connectivity'):
    assert heading in text
  links = _png_links(text)
  assert set(links) == {'overlap_matrix.png', 'overlap_layers.png', 'layer_sparsity.png',
                        'kernel_structure.png', 'kernel_heatmap.png',
                        'perturbation_mask_swap.png', 'connectivity.png'}
  for link in links:
    with open(tmp_path / link, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  _, iou, expected = analysis.overlap_matrix(tickets)
  assert f'| magnitude | random | {iou[0, 1]:.4f} | {expected[0, 1]:.4f} |' in text
  assert '| 60.00 | ' in text  # both tickets' total sparsity
  assert '19.00' in text  # the barrier, in percent
  with open(tmp_path / 'layer_sparsity.json') as f:
    assert len(json.load(f)) == len(masks.prunable_paths(params)) + 1


# ----------------------------------------------------------------------------------- CLI


def _write_round(run_dir, k, m, accuracy=None):
  round_dir = os.path.join(run_dir, f'round_{k:02d}')
  masks.save(os.path.join(round_dir, 'mask'), m)
  if accuracy is not None:
    with open(os.path.join(round_dir, 'round.json'), 'w') as f:
      json.dump({'round': k, 'sparsity': masks.sparsity(m), 'test_accuracy': accuracy,
                 'test_accuracy_std': 0.0}, f)


@pytest.mark.slow
def test_cli_compares_runs_at_equal_sparsity(tmp_path, params):
  main, other = tmp_path / 'sup', tmp_path / 'moco'
  imp = [masks.init(params)]
  for _ in range(2):
    imp.append(pruning.global_magnitude(params, imp[-1], 0.2))
  rand = [imp[0]]
  for k in (1, 2):
    rand.append(pruning.random(jax.random.key(k), rand[-1], 0.2))
  for k, m in enumerate(imp):
    _write_round(main / 'imp', k, m, accuracy=0.9 - 0.01 * k if k < 2 else None)
    _write_round(other / 'imp', k, m, accuracy=0.8)
  for k in (1, 2):
    _write_round(main / 'random', k, rand[k], accuracy=0.85)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, '-m', 'lth_jax.analyze', f'--workdir={main}',
                        f'--compare={other}'], capture_output=True, text=True, env=env,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  report = main / 'analysis' / 'report.md'
  assert out.stdout.strip().endswith(str(report))
  text = report.read_text()
  for link in _png_links(text):
    assert (main / 'analysis' / link).stat().st_size > 0
  assert 'accuracy.png' in _png_links(text) and 'overlap_vs_sparsity.png' in _png_links(text)
  # 36% is shared by all three runs, but sup/imp's round 2 mask was never trained: the
  # report studies the highest level the most runs trained, and says so first.
  assert text.splitlines()[0] == ('# Ticket analysis: the tickets at 20.00% sparsity (the '
                                  'highest sparsity trained by the most runs)')
  assert '| sup/imp | 20.00 |' in text and '| sup/random | 20.00 |' in text
  with open(main / 'analysis' / 'overlap_vs_sparsity.json') as f:
    curve = json.load(f)
  # At 36% sup/imp's mask was never trained: only the two trained masks there are compared.
  assert {(r['pair'], round(r['sparsity'], 2)) for r in curve} == {
      (p, 0.2) for p in ('moco/imp vs sup/imp', 'moco/imp vs sup/random', 'sup/imp vs sup/random')
  } | {('moco/imp vs sup/random', 0.36)}
  for r in curve:
    if r['pair'] == 'moco/imp vs sup/imp':  # the same masks
      assert r['iou'] == 1.0
    else:
      want = analysis.pairwise_overlap(imp[1 if r['sparsity'] < 0.3 else 2],
                                       rand[1 if r['sparsity'] < 0.3 else 2])['total']
      assert r['iou'] == pytest.approx(want['iou'])
      assert r['expected_iou'] == pytest.approx(want['expected_iou'])
  assert '| sup/imp | 2 | 36.00 | - | - |' in text  # a mask not trained yet


@pytest.mark.slow
def test_cli_names_the_missing_runs(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, '-m', 'lth_jax.analyze', f'--workdir={tmp_path}'],
                       capture_output=True, text=True, env=env, check=False)
  assert out.returncode != 0
  assert 'No IMP round under' in out.stderr


@pytest.mark.slow
def test_analysis_does_not_load_the_tasks():
  # The analysis reads results back: it names a round's metric (`lth_jax.metrics.headline`)
  # without loading the tasks, their data and models' training code (issue 21, layering).
  out = subprocess.run(
      [sys.executable, '-c', 'import sys, lth_jax.analysis; print(sorted(m for m in '
       "sys.modules if m.startswith(('lth_jax.tasks', 'lth_jax.data', 'lth_jax.tasks.yolo'))))"],
      capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]', out.stdout
