"""A markdown report of a set of tickets, with its figures and data files, in one folder.

`write_report` computes the structural analyses of the tickets it is given (similarity,
layer-wise sparsity, kernel structure) and lays out any perturbation and connectivity
results computed elsewhere (they need fine-tuning). Every figure's numbers are also
written as CSV/JSON next to it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lth_jax import masks as masks_lib
from lth_jax.runtime import files
from lth_jax.analysis import plots, structure
from lth_jax.lottery import results

REPORT_FILE = 'report.md'

SIZE_LABELS = {
    'mask_shuffle': 'layer-wise shuffle (0: ticket, 1: shuffled)',
    'mask_swap': 'swapped fraction of min(kept, pruned) per layer',
    'weight_noise': 'noise std (in units of each layer\'s std)',
    'weight_reinit': 'fraction of kept weights re-initialised',
}


def percent(value: float | None) -> str:
  """A fraction as a percentage with two decimals; '-' for None or nan."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '-'
  return f'{100 * value:.2f}'


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured markdown table.

  Args:
    header: column titles.
    rows: cells, converted with str.

  Returns:
    The table's lines joined by newlines.
  """
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def image_link(path: str, alt: str) -> str:
  """Markdown that embeds a PNG lying in the report's folder."""
  return f'![{alt}]({os.path.basename(path)})'


def _metric_of(rows: Mapping[str, Mapping[str, Any]]) -> str:
  return next(iter(rows.values()))['metric']


def _test(row: Mapping[str, Any]) -> str:
  """The field of a sweep or connectivity row holding its test metric."""
  return f'test_{row["metric"]}'


def _tickets_section(tickets: Mapping[str, Any], metric: Mapping[str, float] | None,
                     metric_name: str,
                     policy: masks_lib.Policy) -> list[str]:
  stages = {name: masks_lib.stage_sparsity(m, policy) for name, m in tickets.items()}
  columns = list(dict.fromkeys(c for s in stages.values() for c in s))
  header = ['ticket', 'sparsity %', *(c.removeprefix('sparsity_') + ' %' for c in columns)]
  if metric:
    header.append(f'test {metric_name} %')
  rows = []
  for name, m in tickets.items():
    row = [name, percent(masks_lib.sparsity(m, policy)),
           *(percent(stages[name].get(c)) for c in columns)]
    if metric:
      row.append(percent(metric.get(name)))
    rows.append(row)
  return ['## Tickets', 'Sparsity among the prunable weights, in total and per stage.',
          markdown_table(header, rows)]


def _similarity_section(out_dir: str, tickets: Mapping[str, Any],
                        curve: Sequence[Mapping[str, Any]] | None,
                        policy: masks_lib.Policy) -> list[str]:
  lines = ['## Mask similarity',
           'IoU of the kept weights (|a ∩ b| / |a ∪ b|) against the IoU that two '
           'independent random masks with the same number of kept weights in every layer '
           'would have in expectation (n·p·q shared weights in a layer of n weights with '
           'densities p and q). IoU well above the random value means the tickets chose '
           'the same weights, not only the same layer-wise densities.']
  if curve:
    path = plots.overlap_vs_sparsity(os.path.join(out_dir, 'overlap_vs_sparsity.png'),
                                     curve, 'IoU between runs at equal sparsity')
    files.write_table(os.path.join(out_dir, 'overlap_vs_sparsity'), curve)
    lines += ['### Across sparsity levels',
              'Every sparsity at which at least two runs trained a mask (a mask saved for a '
              'round that has not run is left out). A pair with a random-pruning run lies on '
              'its dashed expectation by construction: random pruning keeps weights '
              'independently of the other run, which is what the expectation assumes.',
              image_link(path, 'IoU against sparsity')]
  if len(tickets) < 2:
    return lines + ['Only one ticket: no pairwise comparison.']
  overlaps = structure.pairwise_overlaps(tickets, policy)
  names, iou, expected = structure.overlap_matrix(tickets, policy, overlaps=overlaps)
  pairs = {(a, b): rows for (a, b), rows in overlaps.items() if a != b}
  matrix_png = plots.overlap_matrix(os.path.join(out_dir, 'overlap_matrix.png'), names, iou,
                                    expected, 'IoU of kept weights (random expectation)')
  layers_png = plots.layer_overlap(os.path.join(out_dir, 'overlap_layers.png'),
                                   {f'{a} vs {b}': r for (a, b), r in pairs.items()},
                                   'Per-layer IoU (dashed: random masks)')
  files.write_table(os.path.join(out_dir, 'overlap_layers'), [
      {'a': a, 'b': b, 'layer': layer, **row}
      for (a, b), rows in pairs.items() for layer, row in rows.items()])
  table = [[a, b, f'{r["total"]["iou"]:.4f}', f'{r["total"]["expected_iou"]:.4f}',
            percent(r['total']['a_kept_by_b'])] for (a, b), r in pairs.items()]
  return lines + [
      '### Tickets compared', image_link(matrix_png, 'overlap matrix'),
      markdown_table(['a', 'b', 'IoU', 'random IoU', 'a kept by b %'], table),
      'Per layer (all numbers in overlap_layers.csv):', image_link(layers_png, 'per-layer IoU')]


