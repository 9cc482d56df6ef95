"""Exact selection: prune the lowest-scoring survivors, globally or layer by layer.

Every criterion (`lth_jax.pruning.criteria`) ends here: scores per prunable leaf in,
a new mask tree out; only prunable leaves (see `lth_jax.masks`) change and a pruned
weight never comes back.

Definition (the reference's `torch.nn.utils.prune.global_unstructured` with
`L1Unstructured`): prune exactly `round(fraction * n)` of the n surviving prunable
weights, those with the smallest |w|, Python's `round` as torch uses it. Magnitudes are
compared as float32. Ties are broken by position: among equal magnitudes the weight with
the lower global index is pruned first, the global index running over the prunable
leaves in tree order (sorted dict keys, as `jax.tree` flattens) and, inside a leaf, over
its Flax (HWIO) layout in C order. torch leaves ties unspecified; on weights without
ties the masks are identical.

How, without sorting 23.5M values (a full sort costs seconds on XLA's CPU backend): the
scores are non-negative float32 magnitudes, so their bit patterns read as int32 sort the
same way. A random subsample of the survivors gives a narrow bracket [lo, hi] around the
k-th smallest score; one fused pass marks the survivors below and inside the bracket;
counting those (numpy) proves the k-th value lies inside (otherwise the bracket is
widened to that side and the pass repeated); the few candidates inside are selected
exactly on the host; a last fused pass keeps the survivors above that value. The sample
only affects speed, never the result.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import masks as masks_lib

# Survivors sampled to bracket the threshold, and the bracket's half-width in standard
# deviations of the sampled rank: a miss (probability ~1e-4) costs one more pass.
_SAMPLE_SIZE = 65536
_BRACKET_SIGMAS = 4.0
_INT32_MAX = int(np.iinfo(np.int32).max)


def _score_bits(x: Any) -> Any:
  """Order-preserving int32 keys: |x| as float32 bit patterns, int32 scores as given."""
  if x.dtype == np.int32:
    return x
  return abs(x.astype(np.float32)).view(np.int32)


@jax.jit
def _classify(scores: list[jax.Array], masks: list[jax.Array], lo: jax.Array,
              hi: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
  """Per leaf: survivors scoring below lo[i], and survivors in [lo[i], hi[i]]."""
  below, inside = [], []
  for i, (s, m) in enumerate(zip(scores, masks)):
    bits, alive = _score_bits(s), m.astype(jnp.bool_)
    below.append(alive & (bits < lo[i]))
    inside.append(alive & (bits >= lo[i]) & (bits <= hi[i]))
  return below, inside


@jax.jit
def _keep_above(scores: list[jax.Array], masks: list[jax.Array],
                threshold: jax.Array) -> list[jax.Array]:
  """Per leaf: survivors scoring above threshold[i]."""
  return [m.astype(jnp.bool_) & (_score_bits(s) > threshold[i])
          for i, (s, m) in enumerate(zip(scores, masks))]


def _bracket(scores: list[np.ndarray], masks: list[np.ndarray], leaves: list[int],
             k: int, alive: int, rng: np.random.Generator) -> tuple[int, int]:
  """Scores [lo, hi] that likely contain the k-th smallest survivor score."""
  total = sum(scores[i].size for i in leaves)
  parts = []
  for i in leaves:
    size = scores[i].size
    n = min(size, math.ceil(_SAMPLE_SIZE * size / total))
    pos = np.arange(size) if n == size else rng.integers(0, size, n)
    parts.append(_score_bits(scores[i][pos[masks[i][pos].astype(bool)]]))
  sample = np.sort(np.concatenate(parts))
  q = k / alive
  centre = q * sample.size
  half = _BRACKET_SIGMAS * math.sqrt(sample.size * q * (1 - q)) + 1
  first, last = math.floor(centre - half), math.ceil(centre + half)
  lo = int(sample[first]) if first >= 0 else 0
  hi = int(sample[last]) if last < sample.size else _INT32_MAX
  return lo, hi


def _select(scores: list[np.ndarray], inside: list[np.ndarray], leaves: list[int],
            rank: int) -> tuple[int, list[tuple[int, np.ndarray]]]:
  """The rank-th smallest (1-based) candidate score, and the tied candidates to keep.

  Candidates are concatenated in global index order, so keeping the ties after the
  first ones pruned is the lower-index-first tie-break.
  """
  index = [np.flatnonzero(inside[i]) for i in leaves]
  values = np.concatenate([_score_bits(scores[i][ix]) for i, ix in zip(leaves, index)])
  threshold = np.partition(values, rank - 1)[rank - 1]
  ties = np.flatnonzero(values == threshold)
  keep = ties[rank - np.count_nonzero(values < threshold):]
  offsets = np.cumsum([0] + [len(ix) for ix in index])
  restore = []
  for j, i in enumerate(leaves):
    here = keep[(keep >= offsets[j]) & (keep < offsets[j + 1])]
    if here.size:
      restore.append((i, index[j][here - offsets[j]]))
  return int(threshold), restore


def prune_lowest(names: list[str], scores: list[Any], masks: list[Any], alive: list[int],
                  groups: list[list[int]], ks: list[int]) -> list[jax.Array]:
  """In each group of leaves, prunes the ks[g] survivors with the lowest scores.

  Args:
    names: per leaf, its name (for error messages).
    scores: per leaf, float weights (scored by |w|) or int32 scores >= 0.
    masks: per leaf, the current mask.
    alive: per leaf, the number of survivors.
    groups: lists of leaf indices; each group is ranked as one concatenated vector.
    ks: per group, how many survivors to prune (at most its survivors).

  Returns:
    The new masks, bool, per leaf.

  Raises:
    ValueError: a float score is NaN or infinite (its bit pattern would rank it as a
      huge magnitude and keep it).
  """
  host_scores = [np.asarray(s).reshape(-1) for s in scores]
  bad = [n for n, s in zip(names, host_scores) if s.dtype.kind == 'f' and not np.isfinite(s).all()]
  if bad:
    raise ValueError(
        f'Cannot prune: {len(bad)} weight tensor(s) hold NaN or infinite values (e.g. '
        f'{bad[:3]}), so their magnitudes mean nothing. The training that produced them '
        'diverged; lower the learning rate or check the checkpoint these weights came from.')
  host_masks = [np.asarray(m).reshape(-1) for m in masks]
  rng = np.random.default_rng(0)
  # -1 brackets and thresholds leave groups with nothing to prune untouched.
  lo = np.full(len(scores), -1, np.int32)
  hi = np.full(len(scores), -1, np.int32)
  active = [g for g, k in enumerate(ks) if k > 0]
  for g in active:
    lo[groups[g]], hi[groups[g]] = _bracket(
        host_scores, host_masks, groups[g], ks[g], sum(alive[i] for i in groups[g]), rng)
  while True:
    below, inside = _classify(scores, masks, jnp.asarray(lo), jnp.asarray(hi))
    n_below = [np.count_nonzero(np.asarray(b)) for b in below]
    inside = [np.asarray(x).reshape(-1) for x in inside]
    missed = False
    for g in active:
      leaves, k = groups[g], ks[g]
      under = sum(n_below[i] for i in leaves)
      if k <= under:
        lo[leaves], hi[leaves] = 0, lo[leaves[0]] - 1
      elif k > under + sum(np.count_nonzero(inside[i]) for i in leaves):
        lo[leaves], hi[leaves] = hi[leaves[0]] + 1, _INT32_MAX
      else:
        continue
      missed = True
    if not missed:
      break
  threshold = np.full(len(scores), -1, np.int32)
  restore = []
  for g in active:
    leaves = groups[g]
    rank = ks[g] - sum(n_below[i] for i in leaves)
    threshold[leaves], tied = _select(host_scores, inside, leaves, rank)
    restore += tied
  new = _keep_above(scores, masks, jnp.asarray(threshold))
  for i, index in restore:
    kept = np.array(new[i])
    kept.reshape(-1)[index] = True
    new[i] = jnp.asarray(kept)
  return new


def check_fraction(value: Any, name: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not 0 <= value < 1):
    raise ValueError(f'{name} must be a number in [0, 1), got {value!r}; e.g. 0.2 '
                     f'prunes 20% of the surviving weights.')
  return float(value)


def aligned(params: Any, masks: Any, policy: masks_lib.Policy
             ) -> tuple[list[str], list[Any], list[Any]]:
  """Names, weights and masks of the prunable leaves, checked to correspond."""
  weights = masks_lib.prunable_leaves(params, policy)
  current = masks_lib.prunable_leaves(masks, policy)
  if list(weights) != list(current):
    diff = sorted(set(weights) ^ set(current))[:4]
    raise ValueError(f'params and masks have different prunable leaves (e.g. {diff}); '
                     f'build masks with masks.init(params).')
  for name, w in weights.items():
    if tuple(w.shape) != tuple(current[name].shape):
      raise ValueError(f'{name}: mask shape {tuple(current[name].shape)} differs from '
                       f'the weight shape {tuple(w.shape)}.')
  return list(weights), list(weights.values()), list(current.values())


def alive_counts(current: list[Any]) -> list[int]:
  return [int(np.count_nonzero(np.asarray(m))) for m in current]


def prune_fraction(masks: Any, names: list[str], scores: list[Any], current: list[Any],
                    fraction: float, layerwise: bool) -> Any:
  """Prunes round(fraction * survivors) per leaf (layerwise) or over all leaves."""
  alive = alive_counts(current)
  if layerwise:
    groups = [[i] for i in range(len(names))]
    ks = [round(fraction * n) for n in alive]
  else:
    groups, ks = [list(range(len(names)))], [round(fraction * sum(alive))]
  new = prune_lowest(names, scores, current, alive, groups, ks)
  return masks_lib.replace_leaves(masks, dict(zip(names, new)))
