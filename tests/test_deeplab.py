"""Dilated ResNet features and DeepLabV3+: parity with PyTorch, names, masks, training mode."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lth_jax import masks
from lth_jax.interop import checkpoints as convert
from lth_jax.interop import torch_names
from lth_jax.models import aspp_rates_for, create_deeplab, create_model, init_variables
from lth_jax.models.deeplab import resize_bilinear
from lth_jax.testing.torch_reference import build_torch_deeplab, build_torch_resnet

torch = pytest.importorskip('torch')

OS16, OS8 = (False, False, True), (False, True, True)
# A tiny DeepLab for the tests that need no PyTorch.
TINY = dict(width_multiplier=0.125, head_channels=16, low_level_channels=8)


def _randomise_bn(module: torch.nn.Module, seed: int) -> None:
  """Gives every BatchNorm trained-looking affine parameters and running statistics."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def _eval(module: torch.nn.Module, seed: int) -> torch.nn.Module:
  _randomise_bn(module, seed)
  return module.eval()


def _images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape, np.float32)


def _apply(model, variables, images_nchw: np.ndarray):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, images_nchw.transpose(0, 2, 3, 1))


def _relative_error(got: jax.Array, expected: torch.Tensor) -> float:
  expected = expected.numpy().transpose(0, 2, 3, 1)
  return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


# ------------------------------------------------------------------------------- backbone

@pytest.mark.parametrize('arch,flags,strides,kwargs', [
    ('resnet50', OS16, (4, 8, 16, 16), {}),
    ('resnet50', OS8, (4, 8, 8, 8), {}),
    # BasicBlock dilation (mmsegmentation's layout), every stage dilated.
    ('resnet18', (True, True, True), (4, 4, 4, 4), dict(width_multiplier=0.125)),
])
def test_dilated_features_match_pytorch(arch, flags, strides, kwargs):
  torch.manual_seed(0)
  torch_model = _eval(build_torch_resnet(arch, num_classes=10, head='features',
                                         replace_stride_with_dilation=flags, **kwargs), 0)
  model = create_model(arch, num_classes=10, head='features',
                       replace_stride_with_dilation=flags, **kwargs)
  variables = convert.load_pytorch(torch_model.state_dict(), model)
  images = _images((2, 3, 64, 64))
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(images))
  got = _apply(model, variables, images)
  assert list(got) == ['layer1', 'layer2', 'layer3', 'layer4']
  for stage, stride in zip(got, strides):
    assert got[stage].dtype == jnp.float32
    assert got[stage].shape[1:3] == (64 // stride, 64 // stride), stage
    assert _relative_error(got[stage], expected[stage]) < 1e-4, stage


def test_default_dilation_leaves_classifiers_unchanged():
  classifier = create_model('resnet50', num_classes=10, width_multiplier=0.125)
  features = create_model('resnet50', num_classes=10, width_multiplier=0.125, head='features',
                          replace_stride_with_dilation=(False, False, False))
  variables = init_variables(classifier, jax.random.key(0), 64)
  params = dict(variables['params'])
  fc = params.pop('fc')
  # Same tree as before, less the head; a torchvision checkpoint loads with fc dropped.
  assert jax.tree.structure(params) == jax.tree.structure(
      init_variables(features, jax.random.key(0), 64)['params'])
  loaded = convert.load_pytorch(convert.to_pytorch(variables), features)
  jax.tree.map(np.testing.assert_array_equal, loaded['params'], params)

  images = _images((2, 64, 64, 3))
  maps = jax.jit(lambda v, x: features.apply(v, x, train=False))(
      {'params': params, 'batch_stats': variables['batch_stats']}, images)
  # Undilated strides 4, 8, 16, 32: a changed default would change layer4's size.
  assert [m.shape[1] for m in maps.values()] == [16, 8, 4, 2]
  logits = jax.jit(lambda v, x: classifier.apply(v, x, train=False))(variables, images)
  by_hand = jnp.mean(maps['layer4'], axis=(1, 2)) @ fc['kernel'] + fc['bias']
  np.testing.assert_allclose(logits, by_hand, rtol=1e-6, atol=1e-6)


def test_bad_dilation_flags():
  for flags in [(False, True), (0, 0, 1), 'FFT']:
    with pytest.raises(ValueError, match='replace_stride_with_dilation must be 3 bools'):
      create_model('resnet18', num_classes=10, replace_stride_with_dilation=flags)


# ------------------------------------------------------------------------------- DeepLab

def test_deeplab_matches_pytorch_and_round_trips():
  torch.manual_seed(1)
  torch_model = _eval(build_torch_deeplab('resnet50', num_classes=21), 1)
  state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  model = create_deeplab('resnet50', num_classes=21)
  assert model.replace_stride_with_dilation == OS16 and tuple(model.aspp_rates) == (6, 12, 18)
  # The reference's checkpoints: {'model_state': state dict}, DataParallel's `module.`.
  checkpoint = {'model_state': {f'module.{k}': torch.from_numpy(v)
                                for k, v in state_dict.items()}}
  variables = convert.load_pytorch(checkpoint, model)

  images = _images((2, 3, 64, 48), seed=1)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(images))
  got = _apply(model, variables, images)
  assert got.shape == (2, 64, 48, 21) and got.dtype == jnp.float32
  assert _relative_error(got, expected) < 1e-4

  back = convert.to_pytorch(variables, backbone_prefix='backbone.')
  assert set(back) == {k for k in state_dict if not k.endswith('num_batches_tracked')}
  for key, value in back.items():
    np.testing.assert_array_equal(value, state_dict[key], err_msg=key)
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


