"""PyTorch checkpoints (torchvision, MoCo v2, SimCLR, reference) <-> Flax variables.

Reading is split in three steps; the first two live in `lth_jax.interop.state_dicts`
(re-exported here) and `lth_jax.interop.mask_files` reuses them for mask files:

  read_state_dict      file or mapping -> flat {torch key: numpy array}
  backbone_state_dict  strip `module.` / MoCo `encoder_q.` / `backbone.` prefixes, drop
                       the key encoder
  load_pytorch         torchvision keys -> {'params', 'batch_stats'} checked against a model

`to_pytorch` is the inverse of `load_pytorch`; `to_released` writes θ_p as a released
checkpoint of its objective's kind (torchvision, SimCLR, MoCo v2). The key map and the layout transposes
live in `lth_jax.interop.torch_names`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lth_jax.interop import torch_names
from lth_jax.interop.state_dicts import (QUERY_PREFIXES, StateDict, backbone_state_dict,
                                          read_state_dict)
from lth_jax.errors import CheckpointError
from lth_jax.models.resnet import ARCHS, ResNet, is_backbone

Path = torch_names.Path

_LOG = logging.getLogger(__name__)

SOURCES = ('auto', 'torchvision', 'moco', 'simclr')

# What jax_disable_most_optimizations sets, for one small compile only.
_FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
def _fold_pruning(state_dict: Mapping[str, np.ndarray]) -> StateDict:
  """Turns torch.nn.utils.prune's `weight_orig` * `weight_mask` into plain weights."""
  out = {}
  for key, value in state_dict.items():
    if key.endswith('.weight_mask'):
      continue
    if key.endswith('.weight_orig'):
      key = key[:-len('_orig')]
      mask = state_dict.get(key + '_mask')
      value = value if mask is None else value * mask
    out[key] = value
  return out


def _arch_of(block: str, stage_sizes: tuple[int, ...]) -> str:
  for name, arch in ARCHS.items():
    if arch == (block, stage_sizes):
      return name
  return f'a {block} ResNet with stages {stage_sizes}'


def _checkpoint_arch(state_dict: Mapping[str, np.ndarray]) -> str:
  """Names the torchvision ResNet that a state dict's keys describe."""
  stages = []
  for stage in range(1, 5):
    blocks = {int(m[1]) for k in state_dict if (m := re.match(rf'layer{stage}\.(\d+)\.', k))}
    stages.append(max(blocks) + 1 if blocks else 0)
  bottleneck = any(re.match(r'layer\d\.\d+\.conv3\.', k) for k in state_dict)
  return _arch_of('bottleneck' if bottleneck else 'basic', tuple(stages))


def _describe(model: ResNet) -> str:
  return (f'{_arch_of(model.block, tuple(model.stage_sizes))}(stem={model.stem!r}, '
          f'in_channels={model.in_channels}, width_multiplier={model.width_multiplier}, '
          f'head={model.head!r}, num_classes={model.num_classes})')


def _likely_fixes(state_dict: Mapping[str, np.ndarray], model: ResNet) -> list[str]:
  """Guesses, from the checkpoint's structure, which model argument is wrong."""
  fixes = []
  checkpoint_arch = _checkpoint_arch(state_dict)
  model_arch = _arch_of(model.block, tuple(model.stage_sizes))
  if checkpoint_arch in ARCHS and checkpoint_arch != model_arch:
    fixes.append(f'this looks like a {checkpoint_arch} checkpoint loaded into {model_arch}; '
                 f'build the model with create_model({checkpoint_arch!r}, ...)')
  conv1 = state_dict.get('conv1.weight')
  if conv1 is None or conv1.ndim != 4:
    return fixes
  out_channels, in_channels, kernel, _ = conv1.shape
  if out_channels != int(64 * model.width_multiplier):
    fixes.append(f'checkpoint conv1 has {out_channels} output channels; build the model with '
                 f'width_multiplier={out_channels / 64:g}')
  if kernel == 3 and model.stem == 'imagenet':
    fixes.append("checkpoint conv1 is 3x3 (a CIFAR stem); build the model with stem='cifar'")
  conv1_dropped = model.stem == 'cifar' and kernel != 3
  if in_channels != model.in_channels and not conv1_dropped:
    fixes.append(f'checkpoint conv1 has {in_channels} input channel'
                 f'{"" if in_channels == 1 else "s"}; build the model with '
                 f'in_channels={in_channels}')
  return fixes


