"""Contrastive pre-training objectives: SimCLR's NT-Xent and MoCo v2's InfoNCE.

The losses are pure functions of embeddings; MoCo's state (a queue of keys and a
momentum key encoder) is a pytree updated by pure functions:

    loss, acc = nt_xent(z1, z2, temperature=0.5)           # SimCLR, 2N - 2 negatives
    loss, acc = info_nce(q, k, queue, temperature=0.2)     # MoCo, K negatives
    queue, pointer = enqueue(queue, pointer, k)            # oldest keys replaced
    key_params = momentum_update(key_params, params, 0.999)

Under `jax.jit` over a batch sharded on the 'data' axis the embeddings are global
arrays, so the similarity matrices span the global batch and the keys that enter the
queue are those of every device (XLA inserts the all-gathers); the queue itself is
replicated.

`SimCLR` and `MoCo` wrap them as stateful objectives for `lth_jax.training` (see
`training.StatefulObjective`): they draw two views of each raw [0, 1] image on the
device (`lth_jax.objectives.views`), normalise them, and carry their state in
`TrainState.extra` (a PRNG key; MoCo also its key encoder and queue).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lth_jax import masks as masks_lib
from lth_jax.objectives import views as view_lib
from lth_jax.training.evaluators import l2_normalize
from lth_jax.training.steps import next_keys

Extra = dict[str, Any]
Output = tuple[jax.Array, tuple[Any, Extra, dict[str, jax.Array]]]


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = (jnp.argmax(logits, -1) == labels).mean()
  return loss, accuracy


def nt_xent(z1: jax.Array, z2: jax.Array,
            temperature: float) -> tuple[jax.Array, jax.Array]:
  """SimCLR's normalised temperature-scaled cross-entropy over a batch of pairs.

  The 2N embeddings are L2-normalised; each one's positive is the other view of its
  image and its negatives are the other 2N - 2 embeddings. The loss is the mean over
  all 2N anchors.

  Args:
    z1: [N, D] projections of the first views.
    z2: [N, D] projections of the second views (row i pairs with row i of z1).
    temperature: softmax temperature (SimCLR: 0.5 in the reference, 0.1 at scale).

  Returns:
    (loss, accuracy): the mean NT-Xent loss and the fraction of anchors whose most
    similar other embedding is their positive.
  """
  if z1.shape != z2.shape or z1.ndim != 2:
    raise ValueError(f'nt_xent expects two [N, D] arrays of one shape, got {z1.shape} and '
                     f'{z2.shape}.')
  n = z1.shape[0]
  z = l2_normalize(jnp.concatenate([z1, z2]).astype(jnp.float32))
  logits = z @ z.T / temperature
  # An anchor is not its own negative.
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  labels = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  return _cross_entropy(logits, labels)


def info_nce(q: jax.Array, k: jax.Array, queue: jax.Array,
             temperature: float) -> tuple[jax.Array, jax.Array]:
  """MoCo's InfoNCE: each query against its key (positive) and the queue (negatives).

  Logits are [q.k+, q.queue] / temperature with label 0, as in MoCo; no gradient flows
  into the keys or the queue.

  Args:
    q: [N, D] query projections (normalised here).
    k: [N, D] key projections of the other view (normalised here).
    queue: [K, D] normalised keys of earlier batches.
    temperature: softmax temperature (MoCo v2: 0.2).

  Returns:
    (loss, accuracy): the mean loss and the (K+1)-way top-1 accuracy of the positive.
  """
  if q.shape != k.shape or q.ndim != 2 or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
    raise ValueError(f'info_nce expects q and k [N, D] and queue [K, D], got {q.shape}, '
                     f'{k.shape} and {queue.shape}.')
  q = l2_normalize(q.astype(jnp.float32))
  k = jax.lax.stop_gradient(l2_normalize(k.astype(jnp.float32)))
  queue = jax.lax.stop_gradient(queue.astype(jnp.float32))
  positive = jnp.sum(q * k, axis=-1, keepdims=True)
  logits = jnp.concatenate([positive, q @ queue.T], axis=1) / temperature
  return _cross_entropy(logits, jnp.zeros(q.shape[0], jnp.int32))


def init_queue(key: jax.Array, size: int, dim: int) -> jax.Array:
  """MoCo's initial queue: `size` random unit vectors.

  Args:
    key: PRNG key.
    size: K, the number of keys.
    dim: embedding size.

  Returns:
    [K, dim] float32.
  """
  return l2_normalize(jax.random.normal(key, (size, dim), jnp.float32))


def enqueue(queue: jax.Array, pointer: jax.Array,
            keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Writes `keys` over the oldest entries of a ring buffer.

  Rows pointer, pointer + 1, ... (mod K) receive the keys in order, so a batch may wrap
  around the end; the pointer then names the oldest entry again. MoCo's
  `_dequeue_and_enqueue`, without its requirement that K be a multiple of the batch.

  Args:
    queue: [K, D] keys.
    pointer: int32 scalar, the row of the oldest key.
    keys: [N, D] new keys, N <= K (the global batch).

  Returns:
    (queue, pointer) after the write.
  """
  size, n = queue.shape[0], keys.shape[0]
  if n > size:
    raise ValueError(f'Cannot enqueue {n} keys into a queue of {size}: the queue must '
                     'hold at least one global batch.')
  rows = (pointer + jnp.arange(n)) % size
  queue = queue.at[rows].set(jax.lax.stop_gradient(keys).astype(queue.dtype),
                             unique_indices=True)
  return queue, (pointer + n) % size