@pytest.mark.parametrize('key,path', [
    ('classifier.project.0.weight', ('params', 'classifier', 'project_0', 'kernel')),
    ('classifier.project.1.running_var', ('batch_stats', 'classifier', 'project_1', 'var')),
    ('classifier.aspp.convs.0.0.weight', ('params', 'classifier', 'aspp', 'convs_0_0', 'kernel')),
    ('classifier.aspp.convs.3.1.weight', ('params', 'classifier', 'aspp', 'convs_3_1', 'scale')),
    ('classifier.aspp.convs.4.1.weight', ('params', 'classifier', 'aspp', 'convs_4_1', 'kernel')),
    ('classifier.aspp.convs.4.2.bias', ('params', 'classifier', 'aspp', 'convs_4_2', 'bias')),
    ('classifier.aspp.project.1.running_mean',
     ('batch_stats', 'classifier', 'aspp', 'project_1', 'mean')),
    ('classifier.classifier.1.weight', ('params', 'classifier', 'classifier_1', 'scale')),
    ('classifier.classifier.3.weight', ('params', 'classifier', 'classifier_3', 'kernel')),
    ('classifier.classifier.3.bias', ('params', 'classifier', 'classifier_3', 'bias')),
    ('layer4.2.downsample.1.weight', ('params', 'layer4_2', 'downsample_bn', 'scale')),
])
def test_head_keys_map_both_ways(key, path):
  assert torch_names.torch_to_flax_key(key) == path
  assert torch_names.flax_to_torch_key(path) == key


def test_head_keys_outside_the_head_are_refused():
  with pytest.raises(KeyError, match='not a DeepLabV3\\+ head variable'):
    torch_names.torch_to_flax_key('classifier.6.weight')  # a VGG classifier
  with pytest.raises(KeyError, match='Unexpected convolution entry'):
    torch_names.torch_to_flax_key('classifier.project.0.running_mean')


