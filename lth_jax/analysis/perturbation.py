"""Perturbation sensitivity of tickets: masks, weights, and linear mode connectivity.

A ticket is (masks, θ_p): the weights are the *dense* pre-trained variables and the mask
selects among them, so a perturbed mask keeps θ_p's values at its new positions. Pass
the dense θ_p, not `masks.apply(θ_p, masks)`.

Perturbations (all keep pruned weights at exactly zero, only prunable leaves change):
  mask_shuffle   each layer's mask permuted at random (same layer sparsity); size 0 or 1.
  mask_swap      a fraction of each layer's kept and pruned positions exchanged.
  weight_noise   θ_p + size * std(layer) * N(0, 1).
  weight_reinit  a fraction of each layer's kept weights replaced by fresh init values.
For one key, a larger size perturbs a superset of the positions of a smaller one, so a
curve over sizes with one seed is smooth rather than a set of independent draws.

The drivers (`sweep`, `linear_mode_connectivity`) take the fine-tuning and evaluation
as callables, so they know nothing about data or models.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import masks as masks_lib
from lth_jax.lottery import results
from lth_jax.lottery.protocol import Finetune, StartVariables, per_seed
from lth_jax.runtime import paths

PERTURBATIONS = ('mask_shuffle', 'mask_swap', 'weight_noise', 'weight_reinit')


def _check_unit(value: Any, name: str) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
    raise ValueError(f'{name} must be a number in [0, 1], got {value!r}.')
  return float(value)


def _check_same_tree(a: Any, b: Any, what: str) -> None:
  if jax.tree.structure(a) != jax.tree.structure(b):
    raise ValueError(f'{what} must have the same tree structure; build full mask trees '
                     f'with masks.init(params) (IMP round masks already are).')


def _random_subset(rng: np.random.Generator, candidates: np.ndarray, count: int
                   ) -> np.ndarray:
  """Flat indices of `count` of the True positions of `candidates`, drawn uniformly.

  Every position of the layer gets a uniform score (the same draws whatever the count)
  and the lowest-scored candidates win, so a larger count picks a superset.
  """
  scores = np.where(candidates, rng.random(candidates.shape), np.inf).reshape(-1)
  if count == 0:
    return np.zeros(0, np.int64)
  return np.argpartition(scores, count - 1)[:count]


def _map_prunable(fn: Callable[..., Any], key: jax.Array, policy: masks_lib.Policy,
                  tree: Any, *rest: Any) -> Any:
  """Applies fn(rng, leaf, *rest_leaves) to prunable leaves, others kept.

  Draws are made with NumPy on the host (no compile per layer shape): `rng` is a
  generator seeded by the key's data and the leaf's index.
  """
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  seed = np.asarray(key, np.uint32).reshape(-1).tolist()
  index = {name: i for i, name in enumerate(masks_lib.prunable_paths(tree, policy))}

  def leaf(path: Any, x: Any, *others: Any) -> Any:
    i = index.get(masks_lib.path_str(path))
    return x if i is None else fn(np.random.default_rng([*seed, i]), x, *others)

  return jax.tree_util.tree_map_with_path(leaf, tree, *rest)


def shuffle_layerwise(key: jax.Array, masks: Any, policy: masks_lib.Policy = None) -> Any:
  """Redraws each prunable layer's kept positions uniformly: same per-layer counts.

  Args:
    key: a PRNG key.
    masks: a mask tree.
    policy: which leaves are prunable.

  Returns:
    The shuffled mask tree.
  """
  def leaf(rng: np.random.Generator, m: Any) -> jax.Array:
    m = np.asarray(m, bool)
    out = np.zeros(m.size, bool)
    out[_random_subset(rng, np.ones_like(m), int(np.count_nonzero(m)))] = True
    return jnp.asarray(out.reshape(m.shape))

  return _map_prunable(leaf, key, policy, masks)


def swap_count(kept: int, total: int, fraction: float) -> int:
  """Kept weights `swap` moves in a layer: round(fraction * min(kept, pruned))."""
  return round(fraction * min(kept, total - kept))


def swap(key: jax.Array, masks: Any, fraction: float, policy: masks_lib.Policy = None
         ) -> Any:
  """Exchanges kept and pruned positions in each layer, keeping its counts.

  In each prunable layer, `swap_count(kept, total, fraction)` kept positions become
  pruned and as many pruned positions become kept, all drawn uniformly: the layer's
  mask then differs in exactly twice that many positions. fraction=1 moves as many as
  the smaller side allows.

  Args:
    key: a PRNG key.
    masks: a mask tree.
    fraction: in [0, 1].
    policy: which leaves are prunable.

  Returns:
    The perturbed mask tree.
  """
  fraction = _check_unit(fraction, 'fraction')

  def leaf(rng: np.random.Generator, m: Any) -> jax.Array:
    m = np.asarray(m, bool)
    count = swap_count(int(np.count_nonzero(m)), m.size, fraction)
    out = m.reshape(-1).copy()
    to_prune = _random_subset(rng, m, count)
    out[_random_subset(rng, ~m, count)] = True
    out[to_prune] = False
    return jnp.asarray(out.reshape(m.shape))

  return _map_prunable(leaf, key, policy, masks)


def gaussian_noise(key: jax.Array, params: Any, masks: Any, scale: float,
                   policy: masks_lib.Policy = None) -> Any:
  """Adds Gaussian noise scaled by each layer's standard deviation to the kept weights.

  Args:
    key: a PRNG key.
    params: the dense weights θ_p (the std of each prunable leaf is taken over all of
      its entries, as given).
    masks: the full mask tree of `params`.
    scale: >= 0; the noise of a layer has std scale * std(layer).
    policy: which leaves are prunable (only those get noise).

  Returns:
    params with noisy kept weights and pruned weights exactly zero in prunable leaves;
    other leaves unchanged.
  """
  if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or scale < 0:
    raise ValueError(f'scale must be a number >= 0 (in units of each layer\'s std), '
                     f'got {scale!r}.')
  _check_same_tree(params, masks, 'params and masks')

  def leaf(rng: np.random.Generator, w: Any, m: Any) -> jax.Array:
    w = np.asarray(w)
    noise = (scale * w.std()) * rng.standard_normal(w.shape, np.float32)
    return jnp.asarray(np.where(m, w + noise.astype(w.dtype), 0).astype(w.dtype))

  return _map_prunable(leaf, key, policy, params, masks)


def reinit(key: jax.Array, params: Any, masks: Any, fresh: Any, fraction: float = 1.0,
           policy: masks_lib.Policy = None) -> Any:
  """Replaces a random fraction of each layer's kept weights by freshly initialised ones.

  fraction=1 is the paper's random re-initialisation baseline (the ticket's mask on
  random weights) for the prunable layers; the stem, head and BatchNorm keep `params`.

  Args:
    key: a PRNG key (which weights are replaced).
    params: the dense weights θ_p.
    masks: the full mask tree of `params`.
    fresh: a fresh initialisation with the structure of `params`, e.g.
      `model.init(rng, x)['params']`.
    fraction: in [0, 1]; round(fraction * kept) weights per layer are replaced.
    policy: which leaves are prunable.

  Returns:
    params with the replacements, pruned weights exactly zero in prunable leaves.
  """
  fraction = _check_unit(fraction, 'fraction')
  _check_same_tree(params, masks, 'params and masks')
  _check_same_tree(params, fresh, 'params and fresh')

  def leaf(rng: np.random.Generator, w: Any, m: Any, f: Any) -> jax.Array:
    m, w = np.asarray(m, bool), np.asarray(w)
    chosen = np.zeros(m.size, bool)
    chosen[_random_subset(rng, m, round(fraction * np.count_nonzero(m)))] = True
    w = np.where(chosen.reshape(m.shape), np.asarray(f, w.dtype), w)
    return jnp.asarray(np.where(m, w, 0).astype(w.dtype))

  return _map_prunable(leaf, key, policy, params, masks, fresh)


def perturb(kind: str, key: jax.Array, size: float, variables: Mapping[str, Any],
            masks: Any, *, fresh_params: Any = None, policy: masks_lib.Policy = None
            ) -> tuple[dict[str, Any], Any]:
  """One perturbed ticket; size 0 is the ticket itself for every kind.

  Args:
    kind: one of PERTURBATIONS (see the module docstring).
    key: a PRNG key.
    size: the swap fraction, the noise scale, the re-initialised fraction, or for
      mask_shuffle 0 (none) or 1 (shuffled).
    variables: {'params': dense θ_p, 'batch_stats': ..., ...}.
    masks: the ticket's full mask tree.
    fresh_params: a fresh initialisation of params, for weight_reinit.
    policy: which leaves are prunable.

  Returns:
    (variables with masked, perturbed params; masks).
  """
  params = variables['params']
  if kind == 'mask_shuffle':
    if size not in (0, 1):
      raise ValueError(f'mask_shuffle takes size 0 or 1 (shuffled), got {size!r}.')
    masks = shuffle_layerwise(key, masks, policy) if size else masks
  elif kind == 'mask_swap':
    masks = swap(key, masks, size, policy)
  elif kind == 'weight_noise':
    params = gaussian_noise(key, params, masks, size, policy)
  elif kind == 'weight_reinit':
    if fresh_params is None:
      raise ValueError('weight_reinit needs fresh_params, e.g. '
                       'init_variables(model, jax.random.key(1), size)["params"].')
    params = reinit(key, params, masks, fresh_params, size, policy)
  else:
    raise ValueError(f'Unknown perturbation {kind!r}; choose one of {PERTURBATIONS}.')
  return {**variables, 'params': masks_lib.apply(params, masks)}, masks


def sweep(kind: str, sizes: Sequence[float], variables: StartVariables, masks: Any,
          finetune: Finetune, checkpoint_dir: str, *, seeds: Sequence[int] = (0,),
          fresh_params: Any = None, policy: masks_lib.Policy = None) -> list[dict[str, Any]]:
  """Transfer accuracy of a ticket against the size of one perturbation.

  Seed s perturbs with `jax.random.key(s)` and fine-tunes with seed s in
  `checkpoint_dir/<kind>/size_<size>/seed_<s>` (a resumable `train.fit` there makes
  the sweep resumable).

  Args:
    kind: one of PERTURBATIONS.
    sizes: perturbation sizes (include 0 for the unperturbed ticket).
    variables: {'params': dense θ_p, 'batch_stats': ...}, or seed -> those (the
      per-seed θ_p of `lth_jax.per_seed`).
    masks: the ticket's full mask tree.
    finetune: fine-tunes (variables, masks, seed=, checkpoint_dir=) -> FitResult.
    checkpoint_dir: root of the fine-tuning runs.
    seeds: one fine-tuning run per seed and size.
    fresh_params: for weight_reinit.
    policy: which leaves are prunable.

  Returns:
    One row per size: kind, size, metric (the fine-tuning's headline metric, e.g.
    'accuracy'), test_<metric> and test_<metric>_std over seeds, runs (per seed).
  """
  if not seeds:
    raise ValueError('seeds must name at least one seed.')
  variables_for = per_seed(variables)
  rows = []
  for size in sizes:
    runs = []
    for seed in seeds:
      v, m = perturb(kind, jax.random.key(seed), size, variables_for(seed), masks,
                     fresh_params=fresh_params, policy=policy)
      fit = finetune(v, m, seed=seed, checkpoint_dir=paths.seed_dir(
          paths.perturbation_dir(checkpoint_dir, kind, size), seed))
      runs.append(fit.test)
      metric = fit.metric
    rows.append({'kind': kind, 'size': float(size), 'metric': metric,
                 f'test_{metric}': results.mean_std(runs)[0],
                 f'test_{metric}_std': results.std_over_runs(runs), 'runs': runs})
  return rows


def interpolate(a: Any, b: Any, alpha: float) -> Any:
  """The point (1 - alpha) a + alpha b on the straight line between two trees.

  Args:
    a: variables (any tree of float arrays).
    b: variables with the structure of `a`.
    alpha: 0 gives a, 1 gives b.

  Returns:
    The interpolated tree. Weights pruned in both endpoints stay exactly zero.
  """
  _check_same_tree(a, b, 'Both endpoints')
  return jax.tree.map(lambda x, y: (1 - alpha) * jnp.asarray(x) + alpha * jnp.asarray(y),
                      a, b)


def error_barrier(errors: Sequence[float]) -> float:
  """Height of the error barrier along a path (Frankle et al., 2020).

  Args:
    errors: errors at points along the path, endpoints first and last.

  Returns:
    max(errors) - mean(errors[0], errors[-1]); 0 or near it means linearly connected.
  """
  errors = np.asarray(errors, np.float64)
  if errors.ndim != 1 or errors.size < 2:
    raise ValueError(f'error_barrier needs a 1-D sequence with both endpoints, got shape '
                     f'{errors.shape}.')
  return float(errors.max() - (errors[0] + errors[-1]) / 2)


def linear_mode_connectivity(variables: StartVariables, masks: Any,
                             finetune: Finetune,
                             evaluate: Callable[[Mapping[str, Any]], float],
                             checkpoint_dir: str, *, seeds: Sequence[int] = (0, 1),
                             num_points: int = 11) -> dict[str, Any]:
  """Trains the ticket twice with different data orders and measures the error barrier.

  The whole variables tree is interpolated, BatchNorm running statistics included:
  the simple option. The running statistics of an interpolated network are not the
  interpolation of the endpoints' statistics, which can inflate the barrier; to
  recompute them, do it inside `evaluate` (forward passes in train mode over some
  training batches) before measuring accuracy.

  Args:
    variables: the ticket's starting variables ({'params', 'batch_stats'}), or seed ->
      those (see `lth_jax.per_seed`).
    masks: the ticket's full mask tree (both copies share it, so every point on the
      path is as sparse as the ticket).
    finetune: fine-tunes (variables, masks, seed=, checkpoint_dir=) -> FitResult.
    evaluate: variables -> the headline metric in [0, 1] (e.g. test accuracy); the
      path's error is 1 minus it.
    checkpoint_dir: the two runs go to checkpoint_dir/seed_<s>.
    seeds: the two fine-tuning seeds (data orders).
    num_points: points on the path, endpoints included.

  Returns:
    {'seeds', 'alpha' (list), 'error' (1 - accuracy at each alpha), 'barrier',
    'metric' (the fine-tuning's headline metric), 'test_<metric>' (each copy's)}.
  """
  if len(seeds) != 2 or seeds[0] == seeds[1]:
    raise ValueError(f'seeds must be two different seeds, got {seeds!r}.')
  if num_points < 2:
    raise ValueError(f'num_points must be >= 2 (both endpoints), got {num_points}.')
  variables_for = per_seed(variables)
  fits = [finetune(variables_for(s), masks, seed=s,
                   checkpoint_dir=paths.seed_dir(checkpoint_dir, s))
          for s in seeds]
  a, b = (jax.device_get(dict(f.variables)) for f in fits)
  alphas = np.linspace(0.0, 1.0, num_points).tolist()
  errors = [1.0 - float(evaluate(interpolate(a, b, alpha))) for alpha in alphas]
  return {'seeds': list(seeds), 'alpha': alphas, 'error': errors,
          'barrier': error_barrier(errors),
          'metric': fits[0].metric, f'test_{fits[0].metric}': [f.test for f in fits]}
