"""Segmentation data: images with per-pixel labels, transformed jointly.

    for batch in segmentation.train_batches(info, batch_size=4, epoch=0, seed=0, data_dir=d):
      ...   # {'image': f32 [B/P, S, S, C], 'label': int32 [B/P, S, S]} (255: ignore)
    for batch in segmentation.eval_batches(info, 'test', batch_size=4, data_dir=d):
      ...   # the same plus 'mask' (1 real image, 0 padding)

Training follows the reference's (VainF's) transforms, with a stateless seed an example
as the classification pipelines do: a random scale in `info.scale_range` (each side
`int(side * scale)`; the image bilinear, antialiased when shrinking as PIL's, the labels
nearest as PIL's), padding to the crop, a random crop of `info.image_shape`, a random
horizontal flip (augmentation 'scale_crop_flip'), then the mean/std normalisation;
labels always move with their pixels. The padding (`info.seg_train_pad`) is the
reference's ExtRandomCrop(pad_if_needed=True) ('background': every side, image and
labels 0) or at the bottom and right with labels 255 ('ignore': never trained on).

Evaluation (`info.seg_eval`) is the reference's `--crop_val` ('resize_center_crop':
ExtResize + ExtCenterCrop, the short side scaled to the crop and the long side's ends
cut off) or sees whole images ('pad': padded at the bottom and right, labels 255 there,
so the padding is never scored).

Sources: any source holding its arrays in memory ('image' and 'segmentation': 'canvases',
the digit canvases of `lth_jax.data.canvases`, generated from the shipped MNIST-5k) and
'voc' (Pascal VOC 2012 from a VOCdevkit folder, `lth_jax.data.voc`; 'val' is held out of
the end of VOC's train list, 'test' is VOC's val).
"""

from __future__ import annotations


import numpy as np
import tensorflow as tf

from lth_jax.data import pipeline, sources, voc
from lth_jax.data import transforms
from lth_jax.data.registry import DatasetInfo

Host = tuple[int, int]


def _voc_pairs(info: DatasetInfo, split: str, data_dir: str | None) -> list[tuple[str, str]]:
  if split == 'test':
    return voc.segmentation_examples(data_dir or '', 'val')
  pairs = voc.segmentation_examples(data_dir or '', 'train')
  kept = info.split_sizes['train']
  return pairs[:kept] if split == 'train' else pairs[kept:]


def _read_label(path: tf.Tensor) -> tf.Tensor:
  label = tf.numpy_function(lambda p: voc.read_label(p.decode()), [path], tf.uint8)
  return tf.ensure_shape(label, (None, None))


def examples(info: DatasetInfo, split: str, data_dir: str | None, host: Host,
             file_seed: int | None = None) -> tf.data.Dataset:
  """This host's slice of a split: {'image': uint8 [H, W, C], 'label': uint8 [H, W]}.

  Args:
    info: a segmentation dataset.
    split: 'train', 'val' or 'test'.
    data_dir: the folder holding VOCdevkit ('voc').
    host: (process index, process count).
    file_seed: unused (the sources are lists, shuffled by the pipeline).

  Returns:
    The examples in stored order.
  """
  del file_seed
  index, count = host
  read = sources.get(info.source).arrays
  if read is not None:  # held in memory (the canvases, cached there)
    whole = read(info, split)
    images, labels = whole['image'], whole['segmentation']
    part = np.array_split(np.arange(len(labels)), count)[index]
    return tf.data.Dataset.from_tensor_slices({'image': images[part], 'label': labels[part]})
  pairs = _voc_pairs(info, split, data_dir)
  part = np.array_split(np.arange(len(pairs)), count)[index]
  images = [pairs[i][0] for i in part]
  labels = [pairs[i][1] for i in part]
  ds = tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels})
  return ds.map(lambda ex: {'image': tf.io.decode_jpeg(tf.io.read_file(ex['image']),
                                                       channels=info.image_shape[-1]),
                            'label': _read_label(ex['label'])},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# The joint transforms below take and return a pair: image [H, W, C] float and label
# [H, W] uint8; `size` is the side of the square crop the model sees.


def _pad_to(image: tf.Tensor, label: tf.Tensor, size: int,
            ignore_label: int) -> tuple[tf.Tensor, tf.Tensor]:
  height, width = tf.shape(label)[0], tf.shape(label)[1]
  pad_h, pad_w = tf.maximum(size - height, 0), tf.maximum(size - width, 0)
  image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
  label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=ignore_label)
  return image, label


