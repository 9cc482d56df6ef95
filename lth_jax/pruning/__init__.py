"""Pruning: a registry of criteria, the exact selection, and baselines of tickets.

    m = pruning.global_magnitude(params, masks.init(params), 0.2)     # the paper's step
    m = pruning.prune('snip', pruning.ScoreInputs(...), 0.2)          # any registered one
    rand = pruning.random_like(key, ticket, layerwise=False)          # random pruning
    rands = pruning.random_baselines(seed, tickets, 'random_global')  # a ticket list's

Modules: `criteria` (the registry: name -> score function and global or per-layer
count), `selection` (prune exactly round(fraction * survivors) of the lowest scores,
without a full sort), `baselines` (random masks with a ticket's counts, one-shot
magnitude pruning). Functions take and return mask trees; imports only
`lth_jax.masks`, jax and numpy.
"""

from lth_jax.pruning.baselines import RANDOM_BASELINES, random_baselines, random_like, to_sparsity
from lth_jax.pruning.criteria import (CRITERIA, Criterion, ScoreInputs, get, global_magnitude,
                                      layerwise_magnitude, prune, random, register)

__all__ = ['CRITERIA', 'Criterion', 'RANDOM_BASELINES', 'ScoreInputs', 'get',
           'global_magnitude', 'layerwise_magnitude', 'prune', 'random', 'random_baselines',
           'random_like', 'register', 'to_sparsity']
