"""PNG figures of the analyses; each function writes one file and returns its path.

Inputs are the plain results of `structure` and `perturbation`, so the figures can be
redrawn from the JSON the report stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lth_jax.analysis.structure import short_name
from lth_jax.lottery.result_files import sparsity_axis
from lth_jax.runtime import files

# A measured IoU equal to its random expectation (a pair with a random-pruning run) would
# hide one line under the other: the expectation is a thin dashed line over a wide, light
# measured one, so both stay visible.
MEASURED = {'lw': 3.0, 'alpha': 0.5, 'zorder': 2}
EXPECTED = {'ls': '--', 'lw': 1.2, 'zorder': 3}


def _pyplot() -> Any:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _save(fig: Any, path: str) -> str:
  files.save_figure(fig, path, dpi=110)
  _pyplot().close(fig)
  return path


def _layer_axis(ax: Any, layers: Sequence[str]) -> None:
  ax.set_xticks(range(len(layers)))
  ax.set_xticklabels([short_name(n) for n in layers], rotation=90,
                     fontsize=max(4, 9 - len(layers) // 12))
  ax.grid(alpha=0.3)


def _width(layers: Sequence[Any]) -> float:
  return min(16.0, max(6.4, 0.22 * len(layers)))


def _legend_with_expectation(ax: Any) -> None:
  """The legend of the measured pairs plus one entry for every pair's dashed expectation
  (a legend entry per dashed line would read 'a vs random: random')."""
  from matplotlib.lines import Line2D

  handles, labels = ax.get_legend_handles_labels()
  handles.append(Line2D([], [], color='0.3', **EXPECTED))
  labels.append('dashed: expected for independent random masks\nwith the same layer densities')
  ax.legend(handles, labels, fontsize=7)


def overlap_matrix(path: str, names: Sequence[str], iou: np.ndarray, expected: np.ndarray,
                   title: str = '') -> str:
  """Heatmap of pairwise IoU; each cell also shows the random masks' expected IoU.

  Args:
    path: PNG path.
    names: ticket names.
    iou: [k, k] IoU of kept weights.
    expected: [k, k] expected IoU of random masks of the same per-layer sparsity.
    title: figure title.

  Returns:
    `path`.
  """
  plt = _pyplot()
  k = len(names)
  fig, ax = plt.subplots(figsize=(2.2 + 1.3 * k, 1.6 + 1.1 * k),
                         layout='constrained')
  image = ax.imshow(iou, vmin=0, vmax=1, cmap='viridis')
  for i in range(k):
    for j in range(k):
      ax.text(j, i, f'{iou[i, j]:.3f}\n(rand {expected[i, j]:.3f})', ha='center',
              va='center', fontsize=7, color='w' if iou[i, j] < 0.6 else 'k')
  ax.set_xticks(range(k))
  ax.set_xticklabels(names, rotation=30, ha='right', fontsize=8)
  ax.set_yticks(range(k))
  ax.set_yticklabels(names, fontsize=8)
  fig.colorbar(image, ax=ax, label='IoU of kept weights')
  ax.set_title(title, fontsize=9)
  return _save(fig, path)


def layer_overlap(path: str, overlaps: Mapping[str, Mapping[str, Mapping[str, Any]]],
                  title: str = '') -> str:
  """Per-layer IoU of ticket pairs (solid) and its random expectation (dashed, over it).

  Args:
    path: PNG path.
    overlaps: {pair label: rows of `structure.pairwise_overlap`}.
    title: figure title.

  Returns:
    `path`.
  """
  plt = _pyplot()
  layers = [n for n in next(iter(overlaps.values())) if n != 'total']
  fig, ax = plt.subplots(figsize=(_width(layers), 4.2), layout='constrained')
  for i, (label, rows) in enumerate(overlaps.items()):
    color = f'C{i % 10}'
    ax.plot([rows[n]['iou'] for n in layers], marker='o', ms=3, color=color, label=label,
            **MEASURED)
    ax.plot([rows[n]['expected_iou'] for n in layers], color=color, **EXPECTED)
  _layer_axis(ax, layers)
  ax.set_ylabel('IoU of kept weights')
  ax.set_ylim(0, 1.02)
  ax.set_title(title, fontsize=9)
  _legend_with_expectation(ax)
  return _save(fig, path)


def overlap_vs_sparsity(path: str, rows: Sequence[Mapping[str, Any]], title: str = '') -> str:
  """Total IoU of each pair of runs against sparsity, with the random expectation.

  The x axis is the results plot's (`lth_jax.lottery.result_files.sparsity_axis`). Each pair's
  expectation is a thin dashed line of its colour over the measured one, and one
  legend entry names them all: a pair with a random-pruning run lies on its dashed line by
  construction, since random pruning keeps weights independently of the other run.

  Args:
    path: PNG path.
    rows: dicts with 'pair', 'sparsity', 'iou', 'expected_iou', of trained masks only.
    title: figure title.

  Returns:
    `path`.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.2), layout='constrained')
  pairs = list(dict.fromkeys(r['pair'] for r in rows))
  for i, pair in enumerate(pairs):
    mine = sorted((r for r in rows if r['pair'] == pair), key=lambda r: r['sparsity'])
    x = [100 * (1 - r['sparsity']) for r in mine]
    ax.plot(x, [r['iou'] for r in mine], marker='o', ms=4, color=f'C{i % 10}', label=pair,
            **MEASURED)
    ax.plot(x, [r['expected_iou'] for r in mine], color=f'C{i % 10}', **EXPECTED)
  sparsity_axis(ax, min(100 * (1 - r['sparsity']) for r in rows))
  ax.set_ylabel('IoU of kept weights')
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.set_title(title, fontsize=9)
  _legend_with_expectation(ax)
  return _save(fig, path)


