"""Checkpoint conversion: logit parity with PyTorch, checkpoint formats, clear errors."""

from __future__ import annotations

import logging
import os
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from lth_jax.interop import checkpoints as convert
from lth_jax.models import create_model, init_variables
from lth_jax.testing.torch_reference import build_torch_resnet

try:
  import torch
except ImportError:  # The torch-free formats are still tested (marked below).
  torch = None
needs_torch = pytest.mark.skipif(torch is None, reason='needs PyTorch: pip install torch==2.13.0')

TINY = dict(width_multiplier=0.125)


class CarriesCode:
  """Pickled into a checkpoint, it makes torch.load(weights_only=True) refuse the file."""

  def __reduce__(self):
    return (print, ('this would run on load',))


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


def _torch_model(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
  torch.manual_seed(seed)
  model = build_torch_resnet(arch, **kwargs)
  _randomise_bn(model, seed)
  return model.eval()


def _state_dict(arch: str = 'resnet18', seed: int = 0, **kwargs) -> dict[str, np.ndarray]:
  kwargs = {'num_classes': 10, **TINY, **kwargs}
  return {k: v.numpy() for k, v in _torch_model(arch, seed, **kwargs).state_dict().items()}


def _relative_logit_error(torch_model, flax_model, variables, images: np.ndarray) -> float:
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(images)).numpy()
  got = np.asarray(jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(
      variables, images.transpose(0, 2, 3, 1)))
  return float(np.abs(got - expected).max() / np.abs(expected).max())


def _assert_matches_state_dict(variables, state_dict: dict[str, np.ndarray]) -> None:
  converted = convert.to_pytorch(variables)
  for key, value in converted.items():
    np.testing.assert_array_equal(value, state_dict[key], err_msg=key)


def _assert_same_init(fresh, initialised) -> None:
  # Fresh variables are model.init's values up to float32 rounding (see convert.py).
  np.testing.assert_allclose(fresh, initialised, rtol=1e-6, atol=1e-7)


@needs_torch
@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
@pytest.mark.parametrize('stem,size', [('imagenet', 224), ('cifar', 32)])
def test_logits_match_pytorch(arch, stem, size):
  torch_model = _torch_model(arch, num_classes=10, stem=stem)
  model = create_model(arch, num_classes=10, stem=stem)
  variables = convert.load_pytorch(torch_model.state_dict(), model)
  images = np.random.default_rng(0).standard_normal((2, 3, size, size), np.float32)
  assert _relative_logit_error(torch_model, model, variables, images) < 1e-4


@needs_torch
def test_mlp_head_logits_match_pytorch():
  torch_model = _torch_model('resnet50', num_classes=16, head='mlp', **TINY)
  model = create_model('resnet50', num_classes=16, head='mlp', **TINY)
  variables = convert.load_pytorch(torch_model.state_dict(), model)
  assert set(variables['params']) >= {'fc_0', 'fc_2'}
  images = np.random.default_rng(1).standard_normal((2, 3, 64, 64), np.float32)
  assert _relative_logit_error(torch_model, model, variables, images) < 1e-4


@needs_torch
def test_init_variables_is_model_init_and_takes_modules_with_list_fields():
  from lth_jax.models import ResNet
  kw = dict(block='basic', num_classes=3, stem='cifar', in_channels=1, width_multiplier=0.125)
  listed = init_variables(ResNet(stage_sizes=[1, 1, 1, 1], **kw), jax.random.key(0), 8)
  model = ResNet(stage_sizes=(1, 1, 1, 1), **kw)
  cached = init_variables(model, jax.random.key(0), 8)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(listed),
                                                   jax.tree.leaves(cached)))
  again = jax.jit(lambda r: model.init(r, np.zeros((1, 8, 8, 1), np.float32), train=False))
  assert all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(init_variables(model, jax.random.key(1), 8)),
      jax.tree.leaves(again(jax.random.key(1)))))


def test_round_trip_is_exact():
  state_dict = _state_dict()
  model = create_model('resnet18', num_classes=10, **TINY)
  variables = convert.load_pytorch(state_dict, model)
  back = convert.to_pytorch(variables)
  assert set(back) == {k for k in state_dict if not k.endswith('num_batches_tracked')}
  _assert_matches_state_dict(variables, state_dict)
  again = convert.load_pytorch(back, model)
  jax.tree.map(np.testing.assert_array_equal, again, variables)
  torch_model = build_torch_resnet('resnet18', num_classes=10, **TINY)
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def _moco_checkpoint(head: str = 'mlp') -> tuple[dict, dict, dict]:
  query = _state_dict(seed=1, num_classes=16, head=head)
  key = _state_dict(seed=2, num_classes=16, head=head)
  # Key-encoder entries come after the query's: a loader that strips prefixes blindly
  # (as the reference does) would let them overwrite the query weights.
  state = {f'module.encoder_q.{k}': torch.from_numpy(v) for k, v in query.items()}
  state |= {f'module.encoder_k.{k}': torch.from_numpy(v) for k, v in key.items()}
  state |= {'module.queue': torch.randn(16, 8), 'module.queue_ptr': torch.zeros(1)}
  return {'epoch': 800, 'arch': 'resnet18', 'state_dict': state}, query, key


