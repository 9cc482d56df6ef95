"""Tickets compared: similarity, layer-wise sparsity, kernel structure, perturbation.

    from lth_jax import analysis, masks
    a, b = masks.load('A/imp/round_04/mask'), masks.load('B/imp/round_04/mask')
    names, iou, random_iou = analysis.overlap_matrix({'A': a, 'B': b})
    analysis.write_report('out', {'A': a, 'B': b})      # out/report.md + PNGs

Modules: `structure` (pure functions over mask trees), `perturbation` (perturbed
tickets, sweeps and linear mode connectivity over fine-tuning callables), `plots`
(PNG figures), `report` (the markdown report), `imp_runs` (IMP runs on disk; the
`python -m lth_jax.analyze` command). Reads no config; may import `lth_jax.masks`,
`lth_jax.lottery` (results, the fine-tuning protocol), `lth_jax.metrics` (the headline
`Metric` a round record is named by) and `lth_jax.runtime`; not `lth_jax.tasks`.
"""

from lth_jax.analysis.perturbation import (
    PERTURBATIONS,
    error_barrier,
    gaussian_noise,
    interpolate,
    linear_mode_connectivity,
    perturb,
    reinit,
    shuffle_layerwise,
    swap,
    swap_count,
    sweep,
)
from lth_jax.analysis.report import write_report
from lth_jax.analysis.structure import (
    group_by_sparsity,
    kernel_density,
    kernel_structure,
    layer_sparsity,
    overlap_matrix,
    pairwise_overlap,
    pairwise_overlaps,
)
from lth_jax.analysis.imp_runs import analyze_workdirs, discover_runs

__all__ = [
    'PERTURBATIONS', 'analyze_workdirs', 'discover_runs', 'error_barrier', 'gaussian_noise',
    'group_by_sparsity', 'interpolate', 'kernel_density', 'kernel_structure',
    'layer_sparsity', 'linear_mode_connectivity', 'overlap_matrix', 'pairwise_overlap',
    'pairwise_overlaps', 'perturb', 'reinit', 'shuffle_layerwise', 'swap', 'swap_count',
    'sweep', 'write_report',
]