def _profile_section(out_dir: str, tickets: Mapping[str, Any],
                     policy: masks_lib.Policy) -> list[str]:
  profile = structure.layer_sparsity(tickets, policy)
  path = plots.layer_sparsity(os.path.join(out_dir, 'layer_sparsity.png'), profile,
                              list(tickets), 'Layer-wise sparsity')
  files.write_table(os.path.join(out_dir, 'layer_sparsity'), [
      {'layer': layer, **row, 'shape': 'x'.join(map(str, row['shape'] or ()))}
      for layer, row in profile.items()])
  rows = [[structure.short_name(layer), 'x'.join(map(str, row['shape'] or ())),
           row['total'], *(percent(row[t]) for t in tickets)] for layer, row in profile.items()]
  return ['## Layer-wise sparsity',
          'Global magnitude pruning uses one threshold for all layers, so layers whose '
          'weights are small lose more; a layer near 100% cuts the network (layer '
          'collapse). Dotted lines: total sparsity.',
          image_link(path, 'layer-wise sparsity'),
          markdown_table(['layer', 'shape (HWIO)', 'weights', *(f'{t} %' for t in tickets)],
                         rows)]


def _default_heatmap_layer(structures: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
  first = next(iter(structures.values()))
  layers = [n for n, r in first.items() if r['stage'] != n]
  return max(layers, key=lambda n: np.mean([s[n]['fraction'] for s in structures.values()]))


def _kernel_section(out_dir: str, tickets: Mapping[str, Any], heatmap_layer: str | None,
                    policy: masks_lib.Policy) -> list[str]:
  structures = {name: structure.kernel_structure(m, policy) for name, m in tickets.items()}
  path = plots.kernel_structure(os.path.join(out_dir, 'kernel_structure.png'), structures,
                                'kxk kernels pruned whole')
  files.write_table(os.path.join(out_dir, 'kernel_structure'), [
      {'ticket': t, 'layer': layer, **row}
      for t, rows in structures.items() for layer, row in rows.items()])
  first = next(iter(structures.values()))
  groups = [n for n, r in first.items() if r['stage'] == n]
  table = [[g, first[g]['kernels'], *(percent(structures[t][g]['fraction']) for t in tickets)]
           for g in groups]
  layer = heatmap_layer or _default_heatmap_layer(structures)
  densities = {name: structure.kernel_density(m, layer, policy) for name, m in tickets.items()}
  heatmap = plots.kernel_heatmaps(os.path.join(out_dir, 'kernel_heatmap.png'), densities, layer)
  return ['## Kernel structure',
          'Share of the kxk kernels (all k·k weights linking one input channel to one '
          'output channel) that are pruned whole, per stage and per layer (the paper\'s '
          'figure 7). A random mask of layer sparsity s empties a kernel with probability '
          'about s^(k·k) (1% for 3x3 kernels at s = 60%); more empty kernels than that is '
          'structure that kernel-sparse computation could exploit.',
          markdown_table(['stage', 'kernels', *(f'{t} empty %' for t in tickets)], table),
          image_link(path, 'kernel structure'),
          f'Every kernel of `{structure.short_name(layer)}` (black: pruned whole; '
          f'pass heatmap_layer to choose another layer):',
          image_link(heatmap, 'kernel heatmap')]


def _perturbation_section(out_dir: str,
                          perturbation: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]
                          ) -> list[str]:
  lines = ['## Perturbation sensitivity',
           'The test metric after fine-tuning the perturbed ticket (mean ± std over seeds). '
           'Size 0 is the ticket itself.']
  for kind, curves in perturbation.items():
    path = plots.sweep(os.path.join(out_dir, f'perturbation_{kind}.png'), curves,
                       SIZE_LABELS.get(kind, 'size'), kind)
    files.write_json(os.path.join(out_dir, f'perturbation_{kind}.json'), curves)
    sizes = sorted({r['size'] for rows in curves.values() for r in rows})
    table = [[t, *(next((results.shown(r, _test(r)) for r in rows if r['size'] == s), '-')
                   for s in sizes)]
             for t, rows in curves.items()]
    lines += [f'### {kind}', image_link(path, kind),
              f'Test {next(iter(curves.values()))[0]["metric"]} by size '
              f'({SIZE_LABELS.get(kind, "size")}):',
              markdown_table(['ticket', *(f'{s:g}' for s in sizes)], table)]
  return lines


