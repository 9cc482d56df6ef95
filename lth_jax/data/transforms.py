"""Per-example image transforms for tf.data, driven by explicit stateless seeds.

Every random transform takes `seed`, a [2] int tensor, and is a pure function of
(image, seed): the pipeline derives each example's seed from (run seed, epoch, position
in the epoch), which makes an epoch reproducible and resumable at any step whatever
the thread scheduling.

Float images are in [0, 1] except where a docstring says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

# torchvision's ImageNet evaluation: resize the short side to 256, centre-crop 224.
_EVAL_RESIZE_RATIO = 256 / 224


def random_crop_flip(image: tf.Tensor, seed: tf.Tensor, padding: int, flip: bool
                     ) -> tf.Tensor:
  """torchvision's RandomCrop(size, padding) (+ RandomHorizontalFlip if `flip`).

  Args:
    image: [H, W, C] float image with a static shape.
    seed: [2] int stateless seed.
    padding: zero padding on every side before the crop (0: no crop).
    flip: whether to flip left-right with probability 1/2.

  Returns:
    [H, W, C] augmented image.
  """
  crop_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
  if padding:
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.stateless_random_crop(padded, image.shape, seed=crop_seed)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return image


def inception_crop(jpeg: tf.Tensor, seed: tf.Tensor, size: int,
                   area_range: Sequence[float] = (0.08, 1.0),
                   aspect_ratio_range: Sequence[float] = (3 / 4, 4 / 3)) -> tf.Tensor:
  """torchvision's RandomResizedCrop(size) + RandomHorizontalFlip on an encoded JPEG.

  Only the crop is decoded. When no crop satisfying the ranges is found in 10 tries the
  whole image is used (torchvision falls back to a centre crop instead).

  Args:
    jpeg: scalar string tensor, a JPEG-encoded RGB image.
    seed: [2] int stateless seed.
    size: output side length.
    area_range: range of the crop's fraction of the image area.
    aspect_ratio_range: range of the crop's width / height.

  Returns:
    [size, size, 3] float image.
  """
  box_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.image.extract_jpeg_shape(jpeg),
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
      seed=box_seed, min_object_covered=area_range[0],
      aspect_ratio_range=aspect_ratio_range, area_range=area_range, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
  image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
  image = resize(tf.cast(image, tf.float32) / 255.0, size)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def resize_center_crop(jpeg: tf.Tensor, size: int) -> tf.Tensor:
  """torchvision's Resize(size * 256 / 224) + CenterCrop(size) on an encoded JPEG.

  Args:
    jpeg: scalar string tensor, a JPEG-encoded RGB image.
    size: output side length (224 gives the standard 256 -> 224 evaluation).

  Returns:
    [size, size, 3] float image.
  """
  image = tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32) / 255.0
  short_side = round(size * _EVAL_RESIZE_RATIO)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  new_hw = tf.cast(tf.round(hw * short_side / tf.reduce_min(hw)), tf.int32)
  image = tf.image.resize(image, new_hw, method='bilinear', antialias=True)
  top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, size, size)


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear (antialiased) resize of an [H, W, C] image to [size, size, C]."""
  return tf.image.resize(image, [size, size], method='bilinear', antialias=True)


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """(image - mean) / std per channel."""
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