def momentum_update(target: Any, online: Any, momentum: float) -> Any:
  """MoCo's key-encoder update: target <- m * target + (1 - m) * online, leaf by leaf.

  Positions where both trees are zero (pruned weights under one mask) stay exactly 0.

  Args:
    target: the key encoder's parameters.
    online: the query encoder's parameters (same tree).
    momentum: m in [0, 1].

  Returns:
    The updated target tree.
  """
  return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


# ----------------------------------------------------------------------------------
# Stateful objectives for lth_jax.training.
# ----------------------------------------------------------------------------------

def _forward(model: nn.Module, params: Any, batch_stats: Any,
             images: jax.Array) -> tuple[jax.Array, Any]:
  out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                             train=True, mutable=['batch_stats'])
  return out, updates['batch_stats']


@dataclasses.dataclass(frozen=True)
class _Contrastive:
  """What SimCLR and MoCo share: a loss temperature and two views, normalised alike.

  Attributes:
    temperature: the loss's softmax temperature (> 0).
    views: the augmentation of the two views.
    mean: per-channel mean subtracted from the views; None keeps [0, 1] inputs (the
      converted SimCLR checkpoints expect them).
    std: per-channel std the views are divided by (None with mean=None).
  """
  temperature: float
  views: view_lib.ViewConfig
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None

  def __post_init__(self):
    if self.temperature <= 0:
      raise ValueError(f'temperature must be > 0, got {self.temperature}.')
    mean, std = self.mean, self.std
    if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):
      raise ValueError(f'mean {mean} and std {std} must both be None (images stay in [0, 1]) '
                       'or both name one value per channel.')

  def normalize(self, images: jax.Array) -> jax.Array:
    """The views as the network takes them (unchanged when `mean` is None)."""
    return images if self.mean is None else view_lib.normalize(images, self.mean, self.std)


@dataclasses.dataclass(frozen=True)
class SimCLR(_Contrastive):
  """SimCLR: NT-Xent between two views of each image, both through one network.

  The model's output is the projection (a ResNet with head='mlp'). Both views go
  through the network in one batch, so BatchNorm statistics are global over 2N views
  (SimCLR's global BN).

  Attributes (and `mean`, `std`: see `_Contrastive`):
    temperature: NT-Xent temperature (the reference: 0.5).
    views: the augmentation (`views.SIMCLR`).
  """
  temperature: float = 0.5
  views: view_lib.ViewConfig = view_lib.SIMCLR

  def init_extra(self, model: nn.Module, params: Any, batch_stats: Any, rng: jax.Array,
                 carry: Extra | None = None) -> Extra:
    """The objective's state: the PRNG key of the views.

    Args:
      model: the network (unused).
      params: its (masked) parameters (unused).
      batch_stats: its BatchNorm statistics (unused).
      rng: PRNG key of this run.
      carry: the state a previous run ended with (nothing of it is kept).

    Returns:
      {'rng': raw key data}.
    """
    del model, params, batch_stats, carry
    return {'rng': jax.random.key_data(rng)}

  def __call__(self, model: nn.Module, params: Any, batch_stats: Any,
               batch: Mapping[str, jax.Array], extra: Extra) -> Output:
    """NT-Xent of one batch of raw [0, 1] images {'image'}; see `train.StatefulObjective`."""
    key, following = next_keys(extra)
    first, second = view_lib.two_views(key, batch['image'], self.views)
    z, batch_stats = _forward(model, params, batch_stats,
                              self.normalize(jnp.concatenate([first, second])))
    loss, accuracy = nt_xent(*jnp.split(z, 2), self.temperature)
    return loss, (batch_stats, {**extra, 'rng': following},
                  {'loss': loss, 'contrastive_accuracy': accuracy})

  def update_extra(self, extra: Extra, params: Any, masks: Any | None) -> Extra:
    """Nothing changes after the optimizer step."""
    del params, masks
    return extra


