"""Pruning: parity with torch.nn.utils.prune, exact counts, tie-break, invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import masks, pruning
from lth_jax.interop import mask_files
from lth_jax.pruning import selection
from lth_jax.models import create_model
from lth_jax.interop.torch_names import flax_to_torch_key, to_torch_value
from lth_jax.testing.torch_reference import build_torch_resnet

_ARGS = dict(num_classes=10, stem='cifar', width_multiplier=0.125)


def _param_shapes() -> dict:
  model = create_model('resnet18', **_ARGS)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))[
      'params']


@pytest.fixture(scope='module')
def params() -> dict:
  """resnet18/8 weights with per-layer scales (fan-out init) and no magnitude ties.

  The prunable magnitudes are replaced by their global rank (distinct integers, order
  kept), so torch's unspecified tie-break cannot matter in the parity test.
  """
  rng = np.random.default_rng(0)
  shapes = _param_shapes()
  tree = jax.tree.map(
      lambda s: rng.standard_normal(s.shape, np.float32)
      * np.float32(np.sqrt(2 / (np.prod(s.shape[:2]) * s.shape[-1]))), shapes)
  prunable = masks.prunable_leaves(tree)
  flat = np.concatenate([w.reshape(-1) for w in prunable.values()])
  rank = np.empty(flat.size, np.float32)
  rank[np.argsort(np.abs(flat), kind='stable')] = np.arange(1, flat.size + 1)
  ranked = np.sign(flat) * rank
  out, start = {}, 0
  for name, w in prunable.items():
    out[name] = jnp.asarray(ranked[start:start + w.size].reshape(w.shape))
    start += w.size
  return masks.replace_leaves(jax.tree.map(jnp.asarray, tree), out)


def _flat(tree: dict, policy=None) -> np.ndarray:
  return np.concatenate([np.asarray(x).reshape(-1)
                         for x in masks.prunable_leaves(tree, policy).values()])


def _reference(params: dict, current: dict, ks: list[int], layerwise: bool) -> np.ndarray:
  """The definition, by full stable sort: lowest |w|, lower global index first."""
  weights = masks.prunable_leaves(params)
  alive = [np.asarray(m).reshape(-1).copy() for m in masks.prunable_leaves(current).values()]
  scores = [np.abs(np.asarray(w, np.float32)).reshape(-1) for w in weights.values()]
  groups = [[i] for i in range(len(alive))] if layerwise else [list(range(len(alive)))]
  for group, k in zip(groups, ks):
    a = np.concatenate([alive[i] for i in group])
    s = np.concatenate([scores[i] for i in group])
    idx = np.flatnonzero(a)
    a[idx[np.argsort(s[idx], kind='stable')[:k]]] = False
    split = np.cumsum([alive[i].size for i in group])[:-1]
    for i, part in zip(group, np.split(a, split)):
      alive[i] = part
  return np.concatenate(alive)


def _expected_counts(current: dict, fraction: float, layerwise: bool) -> list[int]:
  alive = [int(np.asarray(m).sum()) for m in masks.prunable_leaves(current).values()]
  if layerwise:
    return [round(fraction * n) for n in alive]
  return [round(fraction * sum(alive))]


@pytest.fixture(params=['default', 'sampled', 'missed'])
def bracket(request, monkeypatch):
  """Runs a test with the exhaustive sample of small trees, a real subsample, and a
  subsample with a zero-width bracket (forces the widening pass)."""
  if request.param != 'default':
    monkeypatch.setattr(selection, '_SAMPLE_SIZE', 64)
  if request.param == 'missed':
    monkeypatch.setattr(selection, '_BRACKET_SIGMAS', 0.0)
  return request.param


# ---------------------------------------------------------------- torch parity


def test_global_magnitude_matches_torch_global_unstructured(params):
  torch = pytest.importorskip('torch')
  from torch.nn.utils import prune as torch_prune
  model = build_torch_resnet('resnet18', **_ARGS)
  for name, w in masks.prunable_leaves(params).items():
    path = ('params', *name.split('/'))
    module = model.get_submodule(flax_to_torch_key(path).removesuffix('.weight'))
    module.weight.data.copy_(torch.from_numpy(to_torch_value(path, np.asarray(w)).copy()))
  convs = [(m, 'weight') for n, m in model.named_modules()
           if isinstance(m, torch.nn.Conv2d) and n != 'conv1']
  assert len(convs) == 19
  current = masks.init(params)
  total = _flat(current).size
  pruned = 0
  for level in range(1, 6):
    torch_prune.global_unstructured(convs, pruning_method=torch_prune.L1Unstructured,
                                    amount=0.2)
    current = pruning.global_magnitude(params, current, 0.2)
    pruned += round(0.2 * (total - pruned))
    theirs = model.state_dict()
    ours = mask_files.to_pytorch(current)
    assert ours.keys() <= theirs.keys()
    for key, value in ours.items():
      np.testing.assert_array_equal(value, theirs[key].numpy(), err_msg=f'{key} {level}')
    assert total - _flat(current).sum() == pruned
    assert masks.sparsity(current) == pytest.approx(1 - 0.8**level, abs=1 / total)
  # The reference's pruned state dict reads back to the same ticket.
  back = mask_files.from_pytorch(model.state_dict(), like=params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back),
                                                    jax.tree.leaves(current)))


# ------------------------------------------------------ the definition, exactly


def _tied_params(seed: int = 0) -> dict:
  """Magnitudes in {0, 0.5, 1, 1.5} with both signs: ties everywhere."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.integers(-3, 4, s.shape).astype(np.float32) / 2),
      _param_shapes())