def _init_fn(model: ResNet):
  # Variable shapes do not depend on the image size; 32x32 is valid for both stems.
  dummy = jnp.zeros((1, 32, 32, model.in_channels), jnp.float32)
  return lambda rng: model.init(rng, dummy, train=False)


def _fresh_variables(model: ResNet, rng: jax.Array, paths: list[Path]) -> dict[Path, np.ndarray]:
  """The leaves `model.init(rng, ...)` would give at `paths`, without the others.

  Only the selected leaves leave the jit, so the forward pass and every other
  initialiser are dead code. XLA's CPU backend spends ~0.4 s optimising each random
  normal; unoptimised, the compile takes a fifth of that and the values differ from
  an optimised `model.init` by a few float32 ulps at most.
  """
  init = _init_fn(model)

  def select(r):
    flat = traverse_util.flatten_dict(init(r))
    return [flat[p] for p in paths]

  compiled = jax.jit(select).lower(rng).compile(compiler_options=_FAST_COMPILE)
  return {p: np.asarray(v) for p, v in zip(paths, compiled(rng))}


def _may_be_fresh(path: Path, model: ResNet, shape: tuple[int, ...],
                  value: np.ndarray | None) -> bool:
  """Whether a variable may be initialised anew when the checkpoint lacks it or misfits.

  That is everything outside the backbone (a head: task-specific by nature; a DeepLab
  `classifier`, a detector's neck) and the stem conv of a CIFAR-stem model when the
  checkpoint's conv1 has another kernel size (the reference's downstream models drop
  the ImageNet 7x7 conv1).
  """
  module = path[1]
  if not is_backbone(module):
    return True
  return (module == 'conv1' and len(path) == 3 and model.stem == 'cifar'
          and (value is None or value.shape[:2] != shape[:2]))


def _torch_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
  # A zero-stride view: the layout transpose of a shape without allocating it.
  return torch_names.to_torch_value(path, np.broadcast_to(np.float32(0), shape)).shape


def _is_moco(raw: StateDict, source: str) -> bool:
  """Whether `raw` holds a MoCo query encoder, checked against the `source` asked for."""
  is_moco = any(k.startswith(QUERY_PREFIXES) for k in raw)
  if source == 'moco' and not is_moco:
    raise CheckpointError(
        "source='moco' but the checkpoint has no 'module.encoder_q.*' keys (its first keys: "
        f"{list(raw)[:3]}); use source='auto' or the checkpoint's own source.")
  if source in ('torchvision', 'simclr') and is_moco:
    raise CheckpointError(
        f"source={source!r} but the checkpoint holds a MoCo query encoder "
        "('module.encoder_q.*' keys); use source='moco' or 'auto'.")
  return is_moco


def _by_flax_path(state_dict: StateDict, expected: Mapping[tuple[str, ...], Any]
                  ) -> tuple[dict[tuple[str, ...], np.ndarray], list[str]]:
  """The checkpoint's values that the model has a place for, by Flax path.

  Returns:
    (values in Flax layout by Flax path, 'key (shape)' of every other entry; bookkeeping
    such as num_batches_tracked is neither).
  """
  found, dropped = {}, []
  for key, value in state_dict.items():
    try:
      path = torch_names.torch_to_flax_key(key)
    except KeyError:
      path = ()
    if path is None:  # bookkeeping such as num_batches_tracked
      continue
    if path in expected:
      found[path] = torch_names.to_flax_value(path, value)
    else:
      dropped.append(f'{key} {tuple(value.shape)}')
  return found, dropped


