"""Mask structure: similarity between tickets, layer-wise sparsity, whole-kernel pruning.

Pure functions over mask trees (`lth_jax.masks`); they return plain Python numbers and
NumPy arrays, ready for tables and plots.

Random baseline for similarity: two independent masks drawn uniformly with the same
number of kept weights per layer as the tickets (ka and kb of n) share, in expectation,
E[intersection] = n p q = ka kb / n weights per layer (p = ka / n, q = kb / n). The
expected IoU reported is E[intersection] / (ka + kb - E[intersection]), per layer and,
summing the counts over layers, in total: the ratio of expectations, which equals the
expected ratio up to O(1/n).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from lth_jax import masks as masks_lib

Row = dict[str, Any]

def short_name(name: str) -> str:
  """A layer's name without the trailing '/kernel', for tables and plot labels."""
  return name.removesuffix('/kernel')


def _expected_iou(expected: float, kept_a: int, kept_b: int) -> float:
  union = kept_a + kept_b - expected
  return expected / union if union else float('nan')


def pairwise_overlap(a: Any, b: Any, policy: masks_lib.Policy = None) -> dict[str, Row]:
  """Overlap of two tickets per layer, next to what random masks would share.

  Args:
    a: a mask tree.
    b: a mask tree with the same prunable leaves.
    policy: which leaves are prunable (see `lth_jax.masks.prunable_leaves`).

  Returns:
    The rows of `lth_jax.masks.overlap` (per layer and 'total'), each with two more
    columns: 'expected_intersection' (ka kb / n, summed over layers for 'total') and
    'expected_iou' (see the module docstring).
  """
  rows = masks_lib.overlap(a, b, policy)
  total = rows.pop('total')
  for row in rows.values():
    row['expected_intersection'] = row['kept_a'] * row['kept_b'] / row['total']
  total['expected_intersection'] = sum(r['expected_intersection'] for r in rows.values())
  rows['total'] = total
  for row in rows.values():
    row['expected_iou'] = _expected_iou(row['expected_intersection'], row['kept_a'],
                                        row['kept_b'])
  return rows


def pairwise_overlaps(tickets: Mapping[str, Any], policy: masks_lib.Policy = None
                      ) -> dict[tuple[str, str], dict[str, Row]]:
  """`pairwise_overlap` for every pair of tickets, each with itself included.

  Args:
    tickets: {name: mask tree}, all of the same model.
    policy: which leaves are prunable.

  Returns:
    {(name_i, name_j): rows} for i <= j in the order of `tickets`.
  """
  names = list(tickets)
  return {(x, y): pairwise_overlap(tickets[x], tickets[y], policy)
          for x, y in itertools.combinations_with_replacement(names, 2)}


def overlap_matrix(tickets: Mapping[str, Any], policy: masks_lib.Policy = None,
                   layer: str = 'total',
                   overlaps: Mapping[tuple[str, str], Mapping[str, Row]] | None = None
                   ) -> tuple[list[str], np.ndarray, np.ndarray]:
  """IoU of the kept weights between every pair of tickets, and the random baseline.

  Compare tickets at equal sparsity: the IoU of masks of different density is bounded
  by the ratio of their sizes. The random baseline accounts for any densities.

  Args:
    tickets: {name: mask tree}, all of the same model.
    policy: which leaves are prunable.
    layer: 'total' (all prunable weights) or one layer's leaf name.
    overlaps: the result of `pairwise_overlaps(tickets)`, when already computed.

  Returns:
    (names, iou, expected): symmetric [k, k] float arrays; iou has ones on the
    diagonal (nan for a ticket that keeps nothing there); expected[i, j] is the
    expected IoU of two random masks with the per-layer densities of tickets i and j.
  """
  names = list(tickets)
  if len(names) < 1:
    raise ValueError('overlap_matrix needs at least one ticket.')
  overlaps = pairwise_overlaps(tickets, policy) if overlaps is None else overlaps
  iou = np.zeros((len(names), len(names)))
  expected = np.zeros_like(iou)
  for (i, x), (j, y) in itertools.combinations_with_replacement(enumerate(names), 2):
    rows = overlaps[(x, y)]
    if layer not in rows:
      raise ValueError(f'Unknown layer {layer!r}; choose "total" or one of '
                       f'{[n for n in rows if n != "total"][:4]}...')
    iou[i, j] = iou[j, i] = rows[layer]['iou']
    expected[i, j] = expected[j, i] = rows[layer]['expected_iou']
  return names, iou, expected


