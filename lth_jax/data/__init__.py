"""Datasets: tensorflow-datasets sets and small offline sets behind one API.

    info = get_info('cifar10')          # classes, (H, W, C), split sizes, mean/std, ...
    n = steps_per_epoch('cifar10', 128)  # 45000 // 128
    for batch in train_batches('cifar10', batch_size=128, epoch=e, seed=0):
      ...                                # {'image': f32 [B/P,H,W,C], 'label': i32 [B/P]}
    for batch in eval_batches('cifar10', 'test', batch_size=500):
      ...                                # + 'mask': f32 [B/P], 1 real / 0 padding

`train_batches` yields ONE epoch, shuffled and augmented as a pure function of (seed,
epoch, process index); `start_step=k` resumes it at batch k. `eval_batches` yields every
example of 'val' or 'test' (or 'train', unaugmented) once, the tail padded with mask 0.
With P processes each host yields its own batch_size // P examples. `normalize=False`
keeps [0, 1] pixels and `augment=False` turns augmentation off (for pipelines that augment on the accelerator).
`image_size=S` resizes every image to S x S (bilinear, antialiased, after augmentation);
for ImageNet it is the crop size (train: random-resized crop to S; eval: resize the
short side to S * 256 / 224, centre-crop S). Channel counts are never changed: the CIFAR
stem ResNet takes any channel count and any size down to 8 x 8 (global pooling).

Datasets (splits: train / val / test):
  cifar10, cifar100  tfds, 45,000 / 5,000 / 10,000; pad-4 random crop + h-flip
  svhn_cropped       tfds, 68,257 / 5,000 / 26,032; no augmentation (as the reference)
  fashion_mnist      tfds, 55,000 / 5,000 / 10,000, 28x28x1; no augmentation (ditto)
  imagenet2012       tfds, 1,281,167 / 50,000 / 50,000 (val and test are both the
                     official validation set); random-resized crop 224 + h-flip
  animal_mnist       offline, 6,807 / 968 / 1,941, 28x28x1 (Animal-MNIST without its
                     284 exact duplicates); pad-2 random crop + h-flip
  mnist5k            offline, 3,500 / 500 / 1,000, 28x28x1; pad-2 random crop
  digits             offline, 1,266 / 176 / 355, 8x8x1 (scikit-learn); pad-1 random crop
  animal_mnist_a, animal_mnist_b_few  offline, Animal-MNIST's classes 0-4 / few images
                     of classes 5-9 (the paper in miniature's upstream and downstream)
  animal_mnist_b     offline, all of Animal-MNIST's classes 5-9, 3,489 / 497 / 996
Segmentation (`segmentation.train_batches` / `eval_batches`, labels per pixel, 255 ignored):
  digit_canvas_seg   generated from MNIST-5k, 2,000 / 300 / 500 canvases of 56x56x1, 11
                     classes (background, digits); random scale 0.75-1.25, pad, crop
  animal_canvas_seg_few  canvases of Animal-MNIST's classes 5-9 (silhouettes), 200 / 300
                     / 500, 6 classes; the same augmentation
  voc2012_seg        a VOCdevkit folder (data_dir), 1,318 / 146 / 1,449 (VOC val is
                     'test'), 21 classes; random scale 0.5-2, 513 crop, h-flip
Detection (`detection.train_batches` / `eval_batches`, boxes padded to max_boxes):
  digit_canvas_det   the same canvases' digit boxes, 10 classes; crop and shift keeping
                     the boxes, letterbox 56
  animal_canvas_det_few  the Animal-MNIST canvases' boxes, 100 / 100 / 500, 5 classes
  animal_a_canvas_det_few  boxes of canvases of Animal-MNIST's classes 0-4 (the upstream
                     classes; each split's own silhouettes), patches 24-40 px, 100 / 100 / 500
  voc0712_det        VOCdevkit (data_dir): VOC07+12 trainval 16,051 / 500, VOC07 test
                     4,952; 20 classes; flip, crop, shift, letterbox 416

tfds sets are read from `data_dir` and never downloaded (a missing one raises
FileNotFoundError saying how to prepare it); offline sets ship in lth_jax/data/offline
(origin, licences and split rules in offline/ORIGIN.md).

TensorFlow is imported only where a tf.data pipeline runs: `train_batches`, the tfds sets,
VOC, and the segmentation and detection pipelines (`data.segmentation`, `data.detection`,
loaded on first use). The shipped classification sets (any source's sets held in memory
with one class per example, whatever task reads them) are evaluated with numpy (`arrays`)
and trained from the devices (`on_device`), so an experiment on them runs where
tensorflow is not installed. Importing the tf.data modules hides GPUs from TensorFlow.

`register(info)` adds a dataset; `sources.register(source)` a source (where datasets'
examples come from: whether they ship, how they are checked and read).

Modules: `registry` (what each dataset is), `sources` (the registry of sources: tfds,
offline, canvases, voc), `arrays` (in-memory splits, evaluated without
TensorFlow), `on_device` (training sets kept on the accelerators), `pipeline` (tf.data
training and exact evaluation), `transforms` (per-example tf.data transforms with
stateless seeds), `offline` (the shipped arrays and the sets derived from them),
`canvases` (digit canvases for offline segmentation and detection), `voc` (Pascal VOC
files), `segmentation` and `detection` (joint image + label / box pipelines).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

from lth_jax.data import arrays, canvases, offline, sources
from lth_jax.data.arrays import read_split
from lth_jax.data.registry import (BOX_LABELS, CLASS_LABELS, DATASETS, LABELS, PIXEL_LABELS,
                                   SPLITS, DatasetInfo, get_info, register, steps_per_epoch)

# Submodules that import tensorflow, loaded when first asked for (PEP 562).
_TF_MODULES = ('pipeline', 'transforms', 'segmentation', 'detection')
# The tf.data pipeline of each kind of labels, which also checks the files it reads.
_READERS = {CLASS_LABELS: 'pipeline', PIXEL_LABELS: 'segmentation', BOX_LABELS: 'detection'}


def __getattr__(name: str) -> Any:
  if name in _TF_MODULES:
    if name == 'pipeline':
      return arrays.tf_pipeline()
    arrays.tf_pipeline()  # the ImportError that says what needs TensorFlow
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def train_batches(name: str | DatasetInfo, **kwargs: Any) -> Iterator[dict[str, Any]]:
  """One epoch of this host's training batches from the tf.data pipeline.

  Args:
    name: dataset name, or its `DatasetInfo`.
    **kwargs: see `lth_jax.data.pipeline.train_batches`.

  Returns:
    Iterator over {'image': float32 [B/P, H, W, C], 'label': int32 [B/P]}.
  """
  return arrays.tf_pipeline().train_batches(name, **kwargs)


def eval_batches(name: str | DatasetInfo, split: str, *, batch_size: int,
                 data_dir: str | None = None, normalize: bool = True,
                 image_size: int | None = None) -> Iterator[dict[str, Any]]:
  """Every example of a split exactly once, in padded batches, for this host.

  The shipped sets at their own size are cut with numpy (`arrays.eval_batches`, the
  same bits as tf.data's); everything else goes through `pipeline.eval_batches`.

  Args:
    name: dataset name, or its `DatasetInfo`.
    split: 'val' or 'test'; 'train' reads the train split unaugmented, in stored order.
    batch_size: global batch size; must be divisible by jax.process_count().
    data_dir: tfds data directory (None: TFDS_DATA_DIR or ~/tensorflow_datasets).
    normalize: subtract the mean and divide by the std; False keeps [0, 1] pixels.
    image_size: output side length (None: the dataset's own).

  Returns:
    Iterator over {'image': float32 [B/P, H, W, C], 'label': int32 [B/P],
    'mask': float32 [B/P]} (mask 0.0 on the padding).
  """
  info = get_info(name)
  if arrays.in_memory(info, image_size):
    return arrays.eval_batches(info, split, batch_size=batch_size, normalize=normalize)
  return arrays.tf_pipeline().eval_batches(info, split, batch_size=batch_size,
                                           data_dir=data_dir, normalize=normalize,
                                           image_size=image_size)


def check_available(name: str | DatasetInfo, data_dir: str | None = None,
                    labels: str = CLASS_LABELS) -> None:
  """Raises unless every split of a dataset can be read (nothing is read yet).

  Args:
    name: dataset name, or its `DatasetInfo`.
    data_dir: where the data is (tfds data_dir; the folder holding VOCdevkit).
    labels: the labels its task reads (`lth_jax.tasks.Task.labels`): which of a VOC
      folder's files are needed.

  Raises:
    DatasetNotFoundError: the dataset is not there; the message says how to get it.
    FileNotFoundError: a shipped file is missing (a broken install).
    ValueError: its source holds no such labels.
  """
  info = get_info(name)
  source = sources.get(info.source)
  if labels not in source.labels:
    raise ValueError(f'{info.name!r} ({info.source} source) holds {"/".join(source.labels)} '
                     f'labels, not {labels}.')
  source.check(info, data_dir, labels)


def _check_files(info: DatasetInfo, data_dir: str | None, labels: str) -> None:
  """The check of a source read from files: the tf.data pipeline reading them checks."""
  __getattr__(_READERS[labels]).check_available(info, data_dir)


sources.register(sources.Source('tfds', shipped=False, labels=(CLASS_LABELS,),
                                check=_check_files))
sources.register(sources.Source('offline', shipped=True, labels=(CLASS_LABELS,),
                                check=offline.check, arrays=offline.arrays))
sources.register(sources.Source('canvases', shipped=True, labels=(PIXEL_LABELS, BOX_LABELS),
                                check=canvases.check, arrays=canvases.arrays))
sources.register(sources.Source('voc', shipped=False, labels=(PIXEL_LABELS, BOX_LABELS),
                                check=_check_files))


__all__ = [
    'BOX_LABELS', 'CLASS_LABELS', 'DATASETS', 'LABELS', 'PIXEL_LABELS', 'SPLITS',
    'DatasetInfo', 'check_available', 'eval_batches', 'get_info', 'read_split', 'register',
    'steps_per_epoch', 'train_batches',
]
