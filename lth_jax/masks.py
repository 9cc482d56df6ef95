"""The mask pytree: which weights a ticket keeps.

Masks are a pytree parallel to the params: the same treedef, every leaf present, bool
leaves (True = kept). A *policy* says which leaves are prunable; the others stay all-True,
so `apply` is a plain elementwise select. Every function here also accepts a partial tree
holding only the prunable kernels (what `from_pytorch` returns without `like`), except
`apply`, which needs the full tree.

A leaf is named by its '/'-joined path, e.g. 'layer1_0/conv1/kernel'. The PyTorch side
names the same mask 'layer1.0.conv1.weight_mask' (OIHW); reading and writing the
reference's mask files is `lth_jax.interop.mask_files`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax.runtime import console, tree_io

# Every convolution kernel inside a residual block (never the stem conv1, fc, BN or
# biases). `(^|/)` lets prefixed trees match too: {'encoder_q': ...}, {'params': ...}.
DEFAULT_POLICY = r'(^|/)layer\d+_\d+/(conv\d+|downsample_conv)/kernel$'

Policy = str | re.Pattern | Callable[[str], bool] | None
Row = dict[str, Any]


def predicate(policy: Policy) -> Callable[[str], bool]:
  """The policy as a function of a leaf's name (see `prunable_leaves`).

  Args:
    policy: None (DEFAULT_POLICY), a regex searched in the leaf name, or a callable.

  Returns:
    name -> whether the leaf is prunable.
  """
  if policy is None:
    policy = DEFAULT_POLICY
  if isinstance(policy, (str, re.Pattern)):
    pattern = re.compile(policy)
    return lambda path: pattern.search(path) is not None
  if callable(policy):
    return policy
  raise TypeError(
      f'policy must be None, a regex string or a callable(path) -> bool, got {policy!r}.')


def path_str(path: tuple[Any, ...]) -> str:
  """The '/'-joined name of a pytree key path, e.g. 'layer1_0/conv1/kernel'.

  Args:
    path: a key path from `jax.tree_util.tree_flatten_with_path`.

  Returns:
    The leaf's name as policies and summaries see it.
  """
  return jax.tree_util.keystr(path, simple=True, separator='/')


def prunable_leaves(tree: Any, policy: Policy = None) -> dict[str, Any]:
  """The leaves the policy calls prunable, by name, in tree order.

  Args:
    tree: params or masks.
    policy: None (DEFAULT_POLICY), a regex searched in the leaf name, or a callable.

  Returns:
    {name: leaf}.

  Raises:
    ValueError: the policy selects no leaf (always a misconfiguration).
  """
  is_prunable = predicate(policy)
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  named = [(path_str(p), x) for p, x in flat]
  leaves = {name: leaf for name, leaf in named if is_prunable(name)}
  if not leaves:
    raise ValueError(
        f'The policy {policy if policy is not None else DEFAULT_POLICY!r} selects no leaf '
        f'of the tree (leaves look like {[n for n, _ in named[:4]]}); pass a policy that '
        f'matches the kernels to prune.')
  return leaves


def prunable_paths(tree: Any, policy: Policy = None) -> list[str]:
  """Names of the prunable leaves of `tree`, in tree order.

  Args:
    tree: params or masks.
    policy: see `prunable_leaves`.

  Returns:
    e.g. ['layer1_0/conv1/kernel', ...].
  """
  return list(prunable_leaves(tree, policy))


def replace_leaves(tree: Any, leaves: Mapping[str, Any]) -> Any:
  """`tree` with the named leaves replaced.

  Args:
    tree: any pytree.
    leaves: {name: new leaf} for some of its leaves.

  Returns:
    A tree with the same treedef.
  """
  return jax.tree_util.tree_map_with_path(
      lambda p, x: leaves.get(path_str(p), x), tree)


def init(params: Any, policy: Policy = None) -> Any:
  """A dense mask: all True, with exactly the treedef of `params`.

  Args:
    params: the parameter tree (arrays or jax.ShapeDtypeStruct).
    policy: which leaves later pruning may touch; checked to select at least one leaf.

  Returns:
    A bool tree parallel to `params`, each leaf placed (sharded) like its parameter.
  """
  prunable_leaves(params, policy)
  return jax.tree.map(lambda x: jnp.ones_like(x, dtype=jnp.bool_), params)


def conform(ticket: Any, params: Any, policy: Policy = None) -> Any:
  """A full mask for `params` holding a ticket's prunable masks.

  Tickets move between models that share the prunable convolutions but not the rest
  (an ImageNet-stem ticket on a CIFAR-stem model, another head): the prunable leaves
  are taken from `ticket`, every other leaf of `params` is all-True.

  Args:
    ticket: a mask tree (full or partial) naming the prunable leaves of `params`.
    params: the parameter tree of the model the ticket goes to.
    policy: see `prunable_leaves`.

  Returns:
    A bool tree with the treedef of `params`.

  Raises:
    ValueError: a prunable leaf of `params` has no mask in `ticket`, or its shape differs.
  """
  source = prunable_leaves(ticket, policy)
  target = prunable_leaves(params, policy)
  missing = [n for n in target if n not in source]
  if missing:
    raise ValueError(f'The ticket has no mask for {missing[:4]} ({len(missing)} in all): '
                     'it comes from a different architecture.')
  for name, leaf in target.items():
    if tuple(source[name].shape) != tuple(leaf.shape):
      raise ValueError(f'{name}: the ticket\'s mask has shape {tuple(source[name].shape)}, '
                       f'the model\'s weight {tuple(leaf.shape)}: a different architecture '
                       'or width.')
  return replace_leaves(init(params, policy),
                        {n: jnp.asarray(source[n], jnp.bool_) for n in target})


def apply(params: Any, masks: Any) -> Any:
  """Zeroes the pruned weights. Traceable: usable inside jit.

  Args:
    params: the parameter tree.
    masks: a full mask tree with the treedef of `params`.

  Returns:
    params with pruned entries set to exactly 0.
  """
  if jax.tree.structure(params) != jax.tree.structure(masks):
    raise ValueError(
        'masks must have the treedef of params; build a full tree with '
        'masks.init(params) or masks.from_pytorch(source, like=params).')
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def _ratio(num: int, den: int) -> float:
  return num / den if den else math.nan


def _sparsity_row(shape: tuple[int, ...] | None, total: int, kept: int) -> Row:
  return {'shape': shape, 'total': total, 'kept': kept,
          'sparsity': 1.0 - _ratio(kept, total)}


def summary(masks: Any, policy: Policy = None) -> dict[str, Row]:
  """Per-layer sparsity (print it with `format_table`).

  Args:
    masks: a mask tree (full or partial).
    policy: see `prunable_leaves`.

  Returns:
    {name: {'shape', 'total', 'kept', 'sparsity'}} for every prunable leaf, then a
    'total' row over all of them (shape None).
  """
  rows = {name: _sparsity_row(tuple(m.shape), int(np.size(m)),
                              int(np.count_nonzero(np.asarray(m))))
          for name, m in prunable_leaves(masks, policy).items()}
  rows['total'] = _sparsity_row(None, sum(r['total'] for r in rows.values()),
                                sum(r['kept'] for r in rows.values()))
  return rows


def sparsity(masks: Any, policy: Policy = None) -> float:
  """The fraction of prunable weights that are pruned.

  Args:
    masks: a mask tree (full or partial).
    policy: see `prunable_leaves`.

  Returns:
    pruned / total over all prunable leaves.
  """
  return summary(masks, policy)['total']['sparsity']


_STAGE = re.compile(r'(^|/)(layer\d+)_\d+/')


def stage_of(name: str) -> str | None:
  """The ResNet stage ('layer1'..'layer4') of a leaf name, None outside the stages.

  Args:
    name: a '/'-joined leaf name, e.g. 'layer3_1/conv2/kernel'.

  Returns:
    e.g. 'layer3'.
  """
  match = _STAGE.search(name)
  return match[2] if match else None


def stage_sparsity(masks: Any, policy: Policy = None) -> dict[str, float]:
  """Sparsity of each ResNet stage among its prunable weights.

  Args:
    masks: a mask tree (full or partial).
    policy: see `prunable_leaves`.

  Returns:
    {'sparsity_layer1': ..., ...} in stage order.
  """
  totals: dict[str, list[int]] = {}
  for name, row in summary(masks, policy).items():
    if stage := stage_of(name):
      counts = totals.setdefault(stage, [0, 0])
      counts[0] += row['total']
      counts[1] += row['kept']
  return {f'sparsity_{stage}': 1.0 - kept / total
          for stage, (total, kept) in sorted(totals.items())}


def _overlap_row(total: int, kept_a: int, kept_b: int, both: int) -> Row:
  union = kept_a + kept_b - both
  return {'total': total, 'kept_a': kept_a, 'kept_b': kept_b, 'intersection': both,
          'union': union, 'iou': _ratio(both, union), 'hamming': union - both,
          'a_kept_by_b': _ratio(both, kept_a)}


def overlap(a: Any, b: Any, policy: Policy = None) -> dict[str, Row]:
  """How much two tickets agree.

  Args:
    a: a mask tree.
    b: a mask tree with the same prunable leaves (names and shapes).
    policy: see `prunable_leaves`.

  Returns:
    {name: row} per prunable leaf and a 'total' row; each row has 'total', 'kept_a',
    'kept_b', 'intersection', 'union', 'iou' (intersection / union of kept weights),
    'hamming' (number of positions where the masks differ) and 'a_kept_by_b' (the
    fraction of a's survivors that b keeps). Ratios are nan where undefined (empty
    union, or a keeps nothing).
  """
  leaves_a, leaves_b = prunable_leaves(a, policy), prunable_leaves(b, policy)
  if list(leaves_a) != list(leaves_b):
    only = sorted(set(leaves_a) ^ set(leaves_b))[:4]
    raise ValueError(f'The masks have different prunable leaves (e.g. {only}); compare '
                     f'trees of the same model, e.g. masks["encoder_q"] for a MoCo tree.')
  rows = {}
  for name, ma in leaves_a.items():
    ma, mb = np.asarray(ma, bool), np.asarray(leaves_b[name], bool)
    if ma.shape != mb.shape:
      raise ValueError(f'{name}: shapes differ ({ma.shape} vs {mb.shape}).')
    rows[name] = _overlap_row(ma.size, int(np.count_nonzero(ma)),
                              int(np.count_nonzero(mb)), int(np.count_nonzero(ma & mb)))
  sums = [sum(r[k] for r in rows.values()) for k in ('total', 'kept_a', 'kept_b',
                                                      'intersection')]
  rows['total'] = _overlap_row(*sums)
  return rows


def kernel_emptiness(masks: Any, policy: Policy = None) -> dict[str, Row]:
  """Which whole kxk kernels are fully pruned, per conv layer with k > 1.

  Args:
    masks: a mask tree (full or partial) with HWIO conv kernels.
    policy: see `prunable_leaves`.

  Returns:
    {name: {'empty': bool array [in, out] (True where all kxk weights connecting input
    channel i to output channel o are pruned), 'fraction': the share of empty kernels}}.
  """
  out = {}
  for name, m in prunable_leaves(masks, policy).items():
    if np.ndim(m) == 4 and m.shape[0] * m.shape[1] > 1:
      empty = ~np.asarray(m, bool).any(axis=(0, 1))
      out[name] = {'empty': empty, 'fraction': float(empty.mean())}
  return out


def format_table(rows: Mapping[str, Row]) -> str:
  """Renders the rows of `summary` or `overlap` as an aligned text table.

  Args:
    rows: {name: {column: value}}.

  Returns:
    The table, one line per row, with a header.
  """
  columns = list(dict.fromkeys(c for row in rows.values() for c in row))
  return console.format_table([{'name': name, **row} for name, row in rows.items()],
                              ['name', *columns])


def save(path: str | os.PathLike, masks: Any, *, overwrite: bool = False) -> None:
  """Writes a mask tree with orbax (bool leaves, tree structure kept).

  With several processes every process calls it (see `lth_jax.runtime.tree_io`).

  Args:
    path: a directory to create.
    masks: the mask tree.
    overwrite: replace an existing checkpoint at `path`.
  """
  tree_io.save(path, masks, overwrite=overwrite)


def load(path: str | os.PathLike) -> Any:
  """Reads a mask tree written by `save` (in this process alone).

  Args:
    path: the checkpoint directory.

  Returns:
    The mask tree, bool leaves.
  """
  if not os.path.isdir(os.fspath(path)):
    raise FileNotFoundError(f'No mask checkpoint at {os.path.abspath(os.fspath(path))}; '
                            'write one with masks.save.')
  return tree_io.load(path)