@dataclasses.dataclass(frozen=True)
class MoCo(_Contrastive):
  """MoCo v2: InfoNCE of queries against a momentum encoder's keys and a queue.

  The query encoder is the trained model (ResNet with head='mlp'); the key encoder
  is a copy of it that follows by momentum after every optimizer step and is re-masked
  with the query encoder's mask, so pruned weights are exactly zero in both. Updating
  after the step with the new query weights is MoCo's order (update, then compute the
  keys) shifted by one call: the key encoder starts as a copy of the query encoder, so
  every batch sees the same keys as in MoCo. BatchNorm statistics are global over the
  batch (as SimCLR's global BN), which stands in for MoCo's shuffled per-GPU BN.

  Attributes (and `mean`, `std`: see `_Contrastive`):
    temperature: InfoNCE temperature (MoCo v2: 0.2).
    views: the augmentation (`views.MOCO_V2`).
    momentum: m of the key encoder (0.999).
    queue_size: K, the number of negative keys (65,536); >= the global batch.
  """
  temperature: float = 0.2
  views: view_lib.ViewConfig = view_lib.MOCO_V2
  momentum: float = 0.999
  queue_size: int = 65536

  def __post_init__(self):
    super().__post_init__()
    if not 0.0 <= self.momentum <= 1.0:
      raise ValueError(f'momentum must be in [0, 1], got {self.momentum}.')
    if self.queue_size < 1:
      raise ValueError(f'queue_size must be >= 1, got {self.queue_size}.')

  def init_extra(self, model: nn.Module, params: Any, batch_stats: Any, rng: jax.Array,
                 carry: Extra | None = None) -> Extra:
    """The key encoder (a copy of the query encoder), the queue and the PRNG key.

    Args:
      model: the query encoder's network (gives the embedding size).
      params: its masked parameters (copied into the key encoder).
      batch_stats: its BatchNorm statistics (copied too).
      rng: PRNG key of this run (views and the initial random queue).
      carry: the state a previous run ended with: its queue and pointer are kept (the
        reference's carry-over between IMP rounds); the key encoder is always the copy.

    Returns:
      {'rng', 'key_params', 'key_batch_stats', 'queue', 'queue_pointer'}.
    """
    queue_rng, rng = jax.random.split(rng)
    dummy = jax.ShapeDtypeStruct((1, 32, 32, model.in_channels), jnp.float32)
    dim = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                         {'params': params, 'batch_stats': batch_stats}, dummy).shape[-1]
    if carry is not None:
      queue, pointer = carry['queue'], carry['queue_pointer']
    else:
      queue, pointer = init_queue(queue_rng, self.queue_size, dim), jnp.zeros((), jnp.int32)
    if queue.shape != (self.queue_size, dim):
      raise ValueError(f'The carried queue has shape {queue.shape}, this run needs '
                       f'{(self.queue_size, dim)}.')
    return {'rng': jax.random.key_data(rng),
            'key_params': jax.tree.map(jnp.copy, params),
            'key_batch_stats': jax.tree.map(jnp.copy, batch_stats),
            'queue': queue, 'queue_pointer': pointer}

  def __call__(self, model: nn.Module, params: Any, batch_stats: Any,
               batch: Mapping[str, jax.Array], extra: Extra) -> Output:
    """InfoNCE of one batch of raw [0, 1] images {'image'}; see `train.StatefulObjective`."""
    key, following = next_keys(extra)
    query_views, key_views = view_lib.two_views(key, batch['image'], self.views)
    q, batch_stats = _forward(model, params, batch_stats,
                              self.normalize(query_views))
    k, key_batch_stats = _forward(model, extra['key_params'], extra['key_batch_stats'],
                                  self.normalize(key_views))
    k = jax.lax.stop_gradient(k)
    loss, accuracy = info_nce(q, k, extra['queue'], self.temperature)
    queue, pointer = enqueue(extra['queue'], extra['queue_pointer'],
                             l2_normalize(k.astype(jnp.float32)))
    extra = {**extra, 'rng': following, 'key_batch_stats': key_batch_stats, 'queue': queue,
             'queue_pointer': pointer}
    return loss, (batch_stats, extra, {'loss': loss, 'contrastive_accuracy': accuracy})

  def update_extra(self, extra: Extra, params: Any, masks: Any | None) -> Extra:
    """Momentum update of the key encoder towards the new query weights, re-masked."""
    key_params = momentum_update(extra['key_params'], params, self.momentum)
    if masks is not None:
      key_params = masks_lib.apply(key_params, masks)
    return {**extra, 'key_params': key_params}
