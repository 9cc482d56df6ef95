"""PyTorch checkpoints (torchvision, MoCo v2, SimCLR, reference masks) <-> Flax trees.

(Skeleton: read_state_dict and backbone_state_dict are the shared entry points used by
`lth_jax.masks` as well; the converter itself is completed in this module.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

StateDict = dict[str, np.ndarray]

# Prefixes that wrap a torchvision backbone in the checkpoints we read, longest first.
_BACKBONE_PREFIXES = ('module.encoder_q.', 'encoder_q.', 'module.')


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):
    return value.detach().cpu().numpy()
  return np.asarray(value)


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> StateDict:
  """Reads a PyTorch-style state dict from a file or a mapping.

  Args:
    source: a `.pth`/`.pth.tar` file, a `.safetensors` or `.npz` file with PyTorch key
      names, or an in-memory mapping of name -> tensor/array. A top-level
      {'state_dict': ...} wrapper is unwrapped.

  Returns:
    A flat dict of PyTorch key -> numpy array.
  """
  if isinstance(source, Mapping):
    raw = source
  else:
    path = os.fspath(source)
    if path.endswith('.safetensors'):
      from safetensors.numpy import load_file
      raw = load_file(path)
    elif path.endswith('.npz'):
      with np.load(path, allow_pickle=False) as f:
        raw = dict(f)
    else:
      import torch
      raw = torch.load(path, map_location='cpu', weights_only=True)
  if 'state_dict' in raw and isinstance(raw['state_dict'], Mapping):
    raw = raw['state_dict']
  return {k: _to_numpy(v) for k, v in raw.items() if hasattr(v, 'shape')}


def backbone_state_dict(state_dict: Mapping[str, np.ndarray]) -> StateDict:
  """Strips wrapper prefixes and keeps only the backbone (MoCo: the query encoder).

  Args:
    state_dict: flat PyTorch key -> array.

  Returns:
    The torchvision-named entries. MoCo's `encoder_k.*` and `queue*` are dropped, never
    merged into the query encoder.
  """
  has_query = any(k.startswith(('module.encoder_q.', 'encoder_q.')) for k in state_dict)
  out = {}
  for key, value in state_dict.items():
    if has_query and not key.startswith(('module.encoder_q.', 'encoder_q.')):
      continue
    for prefix in _BACKBONE_PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
        break
    out[key] = value
  return out