def layer_sparsity(path: str, profile: Mapping[str, Mapping[str, Any]],
                   tickets: Sequence[str], title: str = '') -> str:
  """Sparsity of every prunable layer, one line per ticket.

  Args:
    path: PNG path.
    profile: the result of `structure.layer_sparsity` ('total' is drawn as a level).
    tickets: the ticket columns to draw.
    title: figure title.

  Returns:
    `path`.
  """
  plt = _pyplot()
  layers = [n for n in profile if n != 'total']
  fig, ax = plt.subplots(figsize=(_width(layers), 4.2), layout='constrained')
  for i, name in enumerate(tickets):
    color = f'C{i % 10}'
    ax.plot([100 * profile[n][name] for n in layers], marker='o', ms=3, color=color,
            label=name)
    ax.axhline(100 * profile['total'][name], color=color, ls=':', lw=1)
  _layer_axis(ax, layers)
  ax.set_ylabel('sparsity (%) (dotted: total)')
  ax.set_ylim(0, 100)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  return _save(fig, path)


def kernel_structure(path: str, structures: Mapping[str, Mapping[str, Mapping[str, Any]]],
                     title: str = '') -> str:
  """Fraction of kxk kernels pruned whole: per layer (left) and per stage (right).

  Args:
    path: PNG path.
    structures: {ticket: result of `structure.kernel_structure`}.
    title: figure title.

  Returns:
    `path`.
  """
  plt = _pyplot()
  first = next(iter(structures.values()))
  layers = [n for n, r in first.items() if r['stage'] != n and n != 'total']
  groups = [n for n, r in first.items() if r['stage'] == n]
  fig, (left, right) = plt.subplots(
      1, 2, figsize=(_width(layers) + 3.5, 4.2),
      gridspec_kw={'width_ratios': [max(2, len(layers) / 4), 1]},
      layout='constrained')
  width = 0.8 / len(structures)
  for i, (name, rows) in enumerate(structures.items()):
    color = f'C{i % 10}'
    left.plot([100 * rows[n]['fraction'] for n in layers], marker='o', ms=3, color=color,
              label=name)
    right.bar(np.arange(len(groups)) + (i - (len(structures) - 1) / 2) * width,
              [100 * rows[g]['fraction'] for g in groups], width, color=color, label=name)
  _layer_axis(left, layers)
  left.set_ylabel('kernels pruned whole (%)')
  left.legend(fontsize=7)
  right.set_xticks(range(len(groups)))
  right.set_xticklabels(groups, rotation=30, fontsize=8)
  right.grid(alpha=0.3, axis='y')
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def kernel_heatmaps(path: str, densities: Mapping[str, np.ndarray], layer: str) -> str:
  """Every kernel of one layer, input x output channel, coloured by kept share.

  Args:
    path: PNG path.
    densities: {ticket: result of `structure.kernel_density`} for the same layer.
    layer: the layer's name (for the title).

  Returns:
    `path`.
  """
  plt = _pyplot()
  k = len(densities)
  fig, axes = plt.subplots(1, k, figsize=(1.0 + 3.6 * k, 3.9), squeeze=False,
                           layout='constrained')
  for ax, (name, density) in zip(axes[0], densities.items()):
    image = ax.imshow(density, vmin=0, vmax=1, cmap='magma', aspect='auto',
                      interpolation='antialiased')
    ax.set_title(f'{name}: {100 * np.mean(density == 0):.1f}% empty', fontsize=8)
    ax.set_xlabel('output channel')
    ax.set_ylabel('input channel')
  fig.colorbar(image, ax=axes[0].tolist(), label='kept share of the kernel (0 = empty)')
  fig.suptitle(short_name(layer), fontsize=9)
  return _save(fig, path)


def sweep(path: str, curves: Mapping[str, Sequence[Mapping[str, Any]]], xlabel: str,
          title: str = '') -> str:
  """Test accuracy against perturbation size, one curve per ticket.

  Args:
    path: PNG path.
    curves: {ticket: rows of `perturbation.sweep`}.
    xlabel: what the size means.
    title: figure title.

  Returns:
    `path`.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.2), layout='constrained')
  for name, rows in curves.items():
    rows = sorted(rows, key=lambda r: r['size'])
    key = f'test_{rows[0]["metric"]}'
    ax.errorbar([r['size'] for r in rows], [100 * r[key] for r in rows],
                yerr=[100 * (r[f'{key}_std'] or 0.0) for r in rows], marker='o', ms=4,
                capsize=2, label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel('test accuracy (%)')
  ax.grid(alpha=0.3)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  return _save(fig, path)


def connectivity(path: str, results: Mapping[str, Mapping[str, Any]], title: str = '') -> str:
  """Error along the straight line between two fine-tuned copies, one curve per ticket.

  Args:
    path: PNG path.
    results: {ticket: result of `perturbation.linear_mode_connectivity`}.
    title: figure title.

  Returns:
    `path`.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.2), layout='constrained')
  for name, result in results.items():
    ax.plot(result['alpha'], [100 * e for e in result['error']], marker='o', ms=4,
            label=f'{name} (barrier {100 * result["barrier"]:.2f})')
  ax.set_xlabel('interpolation alpha')
  ax.set_ylabel('test error (%)')
  ax.grid(alpha=0.3)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  return _save(fig, path)