def test_head_is_not_prunable():
  def prunable(model):
    params = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 64))['params']
    return {name: leaf.shape for name, leaf in masks.prunable_leaves(masks.init(params)).items()}

  deeplab = prunable(create_deeplab('resnet50', num_classes=21, output_stride=8, **TINY))
  resnet = prunable(create_model('resnet50', num_classes=10, width_multiplier=0.125))
  assert len(deeplab) == 52 and deeplab == resnet
  params = jax.eval_shape(lambda: init_variables(
      create_deeplab('resnet50', num_classes=21, **TINY), jax.random.key(0), 64))['params']
  head = [masks.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      params['classifier'])[0]]
  assert len(head) == 26
  assert not any(re.search(masks.DEFAULT_POLICY, f'classifier/{h}') for h in head)


def test_train_mode_dropout_and_batch_statistics():
  slow = create_deeplab('resnet18', num_classes=3, bn_momentum=0.99, **TINY)
  fast = create_deeplab('resnet18', num_classes=3, **TINY)
  variables = init_variables(fast, jax.random.key(0), 32)
  images = _images((2, 32, 32, 3))

  def train(model, seed):
    return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                            rngs={'dropout': jax.random.key(seed)}))(
                                                variables, images)

  (out_a, stats_slow), (out_b, stats_fast), (out_c, _) = (
      train(slow, 0), train(fast, 0), train(fast, 1))
  np.testing.assert_array_equal(out_a, out_b)  # momentum does not touch the forward pass
  assert not np.allclose(out_b, out_c)  # the dropout rng does
  with pytest.raises(Exception, match='dropout'):
    fast.apply(variables, images, train=True, mutable=['batch_stats'])

  old = traverse_util.flatten_dict(variables['batch_stats'])
  slow_flat = traverse_util.flatten_dict(stats_slow['batch_stats'])
  fast_flat = traverse_util.flatten_dict(stats_fast['batch_stats'])
  assert slow_flat.keys() == old.keys()
  for path, before in old.items():
    step_fast = fast_flat[path] - before
    assert np.abs(step_fast).max() > 0, path
    # The backbone moves by (1 - bn_momentum) of the way, the head by (1 - head_bn_momentum).
    ratio = 1.0 if path[0] == 'classifier' else 0.1
    np.testing.assert_allclose(slow_flat[path] - before, ratio * step_fast, rtol=1e-4,
                               atol=2e-7, err_msg=str(path))


# ------------------------------------------------------------------------------- pieces

@pytest.mark.parametrize('size_in,size_out', [((4, 5), (16, 13)), ((16, 13), (5, 4)),
                                              ((3, 7), (3, 9))])
def test_resize_bilinear_is_torch_interpolate(size_in, size_out):
  x = _images((2, 3, *size_in))
  expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=size_out,
                                             mode='bilinear', align_corners=False)
  got = resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), size_out)
  np.testing.assert_allclose(got, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-6,
                             atol=1e-6)


def test_aspp_rates_for():
  assert aspp_rates_for(16, 513) == (6, 12, 18)
  assert aspp_rates_for(8, 513) == (12, 24, 36)
  # 64-pixel crops: (6, 12, 18) * 64 / 513 = 0.75, 1.497, 2.25; (12, 24, 36) * 64 / 513 =
  # 1.497, 2.99, 4.49.
  assert aspp_rates_for(16, 64) == (1, 1, 2)
  assert aspp_rates_for(8, 64) == (1, 3, 4)
  with pytest.raises(ValueError, match='output_stride must be one of'):
    aspp_rates_for(32, 513)


def test_bad_deeplab_arguments():
  with pytest.raises(ValueError, match='output_stride must be one of'):
    create_deeplab('resnet50', num_classes=21, output_stride=32)
  with pytest.raises(ValueError, match='aspp_rates must be 3 positive ints'):
    create_deeplab('resnet50', num_classes=21, aspp_rates=(6, 12))
  with pytest.raises(ValueError, match='num_classes'):
    create_deeplab('resnet50', num_classes=0)
  with pytest.raises(ValueError, match='Unknown arch'):
    create_deeplab('resnet51', num_classes=21)