def _fitting(found: Mapping[tuple[str, ...], np.ndarray],
             expected: Mapping[tuple[str, ...], tuple[int, ...]], model: ResNet,
             dropped: list[str]
             ) -> tuple[dict[tuple[str, ...], np.ndarray], list[tuple[str, ...]], list[str]]:
  """Sorts the model's variables by whether the checkpoint gives them.

  Returns:
    (float32 values `found` with their `expected` shape, the paths to initialise fresh
    (an unfitting value of theirs joins `dropped`), one line per other variable).
  """
  variables, fresh, problems = {}, [], []
  for path, shape in expected.items():
    value = found.get(path)
    if value is not None and value.shape == shape:
      variables[path] = np.ascontiguousarray(value, dtype=np.float32)
      continue
    key, want = torch_names.flax_to_torch_key(path), _torch_shape(path, shape)
    if _may_be_fresh(path, model, shape, value):
      fresh.append(path)
      if value is not None:
        dropped.append(f'{key} {_torch_shape(path, value.shape)}')
    elif value is None:
      problems.append(f'{key} is missing (the model needs shape {want})')
    else:
      problems.append(f'{key} has shape {_torch_shape(path, value.shape)} in the checkpoint, '
                      f'the model needs {want}')
  return variables, fresh, problems


def _misfit(problems: list[str], state_dict: StateDict, model: ResNet, *,
            found_any: bool) -> CheckpointError:
  """The error for a checkpoint that does not fit `model`: likely fixes, then problems."""
  fixes = _likely_fixes(state_dict, model)
  if not found_any:
    fixes.append('none of its keys are torchvision ResNet variables (first keys: '
                 f'{list(state_dict)[:3]}); pass a torchvision, MoCo or SimCLR ResNet')
  shown = problems[:8] + ([f'... and {len(problems) - 8} more'] if len(problems) > 8 else [])
  return CheckpointError(
      f'The checkpoint does not fit the model {_describe(model)}: '
      + ('; '.join(fixes) + '.' if fixes else 'see the keys below.')
      + ''.join(f'\n  {line}' for line in shown))


def load_pytorch(path_or_state_dict: str | os.PathLike | Mapping[str, Any], model: ResNet, *,
                 source: str = 'auto', rng: jax.Array | None = None) -> dict[str, Any]:
  """Converts a PyTorch ResNet checkpoint into Flax variables for `model`.

  Entries the model does not use (a head of another size or kind, the ImageNet 7x7
  `conv1` for a CIFAR-stem model, anything that is not a ResNet variable) are dropped.
  The head (`fc`, `fc_0`, `fc_2`) and the `conv1` of a CIFAR-stem model, when the
  checkpoint lacks them or they do not fit, are initialised as `model.init(rng, ...)`
  would (the same values up to float32 rounding). One `logging.info` line lists what
  was dropped and what is fresh. Pruned reference checkpoints (`weight_orig`,
  `weight_mask`) load as their masked weights.

  Args:
    path_or_state_dict: a `.pth`/`.pth.tar` (needs torch), `.safetensors` or `.npz`
      file, or an in-memory state dict of tensors/arrays.
    model: the Flax ResNet (`lth_jax.models.create_model`) the variables are for.
    source: 'torchvision' (plain keys, optionally behind `module.`), 'moco' (MoCo v2:
      `module.encoder_q.*`; only the query encoder is read, `encoder_k` and `queue`
      are ignored), 'simclr' ({'state_dict': {torchvision keys}}) or 'auto' (MoCo
      when query-encoder keys are present, else torchvision/SimCLR).
    rng: PRNG key for the fresh variables; defaults to jax.random.key(0).

  Returns:
    {'params': ..., 'batch_stats': ...} as plain nested dicts of float32 numpy arrays in
    Flax layout (HWIO convolutions); `jax.device_put` them with the shardings you use.

  Raises:
    CheckpointError: the file cannot be read (see `read_state_dict`), `source` does not
      match the checkpoint, or a variable the model needs is missing or has another
      shape; the message names the keys, both shapes and the likely fix.
  """
  if source not in SOURCES:
    raise ValueError(f'Unknown source {source!r}; choose one of {SOURCES}.')
  raw = read_state_dict(path_or_state_dict)
  is_moco = _is_moco(raw, source)
  backbone = backbone_state_dict(raw)
  state_dict = _fold_pruning(backbone)
  expected = traverse_util.flatten_dict(jax.eval_shape(_init_fn(model), jax.random.key(0)))
  # Parameters first, so that an error leads with the weights rather than BN statistics.
  expected = {p: tuple(expected[p].shape)
              for p in sorted(expected, key=lambda p: p[0] != 'params')}

  found, dropped = _by_flax_path(state_dict, expected)
  variables, fresh, problems = _fitting(found, expected, model, dropped)
  if problems:
    raise _misfit(problems, state_dict, model, found_any=bool(found))
  if fresh:
    variables.update(_fresh_variables(model, jax.random.key(0) if rng is None else rng, fresh))

  ignored = len(raw) - len(backbone)
  _LOG.info(
      'load_pytorch: %d tensors from a %s checkpoint; dropped %d unused entries%s; '
      'initialised fresh: %s%s', len(variables) - len(fresh),
      'moco' if is_moco else {'auto': 'torchvision/simclr'}.get(source, source),
      len(dropped), f' ({", ".join(dropped)})' if dropped else '',
      ', '.join(torch_names.flax_to_torch_key(p) for p in fresh) or 'none',
      f'; ignored {ignored} entries outside the query encoder (key encoder, queue)'
      if ignored else '')
  return traverse_util.unflatten_dict(variables)


