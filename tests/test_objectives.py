"""Tests for lth_jax.objectives: losses against NumPy, the queue and the momentum update."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax.objectives import contrastive as objectives
from lth_jax.runtime import sharding


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax_at(logits, index):
  logits = np.asarray(logits, np.float64)
  top = logits.max()
  return logits[index] - top - np.log(np.sum(np.exp(logits - top)))


def numpy_nt_xent(z1, z2, temperature):
  """NT-Xent written out anchor by anchor, in float64."""
  z = _normalize(np.concatenate([z1, z2]).astype(np.float64))
  n2 = len(z)
  losses, hits = [], []
  for i in range(n2):
    positive = (i + n2 // 2) % n2
    others = [j for j in range(n2) if j != i]
    logits = np.array([z[i] @ z[j] / temperature for j in others])
    losses.append(-_log_softmax_at(logits, others.index(positive)))
    hits.append(others[int(np.argmax(logits))] == positive)
  return np.mean(losses), np.mean(hits)


def numpy_info_nce(q, k, queue, temperature):
  q, k = _normalize(q.astype(np.float64)), _normalize(k.astype(np.float64))
  losses, hits = [], []
  for qi, ki in zip(q, k):
    logits = np.concatenate([[qi @ ki], queue.astype(np.float64) @ qi]) / temperature
    losses.append(-_log_softmax_at(logits, 0))
    hits.append(np.argmax(logits) == 0)
  return np.mean(losses), np.mean(hits)


@pytest.mark.parametrize('temperature', [0.1, 0.5])
def test_nt_xent_equals_numpy(temperature):
  rng = np.random.default_rng(0)
  z1 = rng.normal(size=(6, 5)).astype(np.float32)
  z2 = (z1 + rng.normal(size=(6, 5))).astype(np.float32)
  loss, accuracy = objectives.nt_xent(jnp.asarray(z1), jnp.asarray(z2), temperature)
  want_loss, want_accuracy = numpy_nt_xent(z1, z2, temperature)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert float(accuracy) == pytest.approx(want_accuracy)
  assert 0 < want_accuracy < 1  # the check distinguishes hits from misses


def test_nt_xent_gradient_is_finite_despite_masked_self_similarity():
  rng = np.random.default_rng(1)
  z1, z2 = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(2))
  grads = jax.grad(lambda a, b: objectives.nt_xent(a, b, 0.5)[0], argnums=(0, 1))(z1, z2)
  assert all(np.isfinite(np.asarray(g)).all() and np.abs(g).sum() > 0 for g in grads)


def test_nt_xent_over_a_sharded_global_batch_equals_one_device():
  rng = np.random.default_rng(2)
  z1, z2 = (rng.normal(size=(16, 8)).astype(np.float32) for _ in range(2))
  mesh = sharding.make_mesh()
  assert mesh.size == 8
  step = jax.jit(lambda a, b: objectives.nt_xent(a, b, 0.5),
                 in_shardings=sharding.batch_sharding(mesh),
                 out_shardings=sharding.replicated_sharding(mesh))
  got = step(sharding.shard_batch(z1, mesh), sharding.shard_batch(z2, mesh))
  want = numpy_nt_xent(z1, z2, 0.5)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  assert float(got[1]) == pytest.approx(want[1])


def test_info_nce_equals_numpy_and_stops_gradients_at_keys():
  rng = np.random.default_rng(3)
  q = rng.normal(size=(5, 4)).astype(np.float32)
  k = (q + rng.normal(size=(5, 4))).astype(np.float32)
  queue = _normalize(rng.normal(size=(7, 4))).astype(np.float32)
  loss, accuracy = objectives.info_nce(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), 0.2)
  want_loss, want_accuracy = numpy_info_nce(q, k, queue, 0.2)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert float(accuracy) == pytest.approx(want_accuracy)
  grad_q, grad_k, grad_queue = jax.grad(
      lambda a, b, c: objectives.info_nce(a, b, c, 0.2)[0], argnums=(0, 1, 2))(q, k, queue)
  assert np.abs(grad_q).sum() > 0
  assert not np.asarray(grad_k).any() and not np.asarray(grad_queue).any()


def test_bad_shapes_are_refused():
  with pytest.raises(ValueError, match='two \\[N, D\\] arrays'):
    objectives.nt_xent(jnp.zeros((4, 3)), jnp.zeros((5, 3)), 0.5)
  with pytest.raises(ValueError, match='queue \\[K, D\\]'):
    objectives.info_nce(jnp.zeros((4, 3)), jnp.zeros((4, 3)), jnp.zeros((8, 2)), 0.2)
  with pytest.raises(ValueError, match='at least one global batch'):
    objectives.enqueue(jnp.zeros((3, 2)), jnp.int32(0), jnp.zeros((4, 2)))


@pytest.mark.parametrize('objective', [objectives.SimCLR, objectives.MoCo])
def test_both_contrastive_objectives_refuse_a_bad_temperature_or_normalisation(objective):
  with pytest.raises(ValueError, match='temperature must be > 0'):
    objective(temperature=0.0)
  with pytest.raises(ValueError, match='mean .* and std .* must both be None'):
    objective(mean=(0.5,), std=None)
  with pytest.raises(ValueError, match='must both be None'):
    objective(mean=(0.5, 0.5), std=(0.2,))
  objective(mean=(0.5,), std=(0.2,))  # one value per channel, as the views need


def test_queue_replaces_oldest_keys_with_wrap_around():
  size, dim, batch = 10, 2, 4
  queue = objectives.init_queue(jax.random.key(0), size, dim)
  np.testing.assert_allclose(np.linalg.norm(queue, axis=1), 1.0, rtol=1e-6)
  enqueue = jax.jit(objectives.enqueue)
  reference = list(np.asarray(queue))  # oldest first, as a deque would hold them
  pointer = jnp.int32(0)
  for step in range(7):  # 28 keys through a queue of 10: every batch position wraps
    keys = (step + np.arange(batch)[:, None] / 10 + np.zeros(dim)).astype(np.float32)
    queue, pointer = enqueue(queue, pointer, jnp.asarray(keys))
    reference = (reference + list(keys))[-size:]
    assert int(pointer) == (step + 1) * batch % size
    # Reading the ring buffer from the pointer gives the keys oldest first.
    np.testing.assert_array_equal(np.roll(np.asarray(queue), -int(pointer), axis=0),
                                  np.stack(reference))


def test_queue_with_size_a_multiple_of_the_batch():
  queue, pointer = jnp.zeros((8, 1)), jnp.int32(0)
  for step in range(5):
    queue, pointer = objectives.enqueue(queue, pointer, jnp.full((4, 1), step + 1.0))
  np.testing.assert_array_equal(np.asarray(queue)[:, 0], [5, 5, 5, 5, 4, 4, 4, 4])
  assert int(pointer) == 4


def test_momentum_update_is_exact_and_keeps_shared_zeros():
  rng = np.random.default_rng(4)
  mask = rng.random((6, 5)) < 0.5
  online = {'w': np.where(mask, rng.normal(size=(6, 5)), 0).astype(np.float32),
            'b': rng.normal(size=3).astype(np.float32)}
  target = jax.tree.map(np.copy, online)
  update = jax.jit(lambda t, o: objectives.momentum_update(t, o, 0.999))
  want = jax.tree.map(lambda x: x.astype(np.float64), target)
  for step in range(200):
    # The online weights change every step, only where they are not pruned.
    online = {'w': np.where(mask, online['w'] + rng.normal(size=(6, 5)), 0).astype(np.float32),
              'b': (online['b'] + 1).astype(np.float32)}
    target = update(target, online)
    want = jax.tree.map(lambda t, o: 0.999 * t + 0.001 * o, want, online)
  np.testing.assert_allclose(target['w'], want['w'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(target['b'], want['b'], rtol=1e-5)
  assert not np.asarray(target['w'])[~mask].any()
  assert np.asarray(target['w'])[mask].all()