@needs_torch
def test_moco_reads_the_query_encoder_only(tmp_path, caplog):
  checkpoint, query, key = _moco_checkpoint()
  path = tmp_path / 'moco_v2.pth.tar'
  torch.save(checkpoint, path)
  model = create_model('resnet18', num_classes=16, head='mlp', **TINY)
  with caplog.at_level(logging.INFO, logger='lth_jax.interop.checkpoints'):
    variables = convert.load_pytorch(path, model, source='moco')
  _assert_matches_state_dict(variables, query)
  assert not np.array_equal(query['layer1.0.conv1.weight'], key['layer1.0.conv1.weight'])
  assert f'ignored {len(key) + 2} entries outside the query encoder' in caplog.text
  assert convert.load_pytorch(path, model, source='auto').keys() == variables.keys()


@needs_torch
def test_moco_mlp_head_dropped_for_a_linear_model(caplog):
  checkpoint, query, _ = _moco_checkpoint()
  model = create_model('resnet18', num_classes=16, **TINY)
  with caplog.at_level(logging.INFO, logger='lth_jax.interop.checkpoints'):
    variables = convert.load_pytorch(checkpoint, model)
  assert 'fc.0.weight (64, 64)' in caplog.text and 'fc.2.bias (16,)' in caplog.text
  fresh = init_variables(model, jax.random.key(0), 32)['params']['fc']
  jax.tree.map(_assert_same_init, variables['params']['fc'], fresh)
  np.testing.assert_array_equal(convert.to_pytorch(variables)['layer4.1.conv2.weight'],
                                query['layer4.1.conv2.weight'])


@needs_torch
def test_source_must_match_the_checkpoint():
  checkpoint, _, _ = _moco_checkpoint()
  model = create_model('resnet18', num_classes=16, head='mlp', **TINY)
  with pytest.raises(convert.CheckpointError, match="use source='moco'"):
    convert.load_pytorch(checkpoint, model, source='torchvision')
  with pytest.raises(convert.CheckpointError, match="no 'module.encoder_q"):
    convert.load_pytorch(_state_dict(), model, source='moco')
  with pytest.raises(ValueError, match='Unknown source'):
    convert.load_pytorch(_state_dict(), model, source='byol')


@pytest.mark.parametrize('wrap,source', [
    (lambda sd: {'state_dict': sd}, 'simclr'),  # SimCLR converted from the TF release
    (lambda sd: {f'module.{k}': v for k, v in sd.items()}, 'torchvision'),  # DataParallel
])
@needs_torch
def test_simclr_and_module_prefix(wrap, source):
  state_dict = _state_dict()
  model = create_model('resnet18', num_classes=10, **TINY)
  _assert_matches_state_dict(convert.load_pytorch(wrap(state_dict), model, source=source),
                             state_dict)


@pytest.mark.parametrize('suffix', ['.safetensors', '.npz'])
def test_safetensors_and_npz_load_without_torch(tmp_path, monkeypatch, suffix):
  model = create_model('resnet18', num_classes=10, **TINY)
  state_dict = convert.to_pytorch(jax.device_get(init_variables(model, jax.random.key(3), 32)))
  path = str(tmp_path / f'resnet18{suffix}')
  if suffix == '.safetensors':
    save_file(state_dict, path)
  else:
    np.savez(path, **state_dict)
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now fails
  _assert_matches_state_dict(convert.load_pytorch(path, model), state_dict)
  torch_path = tmp_path / 'resnet18.pth'
  torch_path.write_bytes(b'PK\x03\x04')
  with pytest.raises(ImportError, match=r'pip install torch==2\.13\.0'):
    convert.load_pytorch(torch_path, model)


@needs_torch
def test_new_head_is_fresh_and_the_rest_is_loaded(caplog):
  state_dict = _state_dict(num_classes=1000)
  model = create_model('resnet18', num_classes=10, **TINY)
  rng = jax.random.key(7)
  with caplog.at_level(logging.INFO, logger='lth_jax.interop.checkpoints'):
    variables = convert.load_pytorch(state_dict, model, rng=rng)
  assert 'fc.weight (1000, 64)' in caplog.text and 'initialised fresh: fc.bias, fc.weight' in (
      caplog.text)
  assert len([r for r in caplog.records if r.name == 'lth_jax.interop.checkpoints']) == 1
  fresh = init_variables(model, rng, 32)['params']['fc']
  jax.tree.map(_assert_same_init, variables['params']['fc'], fresh)
  converted = convert.to_pytorch(variables)
  for key in converted:
    if not key.startswith('fc.'):
      np.testing.assert_array_equal(converted[key], state_dict[key], err_msg=key)


