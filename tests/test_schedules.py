"""Learning-rate schedules and gradient accumulation against transcriptions of the
reference's PyTorch code (Detection/utils/cosine_lr_scheduler.py and the training loop
of Detection/train_imp.py; Segmentation/utils/scheduler.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lth_jax.experiments import config as defaults
from lth_jax.training import optim

# The reference's VOC07+12 training list (Detection/utils/voc.py): VOC2007 trainval (5,011
# images) then VOC2012 trainval (11,540), less the images whose objects are all difficult,
# of which there are none (every one of the 16,551 holds a non-difficult object: 40,058 in
# all). Its DataLoader (batch 8, drop_last False) makes ceil(16,551 / 8) batches an epoch.
VOC0712_IMAGES = 5011 + 11540
BATCH_SIZE = 8
VOC0712_LOADER_LEN = math.ceil(VOC0712_IMAGES / BATCH_SIZE)


class CosineDecayLR:
  """Detection/utils/cosine_lr_scheduler.py, returning the rate it sets."""

  def __init__(self, t_max, lr_init, lr_min=0.0, warmup=0):
    self.t_max, self.lr_max, self.lr_min, self.warmup = t_max, lr_init, lr_min, warmup

  def step(self, t):
    if self.warmup and t < self.warmup:
      return self.lr_max / self.warmup * t
    t_max = self.t_max - self.warmup
    t = t - self.warmup
    return self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + np.cos(t / t_max * np.pi))


def _reference_rates(recipe: optim.Recipe, loader_len: int):
  """(epoch, batch) -> the rate Detection/train_imp.py sets before that batch."""
  scheduler = CosineDecayLR(t_max=recipe.num_epochs * loader_len,
                            lr_init=recipe.learning_rate, lr_min=recipe.final_learning_rate,
                            warmup=recipe.warmup_epochs * loader_len)
  return lambda epoch, i: scheduler.step(loader_len / recipe.counter_divisor * epoch + i)


def test_detection_voc_schedule_is_the_references_as_it_runs():
  recipe = defaults.recipe(defaults.load_config('detection_voc').optim)
  assert recipe.schedule == 'yolov4_reference'
  assert (recipe.learning_rate, recipe.final_learning_rate, recipe.warmup_epochs,
          recipe.num_epochs, recipe.accumulate_steps, recipe.counter_divisor) == (
              1e-4, 1e-6, 2, 120, 2, BATCH_SIZE)
  assert VOC0712_LOADER_LEN == 2069
  rate_at = _reference_rates(recipe, VOC0712_LOADER_LEN)
  # The optimizer steps at batches i % accumulate == 0 of every epoch, with the rate the
  # scheduler set before batch i.
  expected = np.array([[rate_at(epoch, i) for i in range(0, VOC0712_LOADER_LEN, 2)]
                       for epoch in range(recipe.num_epochs)])
  per_epoch = optim.optimizer_steps_per_epoch(recipe, VOC0712_LOADER_LEN)
  assert expected.shape == (120, per_epoch) == (120, 1035)
  schedule = optim.create_learning_rate_schedule(recipe, VOC0712_LOADER_LEN)
  got = np.asarray(schedule(jnp.arange(expected.size))).reshape(expected.shape)
  np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-12)
  # The shape the issue describes: a saw-tooth warm-up whose epochs 0-15 start at
  # e / 16 of the rate, then almost constant, 0.97e-4 at the end (cosine would end at 1e-6).
  np.testing.assert_allclose(expected[:16, 0], np.arange(16) / 16 * 1e-4, rtol=1e-12)
  assert expected[16:].min() > 0.96e-4
  assert got[-1, -1] == pytest.approx(0.9666e-4, rel=1e-4)


def _sgd_reference(w0, grads, *, loader_len, epochs, accumulate, rate_at, momentum,
                   weight_decay):
  """Detection/train_imp.py's loop with torch.optim.SGD: the weights after every batch."""
  w, buf, grad = w0.copy(), None, np.zeros_like(w0)
  out = []
  for epoch in range(epochs):
    for i in range(loader_len):
      lr = rate_at(epoch, i)
      grad = grad + grads[epoch * loader_len + i]  # loss.backward() accumulates
      if i % accumulate == 0:
        d = grad + weight_decay * w
        buf = d if buf is None else momentum * buf + d
        w = w - lr * buf
        grad = np.zeros_like(w0)  # optimizer.zero_grad(), only after a step
      out.append(w)
  return np.stack(out)


