"""The mask pytree: policy, counts, inspection, orbax round trip, PyTorch formats."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import masks
from lth_jax.interop import mask_files
from lth_jax.models import create_model


def _param_shapes(arch: str, **kwargs) -> dict:
  model = create_model(arch, num_classes=10, **kwargs)
  dummy = jnp.zeros((1, 32, 32, model.in_channels))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy))['params']


def _random_params(shapes: dict, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)),
                      shapes)


def _random_masks(params: dict, seed: int = 1, keep: float = 0.6) -> dict:
  """Random bool masks on the prunable leaves, all-True elsewhere."""
  rng = np.random.default_rng(seed)
  prunable = masks.prunable_leaves(params)
  return masks.replace_leaves(
      masks.init(params),
      {name: jnp.asarray(rng.random(p.shape) < keep) for name, p in prunable.items()})


@pytest.fixture(scope='module')
def small_params() -> dict:
  return _random_params(_param_shapes('resnet18', stem='cifar', width_multiplier=0.125))


def _nested(leaves: dict) -> dict:
  tree = {}
  for name, leaf in leaves.items():
    *parents, last = name.split('/')
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = leaf
  return tree


def _tree_equal(a, b) -> bool:
  return (jax.tree.structure(a) == jax.tree.structure(b) and all(
      x.dtype == y.dtype and np.array_equal(x, y)
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


# ----------------------------------------------------------------------------- policy


def test_resnet50_default_policy_counts():
  shapes = _param_shapes('resnet50')
  prunable = masks.prunable_leaves(shapes)
  assert len(prunable) == 52
  assert sum(int(np.prod(s.shape)) for s in prunable.values()) == 23_445_504
  assert 'conv1/kernel' not in prunable and 'fc/kernel' not in prunable
  assert all(name.endswith('/kernel') for name in prunable)
  assert 'layer2_0/downsample_conv/kernel' in prunable
  mask_shapes = jax.eval_shape(masks.init, shapes)
  assert jax.tree.structure(mask_shapes) == jax.tree.structure(shapes)
  assert all(m.dtype == jnp.bool_ and m.shape == s.shape
             for m, s in zip(jax.tree.leaves(mask_shapes), jax.tree.leaves(shapes)))


def test_policy_works_under_prefixes_and_custom_policies():
  shapes = _param_shapes('resnet18', stem='cifar', width_multiplier=0.125)
  plain = masks.prunable_paths(shapes)
  assert len(plain) == 19  # 16 block convs + 3 downsample convs
  moco = masks.prunable_paths({'encoder_q': shapes, 'encoder_k': shapes})
  assert moco == [f'encoder_k/{p}' for p in plain] + [f'encoder_q/{p}' for p in plain]
  assert masks.prunable_paths({'params': shapes}) == [f'params/{p}' for p in plain]
  with_stem = masks.prunable_paths(shapes, r'conv\d*/kernel$')
  assert with_stem == ['conv1/kernel', *plain]
  assert masks.prunable_paths(shapes, lambda p: p == 'fc/kernel') == ['fc/kernel']
  with pytest.raises(ValueError, match='selects no leaf'):
    masks.init(shapes, r'^nothing$')
  with pytest.raises(TypeError, match='policy must be'):
    masks.prunable_paths(shapes, 3)


# ------------------------------------------------------------------- init / apply


def test_init_is_all_true_with_the_params_treedef(small_params):
  m = masks.init(small_params)
  assert jax.tree.structure(m) == jax.tree.structure(small_params)
  assert all(x.dtype == jnp.bool_ and x.shape == p.shape and bool(x.all())
             for x, p in zip(jax.tree.leaves(m), jax.tree.leaves(small_params)))
  assert masks.sparsity(m) == 0.0


def test_apply_zeroes_exactly_the_pruned_weights(small_params):
  m = _random_masks(small_params)
  out = jax.jit(masks.apply)(small_params, m)
  for p, x, o in zip(jax.tree.leaves(small_params), jax.tree.leaves(m),
                     jax.tree.leaves(out)):
    np.testing.assert_array_equal(o, np.where(x, p, 0))
  with pytest.raises(ValueError, match='treedef'):
    masks.apply(small_params, masks.prunable_leaves(m))


# ------------------------------------------------------------------ inspection


def _hand_tree(a: list, b: list) -> dict:
  """Two prunable 1x1 convs (kept flags a and b) and a non-prunable BN scale."""
  return {'layer1_0': {'conv1': {'kernel': jnp.asarray(a, bool).reshape(1, 1, 2, -1)},
                       'bn1': {'scale': jnp.asarray([True, False])}},
          'layer1_1': {'conv2': {'kernel': jnp.asarray(b, bool).reshape(1, 1, 2, -1)}}}


def test_sparsity_and_summary_count_only_prunable_leaves():
  m = _hand_tree([1, 1, 0, 0], [1, 0, 0, 0, 0, 0])  # BN's False must not count
  assert masks.sparsity(m) == pytest.approx(7 / 10)
  rows = masks.summary(m)
  assert list(rows) == ['layer1_0/conv1/kernel', 'layer1_1/conv2/kernel', 'total']
  assert rows['layer1_0/conv1/kernel'] == {'shape': (1, 1, 2, 2), 'total': 4, 'kept': 2,
                                           'sparsity': 0.5}
  assert rows['total']['total'] == 10 and rows['total']['kept'] == 3
  assert rows['total']['sparsity'] == pytest.approx(0.7)
  table = masks.format_table(rows).splitlines()
  assert len(table) == 4 and table[0].split() == ['name', 'shape', 'total', 'kept',
                                                  'sparsity']
  assert table[1].split() == ['layer1_0/conv1/kernel', '1x1x2x2', '4', '2', '0.5000']


def test_overlap_by_hand():
  a = _hand_tree([1, 1, 0, 0], [1, 1, 1, 0, 0, 0])
  b = _hand_tree([1, 0, 1, 0], [1, 1, 1, 0, 0, 0])
  rows = masks.overlap(a, b)
  first = rows['layer1_0/conv1/kernel']
  assert first == {'total': 4, 'kept_a': 2, 'kept_b': 2, 'intersection': 1, 'union': 3,
                   'iou': pytest.approx(1 / 3), 'hamming': 2, 'a_kept_by_b': 0.5}
  assert rows['layer1_1/conv2/kernel']['iou'] == 1.0
  assert rows['layer1_1/conv2/kernel']['hamming'] == 0
  total = rows['total']
  assert (total['intersection'], total['union'], total['hamming']) == (4, 6, 2)
  assert total['iou'] == pytest.approx(4 / 6)
  assert total['a_kept_by_b'] == pytest.approx(4 / 5)
  empty = masks.overlap(_hand_tree([0] * 4, [0] * 6), _hand_tree([0] * 4, [1] * 6))
  assert np.isnan(empty['layer1_0/conv1/kernel']['iou'])
  assert np.isnan(empty['total']['a_kept_by_b'])
  assert 'iou' in masks.format_table(rows)
  with pytest.raises(ValueError, match='different prunable leaves'):
    masks.overlap(a, {'layer1_0': a['layer1_0']})


def test_kernel_emptiness_by_hand():
  kernel = np.ones((3, 3, 2, 2), bool)
  kernel[:, :, 0, 1] = False  # a whole 3x3 kernel pruned
  kernel[0, 0, 1, 1] = False  # a partly pruned one is not empty
  m = {'layer1_0': {'conv2': {'kernel': jnp.asarray(kernel)},
                    'conv1': {'kernel': jnp.zeros((1, 1, 2, 2), bool)}}}
  out = masks.kernel_emptiness(m)
  assert list(out) == ['layer1_0/conv2/kernel']  # 1x1 convs have no kxk kernels
  np.testing.assert_array_equal(out['layer1_0/conv2/kernel']['empty'],
                                [[False, True], [False, False]])
  assert out['layer1_0/conv2/kernel']['fraction'] == 0.25


# ------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path, small_params):
  m = _random_masks(small_params)
  tree = {'encoder_q': m, 'encoder_k': m, 'step': {'flags': jnp.asarray([True, False])}}
  masks.save(tmp_path / 'ticket', tree)
  back = masks.load(tmp_path / 'ticket')
  assert _tree_equal(jax.tree.map(np.asarray, back), jax.tree.map(np.asarray, tree))
  with pytest.raises(FileExistsError, match='overwrite=True'):
    masks.save(tmp_path / 'ticket', tree)
  masks.save(tmp_path / 'ticket', m, overwrite=True)
  assert _tree_equal(jax.tree.map(np.asarray, masks.load(tmp_path / 'ticket')),
                     jax.tree.map(np.asarray, m))
  with pytest.raises(FileNotFoundError, match='No mask checkpoint'):
    masks.load(tmp_path / 'missing')


# --------------------------------------------------------------- PyTorch formats


def test_to_pytorch_is_the_reference_mask_dict(small_params):
  m = _random_masks(small_params)
  out = mask_files.to_pytorch(m)
  assert len(out) == 19 and 'conv1.weight_mask' not in out
  assert 'layer2.0.downsample.0.weight_mask' in out
  kernel = np.asarray(m['layer1_0']['conv2']['kernel'])
  value = out['layer1.0.conv2.weight_mask']
  assert value.dtype == np.float32 and value.flags['C_CONTIGUOUS']
  np.testing.assert_array_equal(value, kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW
  moco = mask_files.to_pytorch({'encoder_q': m})
  assert set(moco) == {f'encoder_q.{k}' for k in out}


@pytest.mark.parametrize('prefix', ['', 'module.', 'module.encoder_q.'])
def test_pytorch_mask_dict_round_trip(small_params, prefix):
  m = _random_masks(small_params)
  state = {prefix + k: v for k, v in mask_files.to_pytorch(m).items()}
  if prefix == 'module.encoder_q.':  # the key encoder's masks must be ignored
    state.update({f'module.encoder_k.{k}': np.zeros_like(v)
                  for k, v in mask_files.to_pytorch(m).items()})
  full = mask_files.from_pytorch(state, like=small_params)
  assert _tree_equal(full, m)
  partial = mask_files.from_pytorch(state)
  assert _tree_equal(partial, _nested(masks.prunable_leaves(m)))
  assert masks.sparsity(partial) == masks.sparsity(m)
  assert mask_files.to_pytorch(partial).keys() == mask_files.to_pytorch(m).keys()


def test_pruned_state_dict_file_and_moco_tree(tmp_path, small_params):
  """A checkpoint of the reference: weight_orig + weight_mask next to other entries."""
  torch = pytest.importorskip('torch')
  m = _random_masks(small_params)
  state = {'conv1.weight': torch.randn(8, 3, 3, 3), 'bn1.weight': torch.ones(8),
           'bn1.num_batches_tracked': torch.tensor(3), 'fc.weight': torch.randn(10, 64)}
  for key, mask in mask_files.to_pytorch(m).items():
    name = key[:-len('_mask')]
    state[f'module.{name}_orig'] = torch.randn(mask.shape)
    state[f'module.{key}'] = torch.from_numpy(mask)
  path = tmp_path / 'pruned.pth.tar'
  torch.save({'state_dict': state, 'epoch': 3}, path)
  assert _tree_equal(mask_files.from_pytorch(path, like=small_params), m)
  moco = mask_files.from_pytorch(path, like={'encoder_q': small_params,
                                        'encoder_k': small_params})
  assert _tree_equal(moco['encoder_q'], m) and _tree_equal(moco['encoder_k'], m)


def test_from_pytorch_errors(small_params):
  reference = mask_files.to_pytorch(_random_masks(small_params))
  missing = dict(reference)
  del missing['layer3.1.conv2.weight_mask']
  with pytest.raises(ValueError, match=r"no mask 'layer3\.1\.conv2\.weight_mask'"):
    mask_files.from_pytorch(missing, like=small_params)
  wrong = dict(reference, **{'layer1.0.conv1.weight_mask': np.ones((8, 8, 1, 1))})
  with pytest.raises(ValueError, match=r"'layer1\.0\.conv1\.weight_mask' has shape"):
    mask_files.from_pytorch(wrong, like=small_params)
  not_binary = dict(reference, **{'layer1.0.conv1.weight_mask': np.full((8, 8, 3, 3), .5)})
  with pytest.raises(ValueError, match='other than 0 and 1'):
    mask_files.from_pytorch(not_binary)
  stem = dict(reference, **{'conv1.weight_mask': np.ones((8, 3, 3, 3))})
  with pytest.raises(ValueError, match=r"conv1\.weight_mask'\] match no prunable"):
    mask_files.from_pytorch(stem, like=small_params)
  with pytest.raises(ValueError, match='does not call prunable'):
    mask_files.from_pytorch(stem)
  stem_policy = r'(^|/)(layer\d+_\d+/)?(conv\d+|downsample_conv)/kernel$'
  with_stem = mask_files.from_pytorch(stem, like=small_params, policy=stem_policy)
  assert with_stem['conv1']['kernel'].shape == (3, 3, 3, 8)
  assert bool(with_stem['conv1']['kernel'].all())
  with pytest.raises(ValueError, match='No mask in the source'):
    mask_files.from_pytorch({'layer1.0.conv1.weight': np.ones((8, 8, 3, 3))})



def test_conform_moves_a_ticket_between_stems_and_heads(small_params):
  ticket = _random_masks(small_params)
  model = create_model('resnet18', num_classes=100, stem='imagenet', width_multiplier=0.125)
  other = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))[
      'params']
  full = masks.conform(ticket, other)
  assert jax.tree.structure(full) == jax.tree.structure(other)
  for name, m in masks.prunable_leaves(full).items():
    np.testing.assert_array_equal(np.asarray(m), np.asarray(masks.prunable_leaves(ticket)[name]))
  assert bool(np.all(np.asarray(full['conv1']['kernel']))) and full['conv1']['kernel'].shape == (
      7, 7, 3, 8)
  assert bool(np.all(np.asarray(full['fc']['kernel'])))
  wider = create_model('resnet18', num_classes=10, stem='cifar', width_multiplier=0.25)
  wide = jax.eval_shape(lambda: wider.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))[
      'params']
  with pytest.raises(ValueError, match='different architecture or width'):
    masks.conform(ticket, wide)


def test_stage_sparsity_groups_layers_by_stage():
  tree = {'conv1': {'kernel': np.zeros((3, 3, 1, 2), bool)},
          'layer1_0': {'conv1': {'kernel': np.array([True, False, False, False]).reshape(
              1, 1, 2, 2)}},
          'layer1_1': {'conv1': {'kernel': np.ones((1, 1, 2, 2), bool)}},
          'layer2_0': {'downsample_conv': {'kernel': np.zeros((1, 1, 2, 2), bool)}}}
  assert masks.stage_of('encoder_q/layer3_1/conv2/kernel') == 'layer3'
  assert masks.stage_of('conv1/kernel') is None
  assert masks.stage_sparsity(tree) == {'sparsity_layer1': 3 / 8, 'sparsity_layer2': 1.0}
