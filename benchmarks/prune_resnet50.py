"""Time one global-magnitude round on ResNet-50 against torch (goal: at most 1/20 of torch).

    python benchmarks/prune_resnet50.py

Part 3 of benchmarks/accelerator.py alone, on the devices JAX and torch have (the CPU
here): ResNet-50's 52 prunable convs (23,445,504 weights, fan-out normal) are pruned by
20% from dense by
  torch: `torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=0.2)`,
         the reference's mechanism, on fresh modules holding the same weights each run;
  jax:   `lth_jax.pruning.global_magnitude(params, masks, 0.2)`, after one warm-up call
         (tracing and compilation, reported separately).
Both report the median of 5 runs; the masks of the two are then compared.
"""

from __future__ import annotations

import torch

import accelerator  # this script's directory is on sys.path

GOAL_RATIO = 1 / 20


def main() -> None:
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  result = accelerator.measure_prune(accelerator.FULL, torch, device, accelerator.Clock())
  ours, theirs, masks = result['lth_jax'], result['torch'], result['masks']
  print(f'ResNet-50: {result["convs"]} prunable convs, {result["weights"]:,} weights; torch '
        f'threads {torch.get_num_threads()}')
  ratio = ours['median_s'] / theirs['median_s']
  print(f'torch global_unstructured: {theirs["median_s"] * 1e3:8.1f} ms (median of '
        f'{result["repeats"]})')
  print(f'lth_jax global_magnitude:  {ours["median_s"] * 1e3:8.1f} ms (first call with '
        f'compilation {ours["first_call_s"]:.2f} s)')
  print(f'ratio jax / torch: 1/{1 / ratio:.0f} '
        f'({"meets" if ratio <= GOAL_RATIO else "MISSES"} the 1/{1 / GOAL_RATIO:.0f} goal)')
  print(f'pruned: torch {theirs["pruned"]:,}, jax {ours["pruned"]:,}, expected '
        f'{result["expected_pruned"]:,}')
  if masks['differing'] == 0:
    print('masks identical')
  else:
    print(f'masks differ at {masks["differing"]} positions'
          + (', all at the threshold magnitude (a tie, which torch breaks arbitrarily)'
             if masks['differing_all_ties'] else ', NOT explained by ties: a bug'))


if __name__ == '__main__':
  main()