@pytest.mark.parametrize('layerwise', [False, True])
def test_magnitude_pruning_is_the_definition_with_ties(bracket, layerwise):
  params = _tied_params()
  prune = pruning.layerwise_magnitude if layerwise else pruning.global_magnitude
  current = masks.init(params)
  for _ in range(3):
    expected = _reference(params, current, _expected_counts(current, 0.3, layerwise),
                          layerwise)
    current = prune(params, current, 0.3)
    np.testing.assert_array_equal(_flat(current), expected)


def test_global_magnitude_definition_on_random_weights(bracket, params):
  current = masks.init(params)
  for _ in range(4):
    expected = _reference(params, current, _expected_counts(current, 0.2, False), False)
    current = pruning.global_magnitude(params, current, 0.2)
    np.testing.assert_array_equal(_flat(current), expected)


def test_pruned_weights_never_come_back_and_others_are_untouched(params):
  current = pruning.global_magnitude(params, masks.init(params), 0.5)
  # New weights where the pruned positions are now the largest ones.
  grown = jax.tree.map(lambda w, m: jnp.where(m, w, 1e9), params, current)
  alive = _flat(current).sum()
  after = pruning.global_magnitude(grown, current, 0.5)
  before_flat, after_flat = _flat(current), _flat(after)
  assert not np.any(after_flat & ~before_flat)
  assert alive - after_flat.sum() == round(0.5 * alive)
  assert jax.tree.structure(after) == jax.tree.structure(params)
  for module, leaf in (('conv1', 'kernel'), ('bn1', 'scale'), ('fc', 'kernel'),
                       ('fc', 'bias')):
    assert after[module][leaf] is current[module][leaf]


def test_partial_mask_tree_and_zero_fraction(params):
  partial = masks.prunable_leaves(masks.init(params))
  nested = mask_files.from_pytorch(mask_files.to_pytorch(partial))
  once = pruning.global_magnitude(params, nested, 0.2)
  assert jax.tree.structure(once) == jax.tree.structure(nested)
  np.testing.assert_array_equal(
      _flat(once), _flat(pruning.global_magnitude(params, masks.init(params), 0.2)))
  same = pruning.global_magnitude(params, once, 0.0)
  np.testing.assert_array_equal(_flat(same), _flat(once))


# ---------------------------------------------------------------- random, OMP


@pytest.mark.parametrize('layerwise', [False, True])
def test_random_prunes_exact_counts_among_survivors(layerwise):
  params = _tied_params()
  current = pruning.global_magnitude(params, masks.init(params), 0.3)
  expected = _expected_counts(current, 0.25, layerwise)
  out = pruning.random(jax.random.key(1), current, 0.25, layerwise=layerwise)
  before = [np.asarray(m) for m in masks.prunable_leaves(current).values()]
  after = [np.asarray(m) for m in masks.prunable_leaves(out).values()]
  assert all(not np.any(a & ~b) for a, b in zip(after, before))
  removed = [int(b.sum() - a.sum()) for a, b in zip(after, before)]
  assert (removed if layerwise else [sum(removed)]) == expected
  again = pruning.random(jax.random.key(1), current, 0.25, layerwise=layerwise)
  other = pruning.random(jax.random.key(2), current, 0.25, layerwise=layerwise)
  np.testing.assert_array_equal(_flat(again), _flat(out))
  assert not np.array_equal(_flat(other), _flat(out))