def _pad_as_reference(image: tf.Tensor, label: tf.Tensor,
                      size: int) -> tuple[tf.Tensor, tf.Tensor]:
  """ExtRandomCrop(size, pad_if_needed=True)'s padding: the width, then the height.

  Each side shorter than `size` in turn pads the pair with 0 by `int((1 + size - side) /
  2)` on all four sides (F.pad with an int pads every side, so padding the width grows
  the height too); the pair is then at least `size` x `size`.
  """
  for axis in (1, 0):
    pad = tf.maximum((1 + size - tf.shape(label)[axis]) // 2, 0)
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    label = tf.pad(label, [[pad, pad], [pad, pad]])
  return image, label


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  # PIL's NEAREST resize (ImagingScaleAffine): output pixel k reads input pixel
  # int((k + 1/2) * in / out), the centres accumulated by repeated float64 addition.
  # Exact ties (e.g. 2 -> 15 at k = 7) fall where that rounding puts them, so the sum is
  # replicated step by step rather than computed exactly.
  step = in_size / out_size
  centres = np.full(out_size, step)
  centres[0] = step / 2
  return np.add.accumulate(centres).astype(np.int32)


def _resize(image: tf.Tensor, label: tf.Tensor,
            new_hw: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """PIL's resize of the reference to `new_hw` ([2] int32): image BILINEAR, labels NEAREST.

  The image agrees with PIL's to within its uint8 rounding (PIL antialiases when
  shrinking: its triangle filter widens by the factor, as `antialias=True` does); the
  labels agree exactly.
  """
  image = tf.image.resize(image, new_hw, method='bilinear', antialias=True)
  hw = tf.shape(label)
  rows, cols = (tf.ensure_shape(tf.numpy_function(_nearest_indices, [hw[axis], new_hw[axis]],
                                                  tf.int32, stateful=False), [None])
                for axis in (0, 1))
  label = tf.gather(tf.gather(label, rows, axis=0), cols, axis=1)
  return image, label


def _resize_center_crop(image: tf.Tensor, label: tf.Tensor,
                        size: int) -> tuple[tf.Tensor, tf.Tensor]:
  """The reference's `--crop_val`: ExtResize(size) then ExtCenterCrop(size).

  torchvision's F.resize(img, size) makes the short side `size` and the long one
  `int(size * long / short)`; F.center_crop starts at `int(round((side - size) / 2.))`
  (Python's round: halves to even, as tf.round). The pair returned is [size, size].
  """
  hw = tf.shape(label)
  new_hw = size * hw // tf.reduce_min(hw)
  image, label = _resize(image, label, new_hw)
  top, left = tf.unstack(tf.cast(tf.round(tf.cast(new_hw - size, tf.float32) / 2), tf.int32))
  return (image[top:top + size, left:left + size], label[top:top + size, left:left + size])


def preprocess(example: dict[str, tf.Tensor], *, info: DatasetInfo,
               seed: tf.Tensor | None) -> dict[str, tf.Tensor]:
  """One example -> {'image': float32 [S, S, C] normalised, 'label': int32 [S, S]}.

  Args:
    example: {'image': uint8 [H, W, C], 'label': uint8 [H, W]}.
    info: the dataset (crop size, scale range, padding and evaluation protocol,
      mean/std).
    seed: [2] stateless seed of the training transforms; None for evaluation.

  Returns:
    The transformed pair.
  """
  size = info.image_shape[0]
  image = tf.cast(example['image'], tf.float32) / info.pixel_max
  label = example['label']
  if seed is not None:
    scale_seed, crop_seed, flip_seed = tf.unstack(tf.random.split(seed, 3))
    low, high = info.scale_range
    scale = tf.random.stateless_uniform([], scale_seed, low, high)
    # int(side * scale), as the reference's ExtRandomScale: the cast truncates.
    new_hw = tf.cast(tf.cast(tf.shape(label), tf.float32) * scale, tf.int32)
    image, label = _resize(image, label, new_hw)
    if info.seg_train_pad == 'background':
      image, label = _pad_as_reference(image, label, size)
    else:
      image, label = _pad_to(image, label, size, info.ignore_label)
    # One crop window for both: the label rides along as an extra channel.
    stacked = tf.concat([image, tf.cast(label[..., None], tf.float32)], axis=-1)
    stacked = tf.image.stateless_random_crop(
        stacked, [size, size, info.image_shape[-1] + 1], seed=crop_seed)
    if info.augmentation == 'scale_crop_flip':
      stacked = tf.image.stateless_random_flip_left_right(stacked, seed=flip_seed)
    image, label = stacked[..., :-1], tf.cast(stacked[..., -1], tf.uint8)
  elif info.seg_eval == 'resize_center_crop':
    image, label = _resize_center_crop(image, label, size)
  else:
    # Whole images: one larger than the model's input would lose pixels.
    tf.debugging.assert_less_equal(
        tf.reduce_max(tf.shape(label)), size,
        message=f'an evaluation image of {info.name!r} is larger than its image_shape '
        f'{info.image_shape[:2]}; every pixel is scored, so none may be cropped '
        "(seg_eval='resize_center_crop' crops).")
    image, label = _pad_to(image, label, size, info.ignore_label)
  image = transforms.normalize(image, info.mean, info.std)
  image = tf.ensure_shape(image, (size, size, info.image_shape[-1]))
  return {'image': image, 'label': tf.ensure_shape(tf.cast(label, tf.int32), (size, size))}


_PIPELINE = pipeline.JointPipeline(examples, preprocess)
# train_batches(info, *, batch_size, epoch, seed, data_dir, start_step=0) and
# eval_batches(info, split, *, batch_size, data_dir): see `pipeline.JointPipeline`.
train_batches = _PIPELINE.train_batches
eval_batches = _PIPELINE.eval_batches


def check_available(info: DatasetInfo, data_dir: str | None) -> None:
  """Raises unless every split's VOC files are there, as many as `info` says.

  Args:
    info: a segmentation dataset of the 'voc' source (whose check this is).
    data_dir: the folder holding VOCdevkit.

  Raises:
    DatasetNotFoundError: a folder, list or file is missing, or VOC's lists hold another
      number of images than the splits need (a different VOC release or an edited list).
  """
  sizes = info.split_sizes
  voc.require_counts(info.name, data_dir, [
      (f'VOC2012 ImageSets/Segmentation/{voc_split}.txt',
       len(voc.segmentation_examples(data_dir or '', voc_split)), needed, splits)
      for voc_split, needed, splits in (('train', sizes['train'] + sizes['val'],
                                         "'train' + 'val'"), ('val', sizes['test'], "'test'"))])
