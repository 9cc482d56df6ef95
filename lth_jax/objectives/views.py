"""SimCLR and MoCo v2 views, computed on the accelerator inside the train step.

    config = views.SIMCLR                          # or views.MOCO_V2
    v1, v2 = views.two_views(key, images, config)  # images: [B, H, W, C] in [0, 1]

Each image gets its own key (`jax.random.split(key, B)`) and the per-image transform is
vmapped over the batch, so there is no Python loop per image and a view depends only on
(key, position in the global batch, image): the same on one device or many. Under
`jax.jit` with the batch sharded over devices, each device augments its own slice.

The transforms follow torchvision's (which the reference's SimCLR and MoCo loaders use):
RandomResizedCrop (integer boxes, 10 tries, then a centre crop; bilinear antialiased
resize), RandomHorizontalFlip, ColorJitter (brightness, contrast, saturation, hue in a
random order, each clipped to [0, 1]) applied with probability `jitter_prob`,
RandomGrayscale and an optional Gaussian blur (MoCo v2: sigma in [0.1, 2], applied with
probability 1/2; the kernel spans +-3 sigma, reflect-padded).

One-channel images (Animal-MNIST, MNIST): saturation, hue and grayscale have nothing to
act on and are identities; crop, flip, brightness, contrast and blur act as on RGB.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)
_CROP_TRIES = 10


@dataclasses.dataclass(frozen=True)
class ViewConfig:
  """One family of random views.

  Attributes:
    size: output side length; None keeps the input's height.
    crop_scale: range of the crop's fraction of the image area.
    crop_ratio: range of the crop's aspect ratio (width / height).
    flip_prob: probability of a left-right flip.
    jitter_prob: probability of applying the colour jitter.
    brightness: brightness factor drawn from [max(0, 1 - b), 1 + b].
    contrast: contrast factor drawn from [max(0, 1 - c), 1 + c].
    saturation: saturation factor drawn from [max(0, 1 - s), 1 + s].
    hue: hue shift drawn from [-h, h] (h <= 0.5), in turns of the colour wheel.
    grayscale_prob: probability of converting to grayscale (kept with C channels).
    blur_prob: probability of a Gaussian blur.
    blur_sigma: range of the blur's standard deviation in pixels.
  """
  size: int | None = None
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  brightness: float = 0.8
  contrast: float = 0.8
  saturation: float = 0.8
  hue: float = 0.2
  grayscale_prob: float = 0.2
  blur_prob: float = 0.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)

  def __post_init__(self):
    for name in ('flip_prob', 'jitter_prob', 'grayscale_prob', 'blur_prob'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'ViewConfig.{name}={getattr(self, name)} must be a probability '
                         'in [0, 1].')
    for name in ('brightness', 'contrast', 'saturation'):
      if getattr(self, name) < 0:
        raise ValueError(f'ViewConfig.{name}={getattr(self, name)} must be >= 0.')
    if not 0.0 <= self.hue <= 0.5:
      raise ValueError(f'ViewConfig.hue={self.hue} must be in [0, 0.5].')
    low, high = self.crop_scale
    if not 0.0 < low <= high <= 1.0:
      raise ValueError(f'ViewConfig.crop_scale={self.crop_scale} must satisfy '
                       '0 < low <= high <= 1 (fractions of the image area).')
    if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
      raise ValueError(f'ViewConfig.crop_ratio={self.crop_ratio} must satisfy '
                       '0 < low <= high.')
    if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
      raise ValueError(f'ViewConfig.blur_sigma={self.blur_sigma} must satisfy '
                       '0 < low <= high.')
    if self.size is not None and self.size < 1:
      raise ValueError(f'ViewConfig.size={self.size} must be >= 1 or None.')


# SimCLR (Chen et al. 2020; the reference's SimCLR loader): colour strength 1.0, no blur
# (the reference leaves it out; set blur_prob=0.5 for SimCLR's ImageNet recipe).
SIMCLR = ViewConfig()
# MoCo v2 "aug-plus" (Chen et al. 2020, the reference's MoCo loader).
MOCO_V2 = ViewConfig(crop_scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.4,
                     hue=0.1, blur_prob=0.5)
PRESETS = {'simclr': SIMCLR, 'moco_v2': MOCO_V2}


# ----------------------------------------------------------------------------------
# Single-image transforms (vmapped by `views`).
# ----------------------------------------------------------------------------------

def crop_box(key: jax.Array, height: int, width: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> jax.Array:
  """torchvision's RandomResizedCrop.get_params: an integer box [top, left, h, w].

  Ten candidate boxes are drawn at once and the first that fits is taken; when none
  fits, the centre crop with the aspect ratio clamped to `ratio`.

  Args:
    key: PRNG key.
    height: image height.
    width: image width.
    scale: range of the box's fraction of the image area.
    ratio: range of the box's aspect ratio (width / height).

  Returns:
    int32 [4]: top, left, box height, box width.
  """
  area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  area = height * width * jax.random.uniform(area_key, (_CROP_TRIES,), minval=scale[0],
                                             maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(ratio_key, (_CROP_TRIES,), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  # randint(0, H - h + 1) with a traced bound: floor of a uniform in [0, H - h + 1).
  top = jnp.floor(jax.random.uniform(top_key, (_CROP_TRIES,)) * (height - h + 1))
  left = jnp.floor(jax.random.uniform(left_key, (_CROP_TRIES,)) * (width - w + 1))
  boxes = jnp.stack([top.astype(jnp.int32), left.astype(jnp.int32), h, w], axis=-1)

  in_ratio = width / height
  if in_ratio < ratio[0]:
    cw, ch = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    cw, ch = int(round(height * ratio[1])), height
  else:
    cw, ch = width, height
  centre = jnp.array([(height - ch) // 2, (width - cw) // 2, ch, cw], jnp.int32)
  return jnp.where(jnp.any(fits), boxes[jnp.argmax(fits)], centre)


def resized_crop(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
  """Crops `box` from an [H, W, C] image and resizes it to [size, size, C].

  Bilinear with antialiasing when shrinking (torchvision's tensor resize with
  antialias=True); the box may be traced.

  Args:
    image: [H, W, C] float image.
    box: [4] top, left, height, width (pixels).
    size: output side length.

  Returns:
    [size, size, C] float image.
  """
  box = box.astype(jnp.float32)
  scale = size / box[2:]
  translation = -box[:2] * scale
  return jax.image.scale_and_translate(image, (size, size, image.shape[-1]), (0, 1), scale,
                                       translation, method='linear', antialias=True)


def _grayscale(image: jax.Array) -> jax.Array:
  """Luma of an RGB image (or the image itself with one channel), shape [H, W, 1]."""
  if image.shape[-1] != 3:
    return image[..., :1] if image.shape[-1] == 1 else jnp.mean(image, -1, keepdims=True)
  return jnp.tensordot(image, jnp.asarray(_LUMA, image.dtype), axes=([-1], [0]))[..., None]


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Scales intensities by `factor`, clipped to [0, 1] (torchvision)."""
  return _blend(image, jnp.zeros_like(image), factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Blends with the mean grey level of the image (torchvision)."""
  return _blend(image, jnp.mean(_grayscale(image)), factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Blends with the grayscale image (an identity on one channel)."""
  return _blend(image, _grayscale(image), factor)


def _rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  maxc = jnp.max(rgb, -1)
  minc = jnp.min(rgb, -1)
  delta = maxc - minc
  safe_delta = jnp.where(delta > 0, delta, 1.0)
  s = jnp.where(maxc > 0, delta / jnp.where(maxc > 0, maxc, 1.0), 0.0)
  rc, gc, bc = (maxc - r) / safe_delta, (maxc - g) / safe_delta, (maxc - b) / safe_delta
  h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.where(delta > 0, (h / 6.0) % 1.0, 0.0)
  return jnp.stack([h, s, maxc], -1)


def _hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  # The standard piecewise-linear form: channel n is v - v s clip(min(k, 4 - k), 0, 1).
  k = (jnp.stack([5.0, 3.0, 1.0], -1) + 6.0 * h[..., None]) % 6.0
  return v[..., None] - (v * s)[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
  """Rotates the hue by `shift` turns (an identity on one channel)."""
  if image.shape[-1] != 3:
    return image
  hsv = _rgb_to_hsv(image)
  hsv = hsv.at[..., 0].set((hsv[..., 0] + shift) % 1.0)
  return _hsv_to_rgb(hsv)


def color_jitter(key: jax.Array, image: jax.Array, config: ViewConfig) -> jax.Array:
  """torchvision's ColorJitter: the four adjustments in a random order.

  Args:
    key: PRNG key.
    image: [H, W, C] float image in [0, 1].
    config: the jitter strengths.

  Returns:
    The jittered image, in [0, 1].
  """
  order_key, *factor_keys = jax.random.split(key, 5)

  def factor(k, strength):
    return jax.random.uniform(k, minval=max(0.0, 1.0 - strength), maxval=1.0 + strength)

  b = factor(factor_keys[0], config.brightness)
  c = factor(factor_keys[1], config.contrast)
  s = factor(factor_keys[2], config.saturation)
  h = jax.random.uniform(factor_keys[3], minval=-config.hue, maxval=config.hue)
  adjustments = (lambda x: adjust_brightness(x, b), lambda x: adjust_contrast(x, c),
                 lambda x: adjust_saturation(x, s), lambda x: adjust_hue(x, h))
  for index in jax.random.permutation(order_key, 4):
    image = jax.lax.switch(index, adjustments, image)
  return image


def gaussian_blur(image: jax.Array, sigma: jax.Array, max_sigma: float) -> jax.Array:
  """Separable Gaussian blur with a traced sigma (kernel radius ceil(3 max_sigma)).

  Args:
    image: [H, W, C] float image.
    sigma: standard deviation in pixels (<= max_sigma).
    max_sigma: the largest sigma the kernel must hold (fixes its static size).

  Returns:
    The blurred image, same shape (reflect padding).
  """
  radius = max(1, math.ceil(3 * max_sigma))
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * (offsets / sigma) ** 2)
  weights = weights / jnp.sum(weights)
  height, width = image.shape[:2]
  # A reflect pad needs the image to be larger than the pad; clamp for tiny images.
  padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)),
                   mode='reflect' if radius < height else 'edge')
  image = sum(w * padded[i:i + height] for i, w in enumerate(weights))
  padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)),
                   mode='reflect' if radius < width else 'edge')
  return sum(w * padded[:, i:i + width] for i, w in enumerate(weights))


