"""The one mapping between torchvision state-dict keys and Flax variable paths.

A Flax path is (collection, module..., leaf), e.g.
    ('params', 'layer1_0', 'downsample_conv', 'kernel') <-> 'layer1.0.downsample.0.weight'
    ('batch_stats', 'bn1', 'mean')                      <-> 'bn1.running_mean'
Conv kernels are HWIO in Flax and OIHW in PyTorch; Dense kernels are transposed.
Both the checkpoint converter and the mask converter use these functions, so a
ticket found in JAX and a mask file of the reference name the same weights.

A DeepLabV3+ (`lth_jax.models.deeplab`) keeps its backbone at the root with the names
above and its head under `classifier`, named like the reference's keys with each index
joined to the module before it by '_':
    ('params', 'classifier', 'aspp', 'convs_4_1', 'kernel') <-> 'classifier.aspp.convs.4.1.weight'
The reference's whole DeepLab state dict adds `backbone.` before the backbone's keys
(`lth_jax.interop.checkpoints` strips it when reading and adds it back on request).
"""

from __future__ import annotations

import re

import numpy as np

from lth_jax.models.deeplab import HEAD

Path = tuple[str, ...]

_BN_LEAVES = {'scale': 'weight', 'bias': 'bias'}
_BN_STATS = {'mean': 'running_mean', 'var': 'running_var'}
_BN_FROM_TORCH = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
                  'running_mean': ('batch_stats', 'mean'),
                  'running_var': ('batch_stats', 'var')}
# Keys PyTorch keeps that carry no information for inference or training here.
IGNORED_TORCH_LEAVES = ('num_batches_tracked',)

# The DeepLabV3+ head's BatchNorms (by Flax module name).
_HEAD_BN = re.compile(r'project_1|convs_[0-3]_1|convs_4_2|classifier_1')
_HEAD_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', **_BN_STATS}


def is_bn(module: str) -> bool:
  """Whether a Flax module name is a BatchNorm (bn1, bn2, bn3, downsample_bn)."""
  return module.startswith('bn') or module == 'downsample_bn'


def is_dense(module: str) -> bool:
  """Whether a Flax module name is a fully connected layer (fc, fc_0, fc_2)."""
  return re.fullmatch(r'fc(_\d+)?', module) is not None


def _module_to_torch(name: str) -> str:
  if m := re.fullmatch(r'layer(\d+)_(\d+)', name):
    return f'layer{m[1]}.{m[2]}'
  if m := re.fullmatch(r'fc_(\d+)', name):
    return f'fc.{m[1]}'
  return {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(name, name)


def flax_to_torch_key(path: Path) -> str:
  """Maps a Flax variable path (collection first) to its torchvision key.

  Args:
    path: e.g. ('params', 'layer1_0', 'conv1', 'kernel').

  Returns:
    The state-dict key, e.g. 'layer1.0.conv1.weight'.
  """
  collection, *modules, leaf = path
  if modules[0] == HEAD:
    return '.'.join([re.sub(r'_(?=\d)', '.', m) for m in modules] + [_HEAD_LEAVES[leaf]])
  if collection == 'batch_stats':
    torch_leaf = _BN_STATS[leaf]
  elif is_bn(modules[-1]):
    torch_leaf = _BN_LEAVES[leaf]
  else:
    torch_leaf = 'weight' if leaf == 'kernel' else leaf
  return '.'.join([_module_to_torch(m) for m in modules] + [torch_leaf])


def torch_to_flax_key(key: str) -> Path | None:
  """Maps a torchvision key (no prefix) to its Flax path, or None if not a variable.

  Args:
    key: e.g. 'layer1.0.downsample.1.running_var' or 'classifier.project.1.weight'.

  Returns:
    e.g. ('batch_stats', 'layer1_0', 'downsample_bn', 'var'); None for
    bookkeeping entries such as num_batches_tracked.
  """
  parts = key.split('.')
  leaf = parts[-1]
  if leaf in IGNORED_TORCH_LEAVES:
    return None
  if parts[0] == HEAD:
    return _head_torch_to_flax_key(key, parts[1:-1], leaf)
  modules, rest = [], parts[:-1]
  while rest:
    head = rest.pop(0)
    if head.startswith('layer') and rest and rest[0].isdigit():
      modules.append(f'{head}_{rest.pop(0)}')
    elif head == 'downsample' and rest:
      modules.append({'0': 'downsample_conv', '1': 'downsample_bn'}[rest.pop(0)])
    elif head == 'fc' and rest and rest[0].isdigit():
      modules.append(f'fc_{rest.pop(0)}')
    else:
      modules.append(head)
  if not modules:
    raise KeyError(f'{key!r} is not a module parameter.')
  if is_bn(modules[-1]):
    if leaf not in _BN_FROM_TORCH:
      raise KeyError(f'Unexpected BatchNorm entry {key!r}.')
    collection, flax_leaf = _BN_FROM_TORCH[leaf]
    return (collection, *modules, flax_leaf)
  return ('params', *modules, 'kernel' if leaf == 'weight' else leaf)


def _head_torch_to_flax_key(key: str, parts: list[str], leaf: str) -> Path:
  """A DeepLab head key ('classifier.' and the leaf stripped into `parts`, `leaf`)."""
  modules = [HEAD]
  for part in parts:
    if not part.isdigit():
      modules.append(part)
    elif len(modules) > 1:
      modules[-1] += f'_{part}'
    else:
      raise KeyError(f'{key!r} is not a DeepLabV3+ head variable.')
  if len(modules) == 1:
    raise KeyError(f'{key!r} is not a module parameter.')
  if _HEAD_BN.fullmatch(modules[-1]):
    if leaf not in _BN_FROM_TORCH:
      raise KeyError(f'Unexpected BatchNorm entry {key!r}.')
    collection, flax_leaf = _BN_FROM_TORCH[leaf]
    return (collection, *modules, flax_leaf)
  if leaf not in ('weight', 'bias'):
    raise KeyError(f'Unexpected convolution entry {key!r}.')
  return ('params', *modules, 'kernel' if leaf == 'weight' else leaf)


def to_flax_value(path: Path, value: np.ndarray) -> np.ndarray:
  """Converts a PyTorch tensor layout to the Flax layout of `path`.

  Args:
    path: the Flax path the value is for.
    value: the PyTorch array (OIHW conv weight, [out, in] linear weight, ...).

  Returns:
    The array in Flax layout (HWIO conv kernel, [in, out] dense kernel, ...).
  """
  if path[-1] == 'kernel':
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


def to_torch_value(path: Path, value: np.ndarray) -> np.ndarray:
  """The inverse of `to_flax_value`.

  Args:
    path: the Flax path the value comes from.
    value: the Flax array.

  Returns:
    The array in PyTorch layout.
  """
  if path[-1] == 'kernel':
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value
