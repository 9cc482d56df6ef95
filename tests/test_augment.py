"""Tests for lth_jax.objectives.views: on-device SimCLR / MoCo v2 views."""

from __future__ import annotations

import colorsys
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax.objectives import views as augment
from lth_jax.runtime import sharding

# Every random transform off: a view is then the image itself.
IDENTITY = augment.ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
                              jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)


def images(shape=(8, 16, 16, 3), seed=0):
  return jax.random.uniform(jax.random.key(seed), shape)


views = jax.jit(augment.views, static_argnums=2)


@pytest.mark.parametrize('config', [augment.SIMCLR, augment.MOCO_V2], ids=['simclr', 'moco'])
@pytest.mark.parametrize('channels', [1, 3])
def test_views_shape_range_determinism(config, channels):
  x = images((8, 16, 16, channels))
  key = jax.random.key(1)
  v = views(key, x, config)
  assert v.shape == x.shape and v.dtype == jnp.float32
  assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
  np.testing.assert_array_equal(v, views(key, x, config))
  other = views(jax.random.key(2), x, config)
  assert all(not np.allclose(a, b) for a, b in zip(np.asarray(v), np.asarray(other)))
  first, second = augment.two_views(key, x, config)
  assert not np.allclose(first, second)


def test_output_size_and_identity_when_nothing_is_random():
  x = images()
  np.testing.assert_allclose(views(jax.random.key(0), x, IDENTITY), x, atol=1e-6)
  small = views(jax.random.key(0), x, dataclasses.replace(IDENTITY, size=8))
  assert small.shape == (8, 8, 8, 3)
  # A full-image crop to another size is a plain antialiased bilinear resize.
  np.testing.assert_allclose(
      small, jax.image.resize(x, (8, 8, 8, 3), 'linear', antialias=True), atol=1e-6)


def test_flip_and_grayscale_with_probability_one():
  x = images()
  flipped = views(jax.random.key(0), x, dataclasses.replace(IDENTITY, flip_prob=1.0))
  np.testing.assert_allclose(flipped, np.asarray(x)[:, :, ::-1], atol=1e-6)
  gray = views(jax.random.key(0), x, dataclasses.replace(IDENTITY, grayscale_prob=1.0))
  luma = np.asarray(x) @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(gray, np.repeat(luma[..., None], 3, -1), atol=1e-6)


def test_crop_boxes_follow_random_resized_crop():
  keys = jax.random.split(jax.random.key(0), 2000)
  boxes = np.asarray(jax.vmap(
      lambda k: augment.crop_box(k, 20, 30, (0.08, 1.0), (3 / 4, 4 / 3)))(keys))
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= 20).all() and (left + w <= 30).all()
  area = h * w / 600
  # Rounding to whole pixels moves the area a little outside the sampled range.
  assert area.min() > 0.05 and area.max() <= 1.0
  assert 0.7 < np.median(w / h) < 1.4 and len({tuple(b) for b in boxes}) > 1000
  # Nothing fits a ratio range far from the image's: torchvision's centre crop.
  centre = augment.crop_box(jax.random.key(0), 20, 30, (0.9, 1.0), (4.0, 5.0))
  np.testing.assert_array_equal(centre, [(20 - 8) // 2, 0, 8, 30])  # round(30 / 4)


def test_colour_adjustments_match_their_definitions():
  rng = np.random.default_rng(0)
  rgb = rng.random((5, 4, 3)).astype(np.float32)
  luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(augment.adjust_brightness(rgb, 1.5), np.clip(1.5 * rgb, 0, 1),
                             atol=1e-6)
  np.testing.assert_allclose(augment.adjust_contrast(rgb, 0.5),
                             np.clip(0.5 * rgb + 0.5 * luma.mean(), 0, 1), atol=1e-6)
  np.testing.assert_allclose(augment.adjust_saturation(rgb, 0.3),
                             np.clip(0.3 * rgb + 0.7 * luma[..., None], 0, 1), atol=1e-6)
  shifted = np.asarray(augment.adjust_hue(rgb, 0.25))
  want = np.array([colorsys.hsv_to_rgb((h + 0.25) % 1, s, v) for h, s, v in
                   (colorsys.rgb_to_hsv(*p) for p in rgb.reshape(-1, 3))]).reshape(rgb.shape)
  np.testing.assert_allclose(shifted, want, atol=2e-6)


def test_one_channel_colour_ops():
  gray = np.random.default_rng(1).random((6, 6, 1)).astype(np.float32)
  np.testing.assert_array_equal(augment.adjust_hue(gray, 0.3), gray)
  np.testing.assert_allclose(augment.adjust_saturation(gray, 0.1), gray, atol=1e-7)
  np.testing.assert_allclose(augment.adjust_contrast(gray, 0.5),
                             np.clip(0.5 * gray + 0.5 * gray.mean(), 0, 1), atol=1e-6)


def test_gaussian_blur():
  rng = np.random.default_rng(2)
  image = rng.random((12, 12, 2)).astype(np.float32)
  sigma, radius = 1.3, 6
  weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  weights /= weights.sum()
  padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode='reflect')
  want = np.zeros_like(image)
  for i, wi in enumerate(weights):
    for j, wj in enumerate(weights):
      want += wi * wj * padded[i:i + 12, j:j + 12]
  np.testing.assert_allclose(augment.gaussian_blur(image, sigma, 2.0), want, atol=1e-5)
  # Images smaller than the kernel (MNIST-sized crops) still blur, with edge padding.
  tiny = augment.gaussian_blur(image[:4, :4], 2.0, 2.0)
  assert tiny.shape == (4, 4, 2) and np.isfinite(tiny).all()


def test_sharded_views_equal_single_device_views():
  x = images((16, 12, 12, 3))
  mesh = sharding.make_mesh()
  step = jax.jit(lambda k, b: augment.views(k, b, augment.MOCO_V2),
                 in_shardings=(sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=sharding.batch_sharding(mesh))
  got = step(jax.random.key(3), sharding.shard_batch(np.asarray(x), mesh))
  np.testing.assert_allclose(got, views(jax.random.key(3), x, augment.MOCO_V2), atol=1e-6)


@pytest.mark.parametrize('field, value, message', [
    ('jitter_prob', 1.5, 'probability'), ('hue', 0.7, 'hue'),
    ('crop_scale', (0.5, 0.2), 'crop_scale'), ('size', 0, 'size')])
def test_bad_view_config_is_refused(field, value, message):
  with pytest.raises(ValueError, match=message):
    augment.ViewConfig(**{field: value})