def view(key: jax.Array, image: jax.Array, config: ViewConfig) -> jax.Array:
  """One random view of one image.

  Args:
    key: PRNG key.
    image: [H, W, C] float image in [0, 1].
    config: the view family.

  Returns:
    [size, size, C] float image in [0, 1].
  """
  crop_key, flip_key, jitter_key, apply_key, gray_key, blur_key, sigma_key = (
      jax.random.split(key, 7))
  height, width = image.shape[:2]
  box = crop_box(crop_key, height, width, config.crop_scale, config.crop_ratio)
  image = resized_crop(image, box, config.size or height)
  flip = jax.random.bernoulli(flip_key, config.flip_prob)
  image = jnp.where(flip, image[:, ::-1], image)
  if config.jitter_prob > 0:
    jittered = color_jitter(jitter_key, image, config)
    image = jnp.where(jax.random.bernoulli(apply_key, config.jitter_prob), jittered, image)
  if config.grayscale_prob > 0:
    gray = jnp.broadcast_to(_grayscale(image), image.shape)
    image = jnp.where(jax.random.bernoulli(gray_key, config.grayscale_prob), gray, image)
  if config.blur_prob > 0:
    sigma = jax.random.uniform(sigma_key, minval=config.blur_sigma[0],
                               maxval=config.blur_sigma[1])
    blurred = gaussian_blur(image, sigma, config.blur_sigma[1])
    image = jnp.where(jax.random.bernoulli(blur_key, config.blur_prob), blurred, image)
  return jnp.clip(image, 0.0, 1.0)