def test_random_global_spreads_evenly_over_layers():
  """Positions uniform among survivors: every large layer loses about the fraction."""
  shapes = {f'layer1_{i}': {'conv1': {'kernel': jnp.zeros((3, 3, 32, 32))}}
            for i in range(6)}
  out = pruning.random(jax.random.key(0), masks.init(shapes), 0.5)
  for row in list(masks.summary(out).values())[:-1]:
    assert abs(row['sparsity'] - 0.5) < 0.03  # 9216 weights: 6 sigma is 0.031


def test_to_sparsity_hits_the_target_exactly(bracket, params):
  total = _flat(masks.init(params)).size
  start = pruning.global_magnitude(params, masks.init(params), 0.2)
  for target in (0.2, 0.5904, 0.9):
    out = pruning.to_sparsity(params, start, target)
    assert total - _flat(out).sum() == round(target * total)
    k = round(target * total) - (total - _flat(start).sum())
    np.testing.assert_array_equal(_flat(out), _reference(params, start, [k], False))
  with pytest.raises(ValueError, match='already at sparsity'):
    pruning.to_sparsity(params, start, 0.1)


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize('fraction', [-0.1, 1.0, 1.5, True, '0.2', float('nan')])
def test_fraction_is_validated(params, fraction):
  current = masks.init(params)
  with pytest.raises(ValueError, match=r'in \[0, 1\)'):
    pruning.global_magnitude(params, current, fraction)
  with pytest.raises(ValueError, match=r'in \[0, 1\)'):
    pruning.random(jax.random.key(0), current, fraction)
  with pytest.raises(ValueError, match=r'target must be a number in \[0, 1\)'):
    pruning.to_sparsity(params, current, fraction)


def test_mismatched_trees_are_refused(params):
  current = masks.init(params)
  fewer = masks.replace_leaves(current, {})
  del fewer['layer4_1']
  with pytest.raises(ValueError, match='different prunable leaves'):
    pruning.global_magnitude(params, fewer, 0.2)
  wrong = masks.replace_leaves(current, {'layer1_0/conv1/kernel': jnp.ones((1, 1, 8, 8),
                                                                            bool)})
  with pytest.raises(ValueError, match='layer1_0/conv1/kernel: mask shape'):
    pruning.layerwise_magnitude(params, wrong, 0.2)
  with pytest.raises(ValueError, match='selects no leaf'):
    pruning.global_magnitude(params, current, 0.2, policy='^nothing$')


@pytest.mark.parametrize('layerwise', [True, False])
def test_random_like_matches_the_tickets_counts(params, layerwise):
  ticket = pruning.global_magnitude(params, masks.init(params), 0.6)
  rand = pruning.random_like(jax.random.key(3), ticket, layerwise=layerwise)
  t_rows, r_rows = masks.summary(ticket), masks.summary(rand)
  assert r_rows['total']['kept'] == t_rows['total']['kept']
  if layerwise:
    assert all(r_rows[n]['kept'] == t_rows[n]['kept'] for n in t_rows)
  # Random positions: far from the ticket's own (IoU of two random masks ~ density / (2 - density)).
  assert masks.overlap(ticket, rand)['total']['iou'] < 0.5
  again = pruning.random_like(jax.random.key(3), ticket, layerwise=layerwise)
  assert np.array_equal(_flat(again), _flat(rand))


@pytest.mark.parametrize('bad', [np.nan, np.inf])
@pytest.mark.parametrize('prune', [
    lambda p, m: pruning.global_magnitude(p, m, 0.2),
    lambda p, m: pruning.layerwise_magnitude(p, m, 0.2),
    lambda p, m: pruning.to_sparsity(p, m, 0.5)], ids=['global', 'layerwise', 'one_shot'])
def test_non_finite_weights_are_refused_not_ranked(params, bad, prune):
  name = 'layer3_1/conv2/kernel'
  weights = np.array(masks.prunable_leaves(params)[name])
  weights[0, 0, 0, :3] = bad  # as a diverged training leaves them
  poisoned = masks.replace_leaves(params, {name: jnp.asarray(weights)})
  with pytest.raises(ValueError, match=f'NaN or infinite.*{name}'):
    prune(poisoned, masks.init(poisoned))
