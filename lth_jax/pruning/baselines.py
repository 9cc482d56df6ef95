"""Baselines of a ticket: random masks with its counts, one-shot magnitude pruning (OMP).

    rand = baselines.random_like(key, ticket, layerwise=False)   # random global pruning
    omp = baselines.to_sparsity(theta_p, masks.init(theta_p), 0.8)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import masks as masks_lib
from lth_jax.pruning.criteria import random_scores
from lth_jax.pruning.selection import aligned, alive_counts, check_fraction, prune_lowest


def random_like(key: jax.Array, ticket: Any, *, layerwise: bool,
                policy: masks_lib.Policy = None) -> Any:
  """A random mask with a ticket's sparsity: the random-pruning baselines of a ticket.

  Positions are drawn uniformly among all prunable weights (pruned ones included), so
  the result shares no structure with the ticket beyond its counts. The two baselines
  differ in what they keep of the ticket, so the choice has no default:
  `layerwise=False` is random global pruning at the ticket's total sparsity (the
  reference's `RandomUnstructured` over all prunable convolutions, the paper's "random
  pruning"); `layerwise=True` keeps the ticket's layer profile (each layer's mask
  shuffled).

  Args:
    key: a PRNG key.
    ticket: the mask tree whose counts to match.
    layerwise: match every leaf's kept count; otherwise only the total kept count.
    policy: see `lth_jax.masks.prunable_leaves`.

  Returns:
    A new mask tree (same structure as `ticket`).
  """
  current = masks_lib.prunable_leaves(ticket, policy)
  names = list(current)
  full = [jnp.ones(m.shape, jnp.bool_) for m in current.values()]
  sizes = [int(np.size(m)) for m in full]
  kept = alive_counts(list(current.values()))
  if layerwise:
    groups = [[i] for i in range(len(names))]
    ks = [n - k for n, k in zip(sizes, kept)]
  else:
    groups, ks = [list(range(len(names)))], [sum(sizes) - sum(kept)]
  scores = random_scores(key, tuple(tuple(m.shape) for m in full))
  new = prune_lowest(names, scores, full, sizes, groups, ks)
  return masks_lib.replace_leaves(ticket, dict(zip(names, new)))


def to_sparsity(params: Any, masks: Any, target: float,
                policy: masks_lib.Policy = None) -> Any:
  """One-shot magnitude pruning (OMP) to a total sparsity among prunable weights.

  Args:
    params: the weights whose magnitudes rank the survivors.
    masks: the current mask tree (usually `masks.init(params)`).
    target: in [0, 1); afterwards exactly round(target * prunable weights) are pruned.
    policy: see `lth_jax.masks.prunable_leaves`.

  Returns:
    The new mask tree.
  """
  target = check_fraction(target, 'target')
  names, weights, current = aligned(params, masks, policy)
  alive = alive_counts(current)
  total = sum(int(np.size(m)) for m in current)
  pruned = total - sum(alive)
  k = round(target * total) - pruned
  if k < 0:
    raise ValueError(f'The masks are already at sparsity {pruned / total:.6f}, above the '
                     f'target {target}; pruned weights never come back.')
  new = prune_lowest(names, weights, current, alive, [list(range(len(names)))], [k])
  return masks_lib.replace_leaves(masks, dict(zip(names, new)))