# ----------------------------------------------------------------------------------
# Batches.
# ----------------------------------------------------------------------------------

def views(key: jax.Array, images: jax.Array, config: ViewConfig) -> jax.Array:
  """One random view of each image of a batch (vmapped, one key per image).

  Args:
    key: PRNG key.
    images: [B, H, W, C] float images in [0, 1].
    config: the view family.

  Returns:
    [B, size, size, C] float32 views in [0, 1].
  """
  if images.ndim != 4:
    raise ValueError(f'views expects NHWC images, got shape {images.shape}.')
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, x: view(k, x, config))(keys, images.astype(jnp.float32))


def two_views(key: jax.Array, images: jax.Array,
              config: ViewConfig) -> tuple[jax.Array, jax.Array]:
  """Two independent views of each image (SimCLR's pair, MoCo's query and key).

  Args:
    key: PRNG key.
    images: [B, H, W, C] float images in [0, 1].
    config: the view family.

  Returns:
    Two [B, size, size, C] float32 batches.
  """
  first, second = jax.random.split(key)
  return views(first, images, config), views(second, images, config)


def normalize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """(images - mean) / std per channel, as the data pipeline's `normalize=True`."""
  return (images - jnp.asarray(mean, images.dtype)) / jnp.asarray(std, images.dtype)
