"""Pruning criteria: one registry of name -> how survivors are scored.

    pruning.prune('magnitude', pruning.ScoreInputs(trained=params, masks=m), 0.2)
    pruning.get('snip').needs_gradient   # True: the caller supplies a gradient

A `Criterion` scores every prunable weight from a `ScoreInputs` (the trained weights,
the weights the ticket rewinds to, a PRNG key, a gradient function) and says whether its
count is global or per layer; `lth_jax.pruning.selection` then prunes exactly
round(fraction * survivors) of the lowest scores. A new criterion is one score function
and one `register` call:

    magnitude            |w| of the trained weights, one global count (the paper's)
    layerwise_magnitude  |w| of the trained weights, the count per layer
    random               uniform random scores, one global count (random pruning)
    layerwise_random     uniform random scores, the count per layer (not the ticket
                         baseline 'random_layerwise' of `baselines.RANDOM_BASELINES`)
    snip                 |w * dL/dw| at the rewind point on a few batches (SNIP's
                         saliency, Lee et al. 2019), one global count
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lth_jax import masks as masks_lib
from lth_jax.registry import Registry
from lth_jax.pruning.selection import aligned, check_fraction, prune_fraction


@dataclasses.dataclass(frozen=True)
class ScoreInputs:
  """What a criterion may rank the survivors by.

  Attributes:
    masks: the current mask tree (full, or only the prunable leaves).
    trained: the weights after the round's fine-tuning (params tree).
    rewind: the weights the ticket rewinds to (θ_p, θ_k), dense.
    key: a PRNG key (random criteria).
    gradient: params -> the gradient of the training loss at those params, summed
      over a few batches (criteria with `needs_gradient`).
  """
  masks: Any
  trained: Any = None
  rewind: Any = None
  key: jax.Array | None = None
  gradient: Callable[[Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Criterion:
  """How one criterion scores survivors.

  Attributes:
    score: (inputs, policy) -> {prunable leaf name: scores} (float scores are ranked by
      magnitude, int32 scores as they are); lowest pruned first.
    layerwise: prune round(fraction * survivors) of each leaf; else of all at once.
    needs_gradient: the score reads `ScoreInputs.gradient`.
    reads_trained: the score reads `ScoreInputs.trained`; a criterion that does not
      gives every round's mask before any training, so IMP may train its rounds side
      by side.
    random: the score is a random draw (reads only `ScoreInputs.key`): IMP by it is
      itself a random-pruning baseline.
  """
  score: Callable[[ScoreInputs, masks_lib.Policy], dict[str, Any]]
  layerwise: bool = False
  needs_gradient: bool = False
  reads_trained: bool = True
  random: bool = False


CRITERIA: Registry[Criterion] = Registry('pruning criterion')
register = CRITERIA.register
get = CRITERIA.get


def prune(name: str, inputs: ScoreInputs, fraction: float,
          policy: masks_lib.Policy = None) -> Any:
  """Prunes `fraction` of the surviving prunable weights by a registered criterion.

  Args:
    name: a key of `CRITERIA`.
    inputs: what the criterion scores by.
    fraction: in [0, 1).
    policy: see `lth_jax.masks.prunable_leaves`.

  Returns:
    The new mask tree (same structure as `inputs.masks`).
  """
  criterion = get(name)
  if criterion.needs_gradient and inputs.gradient is None:
    raise ValueError(f'The pruning criterion {name!r} needs the training loss\'s gradient '
                     '(ScoreInputs.gradient).')
  fraction = check_fraction(fraction, 'fraction')
  current = masks_lib.prunable_leaves(inputs.masks, policy)
  scores = criterion.score(inputs, policy)
  return prune_fraction(inputs.masks, list(current), [scores[n] for n in current],
                        list(current.values()), fraction, criterion.layerwise)


def _trained(inputs: ScoreInputs, policy: masks_lib.Policy) -> dict[str, Any]:
  names, weights, _ = aligned(inputs.trained, inputs.masks, policy)
  return dict(zip(names, weights))


@functools.partial(jax.jit, static_argnames='shapes')
def random_scores(key: jax.Array, shapes: tuple[tuple[int, ...], ...]) -> list[jax.Array]:
  """Uniform random 31-bit int32 scores, one array per shape (ties are rare)."""
  keys = jax.random.split(key, len(shapes))
  return [(jax.random.bits(k, shape, jnp.uint32) >> 1).astype(jnp.int32)
          for k, shape in zip(keys, shapes)]


def _random(inputs: ScoreInputs, policy: masks_lib.Policy) -> dict[str, Any]:
  current = masks_lib.prunable_leaves(inputs.masks, policy)
  return dict(zip(current, random_scores(inputs.key,
                                         tuple(tuple(m.shape) for m in current.values()))))


def _snip(inputs: ScoreInputs, policy: masks_lib.Policy) -> dict[str, Any]:
  # Saliency of the ticket as it will start: the rewound weights under the mask.
  point = masks_lib.apply(inputs.rewind, masks_lib.conform(inputs.masks, inputs.rewind, policy))
  saliency = jax.tree.map(lambda w, g: jnp.abs(w * g), point, inputs.gradient(point))
  names, scores, _ = aligned(saliency, inputs.masks, policy)
  return dict(zip(names, scores))


register('magnitude', Criterion(_trained))
register('layerwise_magnitude', Criterion(_trained, layerwise=True))
register('random', Criterion(_random, reads_trained=False, random=True))
register('layerwise_random', Criterion(_random, layerwise=True, reads_trained=False,
                                       random=True))
register('snip', Criterion(_snip, needs_gradient=True, reads_trained=False))


def global_magnitude(params: Any, masks: Any, fraction: float,
                     policy: masks_lib.Policy = None) -> Any:
  """Prunes the smallest-magnitude survivors across all prunable leaves at once.

  Args:
    params: the weights whose magnitudes rank the survivors.
    masks: the current mask tree (full, or only the prunable leaves).
    fraction: in [0, 1): prune round(fraction * surviving prunable weights).
    policy: see `lth_jax.masks.prunable_leaves`.

  Returns:
    The new mask tree (same structure as `masks`).
  """
  return prune('magnitude', ScoreInputs(masks=masks, trained=params), fraction, policy)


def layerwise_magnitude(params: Any, masks: Any, fraction: float,
                        policy: masks_lib.Policy = None) -> Any:
  """Prunes round(fraction * survivors) of the smallest |w| in each leaf separately.

  Args:
    params: the weights whose magnitudes rank the survivors.
    masks: the current mask tree.
    fraction: in [0, 1).
    policy: see `lth_jax.masks.prunable_leaves`.

  Returns:
    The new mask tree.
  """
  return prune('layerwise_magnitude', ScoreInputs(masks=masks, trained=params), fraction,
               policy)


def random(key: jax.Array, masks: Any, fraction: float, layerwise: bool = False,
           policy: masks_lib.Policy = None) -> Any:
  """Prunes as many survivors as the magnitude versions, at random positions.

  Each weight gets a random 31-bit score and the lowest-scoring survivors are pruned
  (ties, rare, by position), so the pruned set is uniform among the survivors.

  Args:
    key: a PRNG key.
    masks: the current mask tree.
    fraction: in [0, 1).
    layerwise: the count per leaf as in `layerwise_magnitude`; otherwise the total of
      `global_magnitude`, spread at random over all prunable leaves.
    policy: see `lth_jax.masks.prunable_leaves`.

  Returns:
    The new mask tree.
  """
  return prune('layerwise_random' if layerwise else 'random',
               ScoreInputs(masks=masks, key=key), fraction, policy)