@needs_torch
def test_cifar_one_channel_model_from_an_imagenet_checkpoint(caplog):
  state_dict = _state_dict(num_classes=1000)
  model = create_model('resnet18', num_classes=10, stem='cifar', in_channels=1, **TINY)
  with caplog.at_level(logging.INFO, logger='lth_jax.interop.checkpoints'):
    variables = convert.load_pytorch(state_dict, model)
  assert 'conv1.weight (8, 3, 7, 7)' in caplog.text
  fresh = init_variables(model, jax.random.key(0), 32)
  _assert_same_init(variables['params']['conv1']['kernel'], fresh['params']['conv1']['kernel'])
  assert variables['params']['conv1']['kernel'].shape == (3, 3, 1, 8)
  np.testing.assert_array_equal(variables['batch_stats']['bn1']['var'],
                                state_dict['bn1.running_var'])
  images = np.zeros((2, 32, 32, 1), np.float32)
  assert model.apply(variables, images, train=False).shape == (2, 10)


@needs_torch
def test_pruned_reference_checkpoint_loads_masked_weights():
  from torch.nn.utils import prune

  torch_model = _torch_model('resnet18', num_classes=10, **TINY)
  conv = torch_model.layer2[0].conv1
  prune.l1_unstructured(conv, 'weight', amount=0.5)
  state_dict = torch_model.state_dict()
  assert 'layer2.0.conv1.weight_orig' in state_dict
  variables = convert.load_pytorch(state_dict, create_model('resnet18', num_classes=10, **TINY))
  loaded = convert.to_pytorch(variables)['layer2.0.conv1.weight']
  np.testing.assert_array_equal(loaded, conv.weight.detach().numpy())
  assert (loaded == 0).mean() == 0.5


# ---------------------------------------------------------------- bad input, one error each

def _model():
  return create_model('resnet18', num_classes=10, **TINY)


def test_missing_file(tmp_path):
  with pytest.raises(convert.CheckpointError, match='does not exist'):
    convert.load_pytorch(tmp_path / 'nope.pth', _model())


@needs_torch
def test_truncated_file(tmp_path):
  path = tmp_path / 'resnet18.pth'
  torch.save({k: torch.from_numpy(v) for k, v in _state_dict().items()}, path)
  path.write_bytes(path.read_bytes()[:os.path.getsize(path) // 2])
  with pytest.raises(convert.CheckpointError, match='truncated or corrupted'):
    convert.load_pytorch(path, _model())


@pytest.mark.parametrize('content', [b'name,accuracy\nresnet18,0.95\n', bytes(range(7, 256))])
def test_not_a_checkpoint(tmp_path, content):
  path = tmp_path / 'results.pth'
  path.write_bytes(content)
  with pytest.raises(convert.CheckpointError, match='is not a PyTorch checkpoint'):
    convert.load_pytorch(path, _model())


@pytest.mark.parametrize('suffix', ['.safetensors', '.npz'])
def test_not_a_safetensors_or_npz_file(tmp_path, suffix):
  path = tmp_path / f'notes{suffix}'
  path.write_text('not a checkpoint')
  with pytest.raises(convert.CheckpointError, match='is not a readable'):
    convert.load_pytorch(path, _model())


@needs_torch
def test_checkpoint_that_carries_code_is_refused(tmp_path, capsys):
  path = tmp_path / 'unsafe.pth'
  state = {k: torch.from_numpy(v) for k, v in _state_dict().items()}
  torch.save({'state_dict': state, 'extra': CarriesCode()}, path)
  with pytest.raises(convert.CheckpointError, match='refused for safety') as err:
    convert.load_pytorch(path, _model())
  assert 'print' in str(err.value) and 're-save it as a plain state dict' in str(err.value)
  assert 'this would run on load' not in capsys.readouterr().out


@needs_torch
def test_resnet18_checkpoint_into_resnet50():
  model = create_model('resnet50', num_classes=10, **TINY)
  with pytest.raises(convert.CheckpointError,
                     match='resnet18 checkpoint loaded into resnet50') as err:
    convert.load_pytorch(_state_dict('resnet18'), model)
  assert 'layer1.0.conv1.weight has shape (8, 8, 3, 3) in the checkpoint, the model needs ' \
         '(8, 8, 1, 1)' in str(err.value)


@needs_torch
def test_wrong_number_of_input_channels():
  state_dict = _state_dict(in_channels=1)
  with pytest.raises(convert.CheckpointError,
                     match='conv1 has 1 input channel; build the model with in_channels=1'):
    convert.load_pytorch(state_dict, _model())


def test_state_dict_of_another_network():
  with pytest.raises(convert.CheckpointError, match='none of its keys are torchvision ResNet'):
    convert.load_pytorch({'encoder.layers.0.weight': np.zeros((4, 4))}, _model())
