"""Detection data: images with boxes, transformed together, padded to a fixed box count.

    for batch in detection.train_batches(info, batch_size=8, epoch=0, seed=0, data_dir=d):
      ...   # 'image' f32 [B/P, S, S, C]; 'boxes' f32 [B/P, M, 4] (x1, y1, x2, y2) in input
            # pixels; 'classes' i32 [B/P, M]; 'valid' bool [B/P, M]
    for batch in detection.eval_batches(info, 'test', batch_size=8, data_dir=d):
      ...   # the same (boxes letterboxed) plus 'gt_boxes' f32 [B/P, M, 4] in the original
            # image's pixels, 'difficult' bool [B/P, M], 'hw' i32 [B/P, 2] its size, 'mask'

M is `info.max_boxes` for every batch, so one compiled step serves all of them. Training
follows the reference's (argusswift/YOLOv4-pytorch `utils/data_augment.py`) per-example
transforms with stateless seeds: a horizontal flip (p 1/2, augmentation 'box_crop_flip'
only: digits are not mirror-symmetric), a crop of the left and top margins outside the
union of the boxes (p 1/2; the reference's right and bottom bounds use max() where min()
was meant, so they never crop, kept here), a translation that keeps that union inside the
image (p 1/2, whole pixels; the reference's warpAffine also shifts by fractions), then the
letterbox resize: scale by min(S / w, S / h), paste at the centre (integer offsets) on
grey 128 / 255, boxes scaled and shifted alike. Mixup is not done (a deviation; the loss
takes per-box mix weights of 1). Difficult boxes are dropped from training, and so are the
training images left without a box, as the reference's annotation script
(Detection/utils/voc.py) drops both; 'val' and 'test' keep every image, as the reference
evaluates every image of VOC07 test's list. Evaluation letterboxes without augmentation and
keeps the annotations in original pixels for the VOC metric. Pixels are scaled by
`info.pixel_max` and normalised by `info.mean`/`info.std` (0 and 1 for VOC: the reference
feeds [0, 1] pixels).

Sources: any source holding its arrays in memory ('image', 'boxes', 'classes',
'difficult', 'num_objects' as `lth_jax.data.canvases.make_canvases` returns them: the
'canvases', boxes as their inclusive integer bounds; 'train' is the first
`split_sizes['train']` training canvases with a box that is not difficult, 1,900 of the
first 2,000) and 'voc' (VOC2007 + VOC2012 trainval for training, the last
`split_sizes['val']` of those held out as 'val', VOC2007 test as 'test'; boxes as the XML
gives them, as the reference's; every image of VOC07+12 trainval as released holds a
non-difficult object, so training keeps all 16,051).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
import tensorflow as tf

from lth_jax.data import pipeline, sources, voc
from lth_jax.data import transforms
from lth_jax.data.registry import DatasetInfo

Host = tuple[int, int]
# The reference's training and test sets (Detection/utils/voc.py).
VOC_TRAIN = (('2007', 'trainval'), ('2012', 'trainval'))
VOC_TEST = (('2007', 'test'),)
# Detection/utils/data_augment.py Resize: the letterbox's grey.
LETTERBOX_FILL = 128 / 255


def _padded(boxes: list[np.ndarray], classes: list[np.ndarray], difficult: list[np.ndarray],
            max_boxes: int, name: str) -> dict[str, np.ndarray]:
  count = len(boxes)
  most = max((len(b) for b in boxes), default=0)
  if most > max_boxes:
    raise ValueError(f'An image of {name!r} has {most} boxes, more than its max_boxes '
                     f'({max_boxes}); raise max_boxes in lth_jax/data/registry.py.')
  out = {'boxes': np.zeros((count, max_boxes, 4), np.float32),
         'classes': np.zeros((count, max_boxes), np.int32),
         'difficult': np.zeros((count, max_boxes), bool),
         'valid': np.zeros((count, max_boxes), bool)}
  for i, (b, c, d) in enumerate(zip(boxes, classes, difficult)):
    n = len(b)
    out['boxes'][i, :n], out['classes'][i, :n], out['difficult'][i, :n] = b, c, d
    out['valid'][i, :n] = True
  return out


def _trainable(arrays: dict[str, np.ndarray]) -> np.ndarray:
  """Which padded examples hold a box that is not difficult."""
  return (arrays['valid'] & ~arrays['difficult']).any(axis=1)


def _held(info: DatasetInfo, split: str, num: int) -> dict[str, np.ndarray]:
  # A source that makes its examples (the canvases, cached there) makes as many as the
  # split it is asked for holds.
  sized = dataclasses.replace(info, split_sizes={**info.split_sizes, split: num})
  arrays = sources.get(info.source).arrays(sized, split)
  counts = arrays['num_objects']
  return {'image': arrays['image'], **_padded(
      [arrays['boxes'][i, :n] for i, n in enumerate(counts)],
      [arrays['classes'][i, :n] for i, n in enumerate(counts)],
      [arrays['difficult'][i, :n] for i, n in enumerate(counts)], info.max_boxes, info.name)}


def _held_split(info: DatasetInfo, split: str) -> dict[str, np.ndarray]:
  needed = info.split_sizes[split]
  if split != 'train':
    return _held(info, split, needed)
  # The first `needed` canvases with a box that is not difficult: the first k canvases do
  # not depend on how many are made, so more are made until enough qualify.
  made = needed
  while True:
    arrays = _held(info, split, made)
    kept = np.flatnonzero(_trainable(arrays))
    if len(kept) >= needed:
      return {k: v[kept[:needed]] for k, v in arrays.items()}
    if len(arrays['valid']) < made:  # a source that holds what it holds makes no more
      raise ValueError(f'{info.name!r} has {len(kept)} training images with a box that is '
                       f'not difficult, not the {needed} its DatasetInfo states.')
    made += math.ceil((needed - len(kept)) * made / max(len(kept), 1))


@functools.lru_cache(maxsize=4)
def _voc_annotations(data_dir: str, splits: tuple[tuple[str, str], ...]) -> list[Any]:
  # Every XML of VOC07+12 trainval is parsed once per process.
  return voc.detection_examples(data_dir, splits)


def _voc_pairs(info: DatasetInfo, split: str, data_dir: str) -> list[Any]:
  if split == 'test':
    return _voc_annotations(data_dir, VOC_TEST)
  trainval = _voc_annotations(data_dir, VOC_TRAIN)
  held = max(0, len(trainval) - info.split_sizes['val'])
  if split == 'val':
    return trainval[held:]
  # Detection/utils/voc.py writes no line for an image without a non-difficult object.
  return [(path, boxes) for path, boxes in trainval[:held] if not boxes.difficult.all()]


def _voc_split(info: DatasetInfo, split: str, data_dir: str) -> dict[str, np.ndarray]:
  pairs = _voc_pairs(info, split, data_dir)
  return {'image': np.asarray([path for path, _ in pairs]), **_padded(
      [b.boxes for _, b in pairs], [b.classes for _, b in pairs],
      [b.difficult for _, b in pairs], info.max_boxes, info.name)}


def examples(info: DatasetInfo, split: str, data_dir: str | None, host: Host,
             file_seed: int | None = None) -> tf.data.Dataset:
  """This host's slice of a split: 'image' uint8 [H, W, C] and padded annotations.

  Args:
    info: a detection dataset.
    split: 'train', 'val' or 'test'.
    data_dir: the folder holding VOCdevkit ('voc').
    host: (process index, process count).
    file_seed: unused (the pipeline shuffles the examples).

  Returns:
    The examples in stored order.
  """
  del file_seed
  index, count = host
  held = sources.get(info.source).arrays is not None
  arrays = _held_split(info, split) if held else _voc_split(info, split, data_dir or '')
  part = np.array_split(np.arange(len(arrays['valid'])), count)[index]
  ds = tf.data.Dataset.from_tensor_slices({k: v[part] for k, v in arrays.items()})
  if held:  # decoded images already
    return ds
  return ds.map(lambda ex: {**ex, 'image': tf.io.decode_jpeg(
      tf.io.read_file(ex['image']), channels=info.image_shape[-1])},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _union(boxes: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
  """(x1, y1, x2, y2) of the union of the valid boxes."""
  big = tf.constant(1e9, tf.float32)
  low = tf.reduce_min(tf.where(valid[:, None], boxes[:, :2], big), axis=0)
  high = tf.reduce_max(tf.where(valid[:, None], boxes[:, 2:], -big), axis=0)
  return tf.concat([low, high], axis=0)


def _coin(seed: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
  # Probability 1/2; the crop and the translation need a box to keep in view.
  return (tf.random.stateless_uniform([], seed) < 0.5) & tf.reduce_any(valid)


def _flip(image, boxes, seed):
  width = tf.cast(tf.shape(image)[1], tf.float32)
  flipped = tf.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], -1)
  return tf.cond(_coin(seed, tf.constant(True)), lambda: (image[:, ::-1], flipped),
                 lambda: (image, boxes))


def _crop(image, boxes, valid, seed):
  union = _union(boxes, valid)
  coin_seed, x_seed, y_seed = tf.unstack(tf.random.split(seed, 3))
  # Only the left and top margins: see the module docstring.
  xmin = tf.maximum(0, tf.cast(union[0] - tf.random.stateless_uniform([], x_seed) * union[0],
                               tf.int32))
  ymin = tf.maximum(0, tf.cast(union[1] - tf.random.stateless_uniform([], y_seed) * union[1],
                               tf.int32))
  shift = tf.cast(tf.stack([xmin, ymin, xmin, ymin]), tf.float32)
  return tf.cond(_coin(coin_seed, valid), lambda: (image[ymin:, xmin:], boxes - shift),
                 lambda: (image, boxes))


def _translate(image, boxes, valid, seed):
  union = _union(boxes, valid)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  coin_seed, x_seed, y_seed = tf.unstack(tf.random.split(seed, 3))
  size = tf.cast(tf.stack([width, height]), tf.float32)
  low, high = -(union[:2] - 1), size - union[2:] - 1
  amount = tf.stack([tf.random.stateless_uniform([], s) for s in (x_seed, y_seed)])
  tx, ty = tf.unstack(tf.cast(tf.round(low + amount * (high - low)), tf.int32))

  def moved():
    # Built only when taken: without a valid box the union spans +-1e9 and so would the
    # padding (graph optimisations do not always prune an unused tf.pad).
    top, left = tf.maximum(-ty, 0), tf.maximum(-tx, 0)
    padded = tf.pad(image, [[tf.maximum(ty, 0), top], [tf.maximum(tx, 0), left], [0, 0]])
    shift = tf.cast(tf.stack([tx, ty, tx, ty]), tf.float32)
    return padded[top:top + height, left:left + width], boxes + shift

  # A union wider than the image leaves no room to move (high < low): no translation.
  room = tf.reduce_all(high >= low)
  return tf.cond(_coin(coin_seed, valid) & room, moved, lambda: (image, boxes))


def letterbox(image: tf.Tensor, boxes: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
  """The reference's Resize: scale into size x size keeping the aspect ratio, grey padding.

  Args:
    image: float [H, W, C] in [0, 1].
    boxes: [M, 4] (x1, y1, x2, y2) in the image's pixels.
    size: the square output side.

  Returns:
    ([size, size, C] image, boxes in its pixels).
  """
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  ratio = tf.minimum(size / shape[1], size / shape[0])
  new_h = tf.cast(ratio * shape[0], tf.int32)
  new_w = tf.cast(ratio * shape[1], tf.int32)
  resized = tf.image.resize(image, tf.stack([new_h, new_w]), method='bilinear')
  dh, dw = (size - new_h) // 2, (size - new_w) // 2
  canvas = tf.pad(resized - LETTERBOX_FILL, [[dh, size - new_h - dh], [dw, size - new_w - dw],
                                             [0, 0]]) + LETTERBOX_FILL
  offset = tf.cast(tf.stack([dw, dh, dw, dh]), tf.float32)
  return canvas, boxes * ratio + offset


def preprocess(example: dict[str, tf.Tensor], *, info: DatasetInfo,
               seed: tf.Tensor | None) -> dict[str, tf.Tensor]:
  """One example -> the network's input and its padded annotations (see the module).

  Args:
    example: 'image' uint8 [H, W, C]; 'boxes' [M, 4], 'classes', 'difficult', 'valid' [M].
    info: the dataset (input size, augmentation, normalisation).
    seed: [2] stateless seed of the training transforms; None for evaluation.

  Returns:
    'image', 'boxes' (input pixels), 'classes', 'valid'; evaluation adds 'gt_boxes'
    (original pixels), 'difficult' and 'hw'.
  """
  size = info.image_shape[0]
  image = tf.cast(example['image'], tf.float32) / info.pixel_max
  boxes, valid = example['boxes'], example['valid']
  out = {}
  if seed is not None:
    # Difficult boxes are not trained on (the reference's annotation files drop them).
    valid = valid & ~example['difficult']
    flip_seed, crop_seed, move_seed = tf.unstack(tf.random.split(seed, 3))
    if info.augmentation == 'box_crop_flip':
      image, boxes = _flip(image, boxes, flip_seed)
    image, boxes = _crop(image, boxes, valid, crop_seed)
    image, boxes = _translate(image, boxes, valid, move_seed)
  else:
    out = {'gt_boxes': boxes, 'difficult': example['difficult'],
           'hw': tf.shape(image)[:2]}
  image, boxes = letterbox(image, boxes, size)
  image = transforms.normalize(image, info.mean, info.std)
  return {'image': tf.ensure_shape(image, (size, size, info.image_shape[-1])),
          'boxes': tf.where(valid[:, None], boxes, 0.0), 'classes': example['classes'],
          'valid': valid, **out}


_PIPELINE = pipeline.JointPipeline(examples, preprocess)
# train_batches(info, *, batch_size, epoch, seed, data_dir, start_step=0) and
# eval_batches(info, split, *, batch_size, data_dir): see `pipeline.JointPipeline`.
train_batches = _PIPELINE.train_batches
eval_batches = _PIPELINE.eval_batches


def check_available(info: DatasetInfo, data_dir: str | None) -> None:
  """Raises unless VOC's files are there, as many images as `info` says.

  Args:
    info: a detection dataset of the 'voc' source (whose check this is).
    data_dir: the folder holding VOCdevkit.

  Raises:
    DatasetNotFoundError: a folder, list or file is missing, or the lists hold another
      number of images than the splits need.
  """
  sizes, data_dir = info.split_sizes, data_dir or ''
  trainval = _voc_annotations(data_dir, VOC_TRAIN)
  skipped = max(0, len(trainval) - sizes['val']) - len(_voc_pairs(info, 'train', data_dir))
  splits = "'train' + 'val'" + (f' + {skipped:,} images whose objects are all difficult'
                                if skipped else '')
  voc.require_counts(info.name, data_dir, [
      ('VOC2007 trainval + VOC2012 trainval', len(trainval),
       sizes['train'] + sizes['val'] + skipped, splits),
      ('VOC2007 test', len(_voc_annotations(data_dir, VOC_TEST)), sizes['test'], "'test'")])
