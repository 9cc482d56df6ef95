"""Baselines of a ticket: random masks with its counts, one-shot magnitude pruning (OMP).

    rand = baselines.random_like(key, ticket, layerwise=False)   # random global pruning
    rands = baselines.random_baselines(seed, tickets, 'random_layerwise')  # every mode's draw
    omp = baselines.to_sparsity(theta_p, masks.init(theta_p), 0.8)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import masks as masks_lib
from lth_jax.pruning.criteria import random_scores
from lth_jax.pruning.selection import aligned, alive_counts, check_fraction, prune_lowest


# The random baselines of a ticket: name -> whether each layer keeps the ticket's count.
# 'random_global' is random pruning at the ticket's total sparsity (the paper's "random
# pruning"); 'random_layerwise' random masks with the ticket's layer profile (each
# layer's mask shuffled). Not the IMP criterion 'layerwise_random', which prunes a share
# of each layer's survivors at random every round.
RANDOM_BASELINES = {'random_global': False, 'random_layerwise': True}


def random_baselines(seed: int, tickets: Mapping[str, Any], method: str,
                     policy: masks_lib.Policy = None) -> dict[str, Any]:
  """A random baseline of each ticket, drawn the same way by every mode that makes one.

  The i-th ticket's mask is `random_like` with `fold_in(key(seed), i)`: the same
  tickets (in the same order) and seed give the same masks in transfer and paper mode,
  whichever other baselines are drawn beside them. The two baselines of a ticket share
  their random scores (same key, one grouped globally, one per layer): each is a fair
  random draw, but their overlap with each other is not meaningful.

  Args:
    seed: the experiment's seed.
    tickets: ticket name -> mask tree, in order.
    method: a key of `RANDOM_BASELINES`.
    policy: see `lth_jax.masks.prunable_leaves`.

  Returns:
    ticket name -> its random mask (same structure as the ticket).

  Raises:
    ValueError: an unknown method.
  """
  if method not in RANDOM_BASELINES:
    raise ValueError(f'Unknown random baseline {method!r}; choose one of '
                     f'{tuple(RANDOM_BASELINES)}.')
  key = jax.random.key(seed)
  return {name: random_like(jax.random.fold_in(key, i), ticket,
                            layerwise=RANDOM_BASELINES[method], policy=policy)
          for i, (name, ticket) in enumerate(tickets.items())}


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
