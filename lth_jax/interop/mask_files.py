"""The reference's PyTorch mask files <-> mask trees.

    ticket = mask_files.from_pytorch('mask_level_4.pth', like=params)
    mask_files.to_pytorch(ticket)      # {'layer1.0.conv1.weight_mask': OIHW array, ...}
    mask_files.save_torch_file(path, ticket)   # the same as a torch.save'd .pth

Accepted sources: a dict {'layer1.0.conv1.weight_mask': tensor, ...}, a pruned state dict
('<name>.weight_orig' + '<name>.weight_mask'), either behind 'module.',
'module.encoder_q.' or a segmentation model's 'backbone.' prefix (or a nested
{'backbone': ...} dict), as a file (.pth/.pth.tar/.safetensors/.npz) or a mapping. The key
map is `lth_jax.interop.torch_names`.
"""

from __future__ import annotations

import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from lth_jax import masks as masks_lib
from lth_jax.interop import checkpoints, torch_names
from lth_jax.runtime import files

# First module of a torchvision ResNet path; anything before it is a wrapper prefix.
_BACKBONE_ROOT = re.compile(r'conv1|bn1|layer\d+_\d+|fc(_\d+)?')
_MASK_SUFFIX = '_mask'
Policy = masks_lib.Policy


def _backbone_root(parts: tuple[str, ...]) -> tuple[str, ...]:
  for i, part in enumerate(parts):
    if _BACKBONE_ROOT.fullmatch(part):
      return parts[i:]
  return parts


def _read_pytorch_masks(source: Any) -> dict[tuple[str, ...], tuple[str, np.ndarray]]:
  """{backbone path: (torch key, 0/1 array in Flax layout)} of a PyTorch source."""
  state = checkpoints.backbone_state_dict(checkpoints.read_state_dict(source))
  found = {}
  for key, value in state.items():
    if not key.endswith(_MASK_SUFFIX):
      continue
    param_key = key[:-len(_MASK_SUFFIX)]
    try:
      path = torch_names.torch_to_flax_key(param_key)
    except KeyError as e:
      raise ValueError(f'{key!r} does not name a model parameter: {e}') from None
    if path is None or path[0] != 'params':
      raise ValueError(f'{key!r} does not mask a parameter.')
    if not np.isin(value, (0, 1)).all():
      raise ValueError(f'{key!r} holds values other than 0 and 1; it is not a mask.')
    root = _backbone_root(path[1:])
    if root in found:
      raise ValueError(f'{found[root][0]!r} and {key!r} both mask {"/".join(root)}; '
                       f'pass a state dict with a single backbone.')
    found[root] = (param_key, torch_names.to_flax_value(path, value) != 0)
  if not found:
    raise ValueError(
        'No mask in the source: expected keys like "layer1.0.conv1.weight_mask" '
        '(a mask dict, or a pruned state dict with weight_orig/weight_mask).')
  return found


def from_pytorch(source: Any, like: Any = None, policy: Policy = None) -> Any:
  """Reads the reference's PyTorch masks.

  Accepted: a dict {'layer1.0.conv1.weight_mask': OIHW tensor, ...}, a pruned state dict
  with '<name>.weight_orig' + '<name>.weight_mask', either behind 'module.' or
  'module.encoder_q.' prefixes, as a file (.pth/.pth.tar/.safetensors/.npz) or a mapping.

  Args:
    source: a path or a mapping of PyTorch key -> tensor/array.
    like: a params tree; when given, the result is a full mask tree with its treedef
      (non-prunable leaves all True). Wrapped backbones match by their torchvision part:
      for a MoCo tree {'encoder_q': ..., 'encoder_k': ...} both encoders get the mask.
    policy: see `prunable_leaves`; every mask in `source` must fall on a prunable leaf.

  Returns:
    The full mask tree, or without `like` a nested dict of only the masked kernels,
    e.g. {'layer1_0': {'conv1': {'kernel': bool HWIO}}}.
  """
  found = _read_pytorch_masks(source)
  is_prunable = masks_lib.predicate(policy)
  if like is None:
    tree: dict[str, Any] = {}
    for root, (key, value) in found.items():
      if not is_prunable('/'.join(root)):
        raise ValueError(f'{key!r} masks {"/".join(root)}, which the policy does not '
                         f'call prunable; pass a policy that includes it.')
      node = tree
      for part in root[:-1]:
        node = node.setdefault(part, {})
      node[root[-1]] = jnp.asarray(value)
    return tree
  leaves, used = {}, set()
  for name, leaf in masks_lib.prunable_leaves(like, policy).items():
    root = _backbone_root(tuple(name.split('/')))
    torch_key = torch_names.flax_to_torch_key(('params', *root))
    if root not in found:
      raise ValueError(f'The source has no mask {torch_key + _MASK_SUFFIX!r} for the '
                       f'prunable leaf {name}.')
    value = found[root][1]
    if value.shape != tuple(leaf.shape):
      torch_shape = torch_names.to_torch_value(('params', *root), value).shape
      raise ValueError(
          f'{torch_key + _MASK_SUFFIX!r} has shape {torch_shape} (PyTorch layout) but '
          f'{name} needs {tuple(leaf.shape)} (Flax layout); the mask is for another model.')
    leaves[name] = jnp.asarray(value)
    used.add(root)
  unused = [found[r][0] + _MASK_SUFFIX for r in found if r not in used]
  if unused:
    raise ValueError(f'Masks {unused[:4]} match no prunable leaf of `like`; use a policy '
                     f'that includes them or remove them from the source.')
  return masks_lib.replace_leaves(masks_lib.init(like, policy), leaves)


def to_pytorch(masks: Any, policy: Policy = None) -> dict[str, np.ndarray]:
  """The reference's mask dict, e.g. {'layer1.0.conv1.weight_mask': OIHW array}.

  Values are float32 0/1, the dtype torch.nn.utils.prune keeps for float32 weights, so
  the dict drops into the reference (`torch.from_numpy` each value). Only prunable leaves
  are written; a wrapper prefix in the tree becomes a key prefix ('encoder_q.layer1...').

  Args:
    masks: a mask tree (full or partial).
    policy: see `prunable_leaves`.

  Returns:
    {torch key + '_mask': contiguous float32 array}.
  """
  out = {}
  for name, m in masks_lib.prunable_leaves(masks, policy).items():
    path = ('params', *name.split('/'))
    value = torch_names.to_torch_value(path, np.asarray(m))
    out[torch_names.flax_to_torch_key(path) + _MASK_SUFFIX] = np.ascontiguousarray(
        value, np.float32)
  return out


def save_torch_file(path: str, masks: Any, policy: Policy = None) -> bool:
  """Writes `to_pytorch(masks)` as a `.pth` file with torch.save (atomically).

  The entries are float32 0/1 tensors named '<layer>.weight_mask', what
  torch.nn.utils.prune leaves in the reference's checkpoints.

  Args:
    path: the `.pth` file.
    masks: the mask tree.
    policy: which leaves are prunable (only those are written).

  Returns:
    False, writing nothing, when torch is not installed (the `.npz` the IMP rounds write
    holds the same masks).
  """
  try:
    import torch
  except ImportError:
    return False
  state = {k: torch.from_numpy(v) for k, v in to_pytorch(masks, policy).items()}
  files.atomic_write(path, lambda f: torch.save(state, f), mode='wb')
  return True
