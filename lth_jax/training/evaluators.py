"""Exact evaluation over padded batches, and the kNN monitor and linear probe of features.

    sums = summed_over_batches(step, variables, batches, mesh)   # float64 totals
    evaluate = knn_evaluator(model, read, num_classes=10, mesh=mesh)

An `Evaluator` maps (variables, split) to named metrics; a task names its headline
metric (e.g. 'accuracy', 'miou'). Evaluation steps return per-batch sums weighted by the
batch's 'mask' (1 for real examples, 0 for padding), added up on the host in float64 in
batch order, so every example counts exactly once and the same batches give the same
bits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from lth_jax.runtime import sharding

Batch = Mapping[str, Any]
# evaluator(variables, split) -> {metric: value, ...} on 'val' or 'test'.
Evaluator = Callable[[Mapping[str, Any], str], Mapping[str, float]]
# step(variables, batch) -> {name: summed value} (weighted by batch['mask']).
SumsStep = Callable[[Any, Batch], Mapping[str, jax.Array]]


@functools.lru_cache(maxsize=32)
def jit_sums_step(step: SumsStep, mesh: Mesh) -> SumsStep:
  """`step` jitted with replicated variables and a batch split over the mesh (cached).

  Args:
    step: (variables, batch) -> sums; a stable (module-level or cached) function.
    mesh: the device mesh.

  Returns:
    The jitted step, its sums replicated.
  """
  replicated = sharding.replicated_sharding(mesh)
  return jax.jit(step, in_shardings=(replicated, sharding.batch_sharding(mesh)),
                 out_shardings=replicated)


def add_sequentially(totals: dict[str, Any], values: Iterable[Mapping[str, Any]]) -> None:
  """Adds device results into float64 totals in order (same order -> same bits).

  Integer arrays (confusion matrices) are added exactly as int64 numpy arrays.

  Args:
    totals: name -> running total, updated in place.
    values: per-batch results.
  """
  for item in jax.device_get(list(values)):
    for key, value in item.items():
      value = np.asarray(value)
      value = value.astype(np.int64) if value.dtype.kind in 'iu' else (
          float(value) if value.ndim == 0 else value.astype(np.float64))
      totals[key] = totals[key] + value if key in totals else value


def summed_over_batches(step: SumsStep, variables: Mapping[str, Any], batches: Iterable[Batch],
                        mesh: Mesh) -> dict[str, Any]:
  """Runs a sums step over host-local batches and adds the results up.

  Args:
    step: (variables, batch) -> weighted sums (see `jit_sums_step`).
    variables: {'params', 'batch_stats'}.
    batches: host-local numpy batches, padding marked by 'mask' 0.
    mesh: the device mesh.

  Returns:
    name -> total over every batch.

  Raises:
    ValueError: no example was seen (empty batches or all padding).
  """
  jitted = jit_sums_step(step, mesh)
  variables = sharding.replicate(dict(variables), mesh)
  totals: dict[str, Any] = {}
  add_sequentially(totals, (jitted(variables, sharding.shard_batch(b, mesh)) for b in batches))
  if not totals.get('count'):
    raise ValueError('The evaluation got no examples: the batches were empty or all padding.')
  return totals


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along the last axis (torch's F.normalize)."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, eps)


def _knn_sums(model: Any, k: int, temperature: float, num_classes: int, variables: Any,
              batch: Batch, bank: jax.Array, bank_labels: jax.Array) -> dict[str, jax.Array]:
  features = l2_normalize(model.apply(variables, batch['image'], train=False))
  similarity, index = jax.lax.top_k(features @ bank.T, k)
  weights = jnp.exp(similarity / temperature)
  votes = jnp.einsum('bk,bkc->bc', weights, jax.nn.one_hot(bank_labels[index], num_classes))
  probability = votes / jnp.sum(votes, -1, keepdims=True)
  label = batch['label']
  correct = (jnp.argmax(votes, -1) == label).astype(jnp.float32)
  nll = -jnp.log(jnp.take_along_axis(probability, label[:, None], 1)[:, 0] + 1e-12)
  weight = batch['mask']
  return {'correct': jnp.sum(weight * correct), 'loss': jnp.sum(weight * nll),
          'count': jnp.sum(weight)}


def _pooled_features(model: Any, read: Callable[[str], Iterable[Batch]], mesh: Mesh
                     ) -> Callable[[Any, str, int], tuple[np.ndarray, np.ndarray]]:
  """(replicated variables, split, limit) -> the split's L2-normalised pooled features.

  Features and labels come back as numpy arrays of every real example (padding dropped),
  in stored order; `limit` > 0 stops after the first `limit` examples.
  """
  backbone = model.clone(head='none')
  replicated, batched = sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)
  features = jax.jit(
      lambda v, b: (l2_normalize(backbone.apply(v, b['image'], train=False)), b['label'],
                    b['mask']),
      in_shardings=(replicated, batched), out_shardings=replicated)

  def read_features(variables: Any, split: str, limit: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    found, labels = [], []
    for batch in read(split):
      f, label, mask = jax.device_get(features(variables, sharding.shard_batch(batch, mesh)))
      found.append(f[mask > 0])
      labels.append(label[mask > 0])
      if limit and sum(map(len, found)) >= limit:
        break
    return np.concatenate(found)[:limit or None], np.concatenate(labels)[:limit or None]

  return read_features


def _for_last_variables(compute: Callable[[Any], Any]) -> Callable[[Any], Any]:
  """`compute(variables)`, computed again only when the variables' leaves change.

  'val' and 'test' of one epoch pass the same replicated arrays: they share the result.
  """
  last: dict[str, Any] = {}

  def cached(variables: Any) -> Any:
    leaves = jax.tree.leaves(variables)
    if len(leaves) != len(last.get('leaves', ())) or any(
        a is not b for a, b in zip(leaves, last['leaves'])):
      last.update(leaves=leaves, value=compute(variables))
    return last['value']

  return cached


def knn_evaluator(model: Any, read: Callable[[str], Iterable[Batch]], *, num_classes: int,
                  mesh: Mesh, k: int = 200, temperature: float = 0.1,
                  bank_size: int = 0) -> Evaluator:
  """Weighted kNN classification with the backbone's features (MoCo's kNN monitor).

  Features are the L2-normalised pooled features (the head is skipped); each query's
  k most cosine-similar bank images vote for their label with weight
  exp(similarity / temperature). The memory bank of the variables seen last is kept,
  so 'val' and 'test' of one epoch (the same replicated arrays) share it.

  Args:
    model: the ResNet (any head).
    read: split -> labelled evaluation batches ('train' unaugmented is the bank).
    num_classes: number of labels.
    mesh: the device mesh.
    k: neighbours that vote (capped at the bank size).
    temperature: temperature of the vote weights.
    bank_size: use the first this many train examples (0: all of them).

  Returns:
    evaluator(variables, split) -> {'accuracy', 'loss' (vote NLL)}.
  """
  backbone = model.clone(head='none')
  replicated, batched = sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)
  read_features = _pooled_features(model, read, mesh)
  memory_bank = _for_last_variables(
      lambda v: sharding.replicate(read_features(v, 'train', bank_size), mesh))

  @functools.lru_cache(maxsize=None)
  def knn_step(neighbours: int) -> Callable[..., dict[str, jax.Array]]:
    return jax.jit(functools.partial(_knn_sums, backbone, neighbours, temperature, num_classes),
                   in_shardings=(replicated, batched, replicated, replicated),
                   out_shardings=replicated)

  def evaluate(variables: Mapping[str, Any], split: str) -> dict[str, float]:
    variables = sharding.replicate(dict(variables), mesh)
    bank, labels = memory_bank(variables)
    step = knn_step(min(k, bank.shape[0]))
    totals: dict[str, Any] = {}
    add_sequentially(totals, (step(variables, sharding.shard_batch(b, mesh), bank, labels)
                              for b in read(split)))
    return {'accuracy': totals['correct'] / totals['count'],
            'loss': totals['loss'] / totals['count']}

  return evaluate


# The L2 penalties a linear probe tries (the one with the best val accuracy is kept).
PROBE_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2)


def _fit_probe(features: jax.Array, labels: jax.Array, num_classes: int, weight_decay: float,
               iterations: int) -> tuple[jax.Array, jax.Array]:
  """Multinomial logistic regression by L-BFGS from zeros: (weights, bias)."""
  def loss(p):
    logits = features @ p[0] + p[1]
    return (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            + weight_decay * jnp.sum(p[0] ** 2))

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(p, updates), state), None

  p = (jnp.zeros((features.shape[1], num_classes)), jnp.zeros(num_classes))
  (p, _), _ = jax.lax.scan(step, (p, solver.init(p)), None, length=iterations)
  return p


def linear_probe_evaluator(model: Any, read: Callable[[str], Iterable[Batch]], *,
                           num_classes: int, mesh: Mesh,
                           weight_decays: tuple[float, ...] = PROBE_WEIGHT_DECAYS,
                           iterations: int = 100) -> Evaluator:
  """Linear-probe classification with the backbone's frozen features (SimCLR's protocol).

  A softmax classifier on the kNN monitor's features (L2-normalised pooled features,
  then standardised by the train split's mean and std) is fitted to the whole train
  split by L-BFGS, once per L2 penalty of `weight_decays`; the penalty with the best
  val accuracy (the first of equals) is the probe, on 'val' and 'test' alike, so the
  test split picks nothing. The fit of the variables seen last is kept, as the kNN
  monitor keeps its bank.

  Args:
    model: the ResNet (any head).
    read: split -> labelled evaluation batches ('train' unaugmented is fitted).
    num_classes: number of labels.
    mesh: the device mesh.
    weight_decays: the L2 penalties tried.
    iterations: L-BFGS iterations per fit.

  Returns:
    evaluator(variables, split) -> {'accuracy', 'loss' (the probe's cross-entropy),
    'weight_decay' (the penalty chosen on val)}.
  """
  read_features = _pooled_features(model, read, mesh)
  fit = jax.jit(jax.vmap(_fit_probe, in_axes=(None, None, None, 0, None)),
                static_argnums=(2, 4))

  def probe(variables: Any) -> dict[str, Any]:
    x, y = read_features(variables, 'train')
    mean, std = x.mean(0), x.std(0) + 1e-6
    standardise = lambda f: (f - mean) / std
    weights, bias = jax.device_get(fit(standardise(x), y, num_classes,
                                       jnp.asarray(weight_decays, jnp.float32), iterations))
    scored = {}
    for split in ('val', 'test'):
      f, label = read_features(variables, split)
      logits = np.einsum('nd,wdc->wnc', standardise(f), weights) + bias[:, None]
      scored[split] = ((logits.argmax(-1) == label).mean(-1),
                       np.asarray(optax.softmax_cross_entropy_with_integer_labels(
                           logits, np.broadcast_to(label, logits.shape[:2]))).mean(-1))
    best = int(np.argmax(scored['val'][0]))
    return {split: {'accuracy': float(accuracy[best]), 'loss': float(loss[best]),
                    'weight_decay': weight_decays[best]}
            for split, (accuracy, loss) in scored.items()}

  last_probe = _for_last_variables(probe)

  def evaluate(variables: Mapping[str, Any], split: str) -> dict[str, float]:
    return last_probe(sharding.replicate(dict(variables), mesh))[split]

  return evaluate