@pytest.mark.parametrize('schedule,loader_len,accumulate', [
    ('constant', 5, 2), ('constant', 6, 2), ('yolov4_reference', 6, 2),
    ('yolov4_reference', 7, 2), ('yolov4_reference', 8, 3)])
def test_accumulation_steps_where_the_reference_does(schedule, loader_len, accumulate):
  # An even loader length leaves the epoch's last batch to the next epoch's first step.
  constant = schedule == 'constant'
  recipe = optim.Recipe(learning_rate=0.1, final_learning_rate=0.01, momentum=0.9,
                        weight_decay=0.05, schedule=schedule, warmup_epochs=int(not constant),
                        num_epochs=4, accumulate_steps=accumulate, counter_divisor=2)
  rate_at = ((lambda epoch, i: recipe.learning_rate) if constant
             else _reference_rates(recipe, loader_len))
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(3,))
  grads = rng.normal(size=(recipe.num_epochs * loader_len, 3))
  expected = _sgd_reference(w0, grads, loader_len=loader_len, epochs=recipe.num_epochs,
                            accumulate=accumulate, rate_at=rate_at, momentum=0.9,
                            weight_decay=0.05)

  tx = optim.create_optimizer(recipe, loader_len)
  update = jax.jit(tx.update)
  params = jnp.asarray(w0, jnp.float32)
  state = tx.init(params)
  got = []
  for g in grads:
    updates, state = update(jnp.asarray(g, jnp.float32), state, params)
    params = optax.apply_updates(params, updates)
    got.append(np.asarray(params))
  np.testing.assert_allclose(np.stack(got), expected, rtol=1e-5, atol=1e-6)

  # The rate a run records after each batch is that of the last step taken.
  epochs, batches = np.divmod(np.arange(len(grads)), loader_len)
  last = [rate_at(epoch, i - i % accumulate) for epoch, i in zip(epochs, batches)]
  np.testing.assert_allclose(
      optim.batch_learning_rate(recipe, loader_len)(np.arange(len(grads))), last,
      rtol=1e-5, atol=1e-9)


def test_poly_never_goes_below_the_references_min_lr_in_any_group():
  # Segmentation/utils/scheduler.py PolyLR: max(base_lr * (1 - t / T) ** 0.9, 1e-6) for
  # each parameter group's base_lr (backbone lr, head 10 lr): the head too stops at 1e-6.
  steps, base = 10, 1e-3
  recipe = optim.Recipe(learning_rate=base, head_lr_scale=10.0, momentum=0.0,
                        weight_decay=0.0, schedule='poly', power=0.9, warmup_epochs=0,
                        num_epochs=2)
  tx = optim.create_optimizer(recipe, steps, is_head=lambda name: name == 'head')
  params = {'backbone': jnp.zeros(()), 'head': jnp.zeros(())}
  state = tx.init(params)
  ones = jax.tree.map(jnp.ones_like, params)
  for t in range(2 * steps + 3):
    updates, state = tx.update(ones, state, params)
    for name, scale in (('backbone', 1.0), ('head', 10.0)):
      poly = scale * base * (1 - min(t, 2 * steps) / (2 * steps)) ** 0.9
      assert -float(updates[name]) == pytest.approx(max(poly, 1e-6), rel=1e-5), (name, t)
  assert float(optim.create_learning_rate_schedule(recipe, steps)(2 * steps)) == (
      pytest.approx(1e-6))