def _connectivity_section(out_dir: str, connectivity: Mapping[str, Mapping[str, Any]]
                          ) -> list[str]:
  path = plots.connectivity(os.path.join(out_dir, 'connectivity.png'), connectivity,
                            'Linear mode connectivity')
  files.write_json(os.path.join(out_dir, 'connectivity.json'), connectivity)
  table = [[t, ', '.join(map(str, r['seeds'])),
            ', '.join(percent(a) for a in r[_test(r)]), percent(r['barrier'])]
           for t, r in connectivity.items()]
  return ['## Linear mode connectivity',
          'Two copies of each ticket fine-tuned with different data orders; test error '
          'along the straight line between them. Barrier: the highest error on the path '
          'minus the mean error of the endpoints (near 0: linearly connected, the copies '
          'found the same basin). BatchNorm statistics are interpolated with the weights.',
          image_link(path, 'linear mode connectivity'),
          markdown_table(['ticket', 'seeds', f'test {_metric_of(connectivity)} %', 'barrier %'],
                         table)]


def write_report(out_dir: str, tickets: Mapping[str, Any], *, title: str = 'Ticket analysis',
                 intro: Sequence[str] = (), metric: Mapping[str, float] | None = None,
                 metric_name: str = 'accuracy',
                 similarity: Sequence[Mapping[str, Any]] | None = None,
                 perturbation: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]
                 | None = None,
                 connectivity: Mapping[str, Mapping[str, Any]] | None = None,
                 heatmap_layer: str | None = None, policy: masks_lib.Policy = None) -> str:
  """Writes `out_dir/report.md` with its PNGs and CSV/JSON data.

  Args:
    out_dir: the folder (created).
    tickets: {name: full or partial mask tree}, all of the same model; compare them
      at equal sparsity.
    title: the report's title.
    intro: markdown blocks placed after the title.
    metric: {ticket: test value of the headline metric} for the tickets table.
    metric_name: that metric's name ('accuracy', 'miou', ...).
    similarity: rows with 'pair', 'sparsity', 'iou', 'expected_iou' over the sparsity
      levels of trained masks (see `lth_jax.analysis.imp_runs`).
    perturbation: {kind: {ticket: rows of `perturbation.sweep`}}.
    connectivity: {ticket: result of `perturbation.linear_mode_connectivity`}.
    heatmap_layer: the layer drawn kernel by kernel; by default the kxk layer with the
      most empty kernels on average over the tickets.
    policy: which leaves are prunable.

  Returns:
    The report's path.
  """
  if not tickets:
    raise ValueError('write_report needs at least one ticket.')
  os.makedirs(out_dir, exist_ok=True)
  blocks = [f'# {title}', *intro]
  blocks += _tickets_section(tickets, metric, metric_name, policy)
  blocks += _similarity_section(out_dir, tickets, similarity, policy)
  blocks += _profile_section(out_dir, tickets, policy)
  blocks += _kernel_section(out_dir, tickets, heatmap_layer, policy)
  if perturbation:
    blocks += _perturbation_section(out_dir, perturbation)
  if connectivity:
    blocks += _connectivity_section(out_dir, connectivity)
  return files.atomic_write(os.path.join(out_dir, REPORT_FILE),
                              lambda f: f.write('\n\n'.join(blocks) + '\n'))
