"""PyTorch state dicts from files or mappings: reading, unwrapping, the backbone's keys.

    raw = read_state_dict('moco_v2_800ep_pretrain.pth.tar')   # flat {torch key: array}
    backbone = backbone_state_dict(raw)                          # torchvision keys only

`.pth`/`.pth.tar` files need torch (imported only for them; `weights_only=True`, so a file
that carries code is refused with a way to re-save it); `.safetensors` and `.npz` files
load without it. `lth_jax.interop.checkpoints` turns the result into Flax variables and
`lth_jax.interop.mask_files` into masks.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from lth_jax.errors import CheckpointError

StateDict = dict[str, np.ndarray]

# Prefixes that wrap a torchvision backbone in the checkpoints we read, longest first
# (MoCo's query encoder; the reference's segmentation models' `backbone.`).
_BACKBONE_PREFIXES = ('module.encoder_q.', 'encoder_q.', 'module.backbone.', 'backbone.',
                      'module.')
QUERY_PREFIXES = ('module.encoder_q.', 'encoder_q.')
# Top-level keys that wrap a state dict: SimCLR / MoCo files, the reference's
# segmentation checkpoints (`save_ckpt` writes 'model_state').
_WRAPPERS = ('state_dict', 'model_state')
_ZIP_MAGIC = b'PK\x03\x04'
# Every pickle of protocol >= 2 (torch's legacy format) starts with the PROTO opcode.
_PICKLE_MAGIC = b'\x80'
_TORCH_HINT = ('reading .pth/.pth.tar files needs PyTorch: install a CPU build with '
               '`pip install torch==2.13.0` (or the `torch` extra, `pip install '
               'lth_jax[torch]`, after it), or convert the file to .safetensors/.npz '
               'where torch is available.')
_RESAVE_HINT = ('If you trust its source, re-save it as a plain state dict where torch is '
                'available: `ckpt = torch.load(path, weights_only=False); '
                "sd = ckpt.get('state_dict', ckpt); torch.save({k: v for k, v in "
                "sd.items() if isinstance(v, torch.Tensor)}, 'clean.pth')`.")


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):
    value = value.detach().cpu()
    if not value.dtype.is_floating_point or value.dtype.itemsize >= 4:
      return value.numpy()
    # numpy has no bfloat16; half precision is widened before leaving torch.
    return value.float().numpy()
  return np.asarray(value)


def _torch_load(path: str) -> Any:
  """torch.load that never runs a checkpoint's code and explains every failure."""
  with open(path, 'rb') as f:
    magic = f.read(4)
  if not magic.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
    raise CheckpointError(
        f'{path} is not a PyTorch checkpoint (it starts with {magic!r}, not a zip archive '
        'or a pickle); pass a .pth/.pth.tar file saved by torch.save, or a .safetensors '
        'or .npz state dict.')
  try:
    import torch
  except ImportError as e:
    raise ImportError(f'{path}: {_TORCH_HINT}') from e
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
    message = str(e)
    if 'Weights only load failed' in message:
      found = re.search(r'Unsupported global: GLOBAL (\S+)', message)
      what = f' (it references {found[1]})' if found else ''
      raise CheckpointError(
          f'{path} was refused for safety: it holds pickled Python objects beyond tensors'
          f'{what}, and loading it would run code from the file. {_RESAVE_HINT}') from e
    raise CheckpointError(
        f'{path} could not be read; it looks truncated or corrupted ({type(e).__name__}: '
        f'{message.splitlines()[0] if message else "unexpected end of file"}). '
        'Download or save it again.') from e


def _load_file(path: str) -> Any:
  if not os.path.isfile(path):
    raise CheckpointError(f'Checkpoint file {path!r} does not exist.')
  if path.endswith('.safetensors'):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
      return load_file(path)
    except SafetensorError as e:
      raise CheckpointError(
          f'{path} is not a readable safetensors file ({e}); it is truncated, corrupted '
          'or in another format.') from e
  if path.endswith('.npz'):
    try:
      with np.load(path, allow_pickle=False) as f:
        return dict(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
      raise CheckpointError(
          f'{path} is not a readable .npz of arrays ({type(e).__name__}: {e}); it is '
          'truncated, corrupted, holds pickled objects or is in another format.') from e
  return _torch_load(path)


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> StateDict:
  """Reads a PyTorch-style state dict from a file or a mapping.

  Args:
    source: a `.pth`/`.pth.tar` file, a `.safetensors` or `.npz` file with PyTorch key
      names, or an in-memory mapping of name -> tensor/array. A top-level
      {'state_dict': ...} or {'model_state': ...} wrapper is unwrapped, and nested dicts
      read as dotted keys.

  Returns:
    A flat dict of PyTorch key -> numpy array (non-array entries such as an epoch
    counter or optimizer state are left out).

  Raises:
    CheckpointError: the file is missing, truncated, not a checkpoint, refused because
      it carries code, or holds no arrays.
  """
  raw = source if isinstance(source, Mapping) else _load_file(os.fspath(source))
  if not isinstance(raw, Mapping):
    raise CheckpointError(
        f'Expected a state dict (a mapping of names to tensors), got {type(raw).__name__}.')
  for wrapper in _WRAPPERS:
    if isinstance(raw.get(wrapper), Mapping):
      raw = raw[wrapper]
      break
  # Nested dicts ({'backbone': {'layer1.0.conv1.weight': ...}}) read as dotted keys.
  flat = traverse_util.flatten_dict(dict(raw), sep='.')
  out = {k: _to_numpy(v) for k, v in flat.items() if hasattr(v, 'shape')}
  if not out:
    raise CheckpointError(
        f'The checkpoint holds no tensors (its entries: {sorted(map(str, raw))[:10]}).')
  return out


def backbone_state_dict(state_dict: Mapping[str, np.ndarray]) -> StateDict:
  """Strips wrapper prefixes and keeps only the backbone (MoCo: the query encoder).

  Args:
    state_dict: flat PyTorch key -> array.

  Returns:
    The torchvision-named entries. MoCo's `encoder_k.*` and `queue*` are dropped, never
    merged into the query encoder.
  """
  has_query = any(k.startswith(QUERY_PREFIXES) for k in state_dict)
  out = {}
  for key, value in state_dict.items():
    if has_query and not key.startswith(QUERY_PREFIXES):
      continue
    for prefix in _BACKBONE_PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
        break
    out[key] = value
  return out