def layer_sparsity(tickets: Mapping[str, Any], policy: masks_lib.Policy = None
                   ) -> dict[str, Row]:
  """The layer-wise sparsity profile of each ticket.

  Args:
    tickets: {name: mask tree}, all of the same model.
    policy: which leaves are prunable.

  Returns:
    {layer: {'shape': ..., 'total': n, <ticket>: sparsity, ...}} per prunable leaf in
    tree order, then 'total' (shape None).
  """
  summaries = {name: masks_lib.summary(m, policy) for name, m in tickets.items()}
  layers = None
  for name, rows in summaries.items():
    if layers is None:
      layers = list(rows)
    elif list(rows) != layers:
      raise ValueError(f'{name} has other prunable leaves than {next(iter(summaries))}; '
                       f'compare tickets of the same model.')
  first = next(iter(summaries.values()))
  return {layer: {'shape': first[layer]['shape'], 'total': first[layer]['total'],
                  **{name: rows[layer]['sparsity'] for name, rows in summaries.items()}}
          for layer in layers}


def kernel_structure(masks: Any, policy: masks_lib.Policy = None) -> dict[str, Row]:
  """Whole kxk kernels pruned (the paper's figure 7), per layer, per stage and in total.

  Only layers with k > 1 count (a 1x1 "kernel" is a single weight).

  Args:
    masks: a mask tree with HWIO conv kernels.
    policy: which leaves are prunable.

  Returns:
    {name: {'stage', 'kernels', 'empty', 'fraction'}} for every such layer in tree
    order, then one row per stage ('layer1', ...) and 'total' summing their kernels.
  """
  rows = {}
  for name, item in masks_lib.kernel_emptiness(masks, policy).items():
    empty = item['empty']
    rows[name] = {'stage': masks_lib.stage_of(name), 'kernels': int(empty.size),
                  'empty': int(np.count_nonzero(empty)), 'fraction': item['fraction']}
  if not rows:
    raise ValueError('No prunable conv layer has kernels larger than 1x1.')
  groups: dict[str, list[Row]] = {}
  for row in list(rows.values()):
    if row['stage'] is not None:
      groups.setdefault(row['stage'], []).append(row)
  groups['total'] = list(rows.values())
  for group, members in groups.items():
    kernels = sum(r['kernels'] for r in members)
    empty = sum(r['empty'] for r in members)
    rows[group] = {'stage': group, 'kernels': kernels, 'empty': empty,
                   'fraction': empty / kernels}
  return rows


def kernel_density(masks: Any, layer: str, policy: masks_lib.Policy = None) -> np.ndarray:
  """The share of kept weights in every kernel of one conv layer (0 = pruned whole).

  Args:
    masks: a mask tree with HWIO conv kernels.
    layer: the leaf name, e.g. 'layer1_0/conv2/kernel'.
    policy: which leaves are prunable.

  Returns:
    float array [in_channels, out_channels].
  """
  leaves = masks_lib.prunable_leaves(masks, policy)
  if layer not in leaves or np.ndim(leaves[layer]) != 4:
    convs = [n for n, m in leaves.items() if np.ndim(m) == 4]
    raise ValueError(f'{layer!r} is not a prunable conv kernel; choose one of '
                     f'{convs[:4]}... ({len(convs)} in all).')
  return np.asarray(leaves[layer], bool).mean(axis=(0, 1))


def group_by_sparsity(sparsities: Mapping[Hashable, float], tolerance: float = 5e-4
                      ) -> list[tuple[float, list[Hashable]]]:
  """Groups tickets whose sparsities agree within `tolerance` (equal IMP levels).

  Runs of the same schedule prune the same counts, except for per-layer rounding
  (layer-wise baselines): a small tolerance puts them on one level.

  Args:
    sparsities: {key: sparsity}.
    tolerance: the largest gap between consecutive sparsities of one group.

  Returns:
    [(mean sparsity, [keys])] in increasing sparsity; the keys of a group in the
    order of `sparsities`, so that pairs keep their names from level to level.
  """
  groups: list[list[Hashable]] = []
  last = None
  for key, value in sorted(sparsities.items(), key=lambda kv: kv[1]):
    if last is None or value - last > tolerance:
      groups.append([])
    groups[-1].append(key)
    last = value
  order = {key: i for i, key in enumerate(sparsities)}
  return [(float(np.mean([sparsities[k] for k in g])), sorted(g, key=order.__getitem__))
          for g in groups]
