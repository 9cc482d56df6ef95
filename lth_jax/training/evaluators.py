"""Exact evaluation over padded batches, and the kNN monitor of self-supervised features.

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
  features = jax.jit(
      lambda v, b: (l2_normalize(backbone.apply(v, b['image'], train=False)), b['label'],
                    b['mask']),
      in_shardings=(replicated, batched), out_shardings=replicated)

  @functools.lru_cache(maxsize=None)
  def knn_step(neighbours: int) -> Callable[..., dict[str, jax.Array]]:
    return jax.jit(functools.partial(_knn_sums, backbone, neighbours, temperature, num_classes),
                   in_shardings=(replicated, batched, replicated, replicated),
                   out_shardings=replicated)

  last: dict[str, Any] = {}

  def memory_bank(variables: Any) -> tuple[jax.Array, jax.Array]:
    leaves = jax.tree.leaves(variables)
    if len(leaves) == len(last.get('leaves', ())) and all(
        a is b for a, b in zip(leaves, last['leaves'])):
      return last['bank']
    bank, labels = [], []
    for batch in read('train'):
      f, label, mask = jax.device_get(features(variables, sharding.shard_batch(batch, mesh)))
      bank.append(f[mask > 0])
      labels.append(label[mask > 0])
      if bank_size and sum(map(len, bank)) >= bank_size:
        break
    bank = np.concatenate(bank)[:bank_size or None]
    labels = np.concatenate(labels)[:bank_size or None]
    last.update(leaves=leaves, bank=sharding.replicate((bank, labels), mesh))
    return last['bank']

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