def to_pytorch(variables: Mapping[str, Any], *, backbone_prefix: str = '') -> StateDict:
  """Converts Flax ResNet variables into a torchvision-keyed state dict.

  The inverse of `load_pytorch`: `load_pytorch(to_pytorch(v), model)` gives back `v`.
  `num_batches_tracked` is left out; torch's BatchNorm fills it in when loading a
  plain dict, so `module.load_state_dict({k: torch.from_numpy(v) ...})` works strictly.

  Args:
    variables: {'params': ..., 'batch_stats': ...} of a model from `create_model` or
      `create_deeplab` (numpy or jax arrays).
    backbone_prefix: put before the backbone's keys; 'backbone.' gives the reference's
      segmentation state dicts (`classifier.*` keys stay as they are).

  Returns:
    torchvision key -> numpy array in PyTorch layout (OIHW convolutions, [out, in]
    linear weights).
  """
  unknown = set(variables) - {'params', 'batch_stats'}
  if unknown or 'params' not in variables:
    raise ValueError(
        "to_pytorch expects {'params': ..., 'batch_stats': ...}, got collections "
        f'{sorted(variables)}.')
  out = {}
  for path, value in traverse_util.flatten_dict(dict(variables)).items():
    prefix = backbone_prefix if is_backbone(path[1]) else ''
    out[prefix + torch_names.flax_to_torch_key(path)] = np.ascontiguousarray(
        torch_names.to_torch_value(path, np.asarray(value)))
  return out


def to_released(variables: Mapping[str, Any], source: str) -> StateDict:
  """θ_p as a released checkpoint of its kind holds it: `load_pytorch(..., source=source)`
  reads it back.

  Args:
    variables: {'params', 'batch_stats'} of a ResNet with its objective's head.
    source: 'torchvision' (a supervised network: torchvision keys, `fc` included),
      'simclr' (the backbone only: SimCLR's released files have no projection head) or
      'moco' (every key behind 'module.encoder_q.': MoCo v2's query encoder with its
      MLP head).

  Returns:
    key -> numpy array in PyTorch layout.
  """
  state_dict = to_pytorch(variables)
  if source == 'torchvision':
    return state_dict
  if source == 'simclr':
    return {k: v for k, v in state_dict.items() if not k.startswith('fc')}
  if source == 'moco':
    return {QUERY_PREFIXES[0] + k: v for k, v in state_dict.items()}
  raise ValueError(f"Unknown source {source!r}; choose 'torchvision', 'simclr' or 'moco'.")
