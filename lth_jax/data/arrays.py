"""Classification splits held in memory, read and evaluated without TensorFlow.

The offline sets (any source's sets held in memory, `Source.arrays`) are numpy arrays
already; evaluating them at their own size needs no decoding, augmentation or resizing,
so their evaluation batches are cut here with numpy, bit for bit the batches of the
tf.data pipeline (`lth_jax.data.pipeline.eval_batches`: the same host slices, the same
float32 arithmetic, the same zero padding). With the device-resident training pipeline
(`lth_jax.data.on_device`) an experiment on a shipped set then runs where tensorflow is
not installed (a bare accelerator machine). tfds sets are still read through tf.data,
imported when first used.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator

import jax
import numpy as np

from lth_jax.data import sources
from lth_jax.errors import setting
from lth_jax.data.registry import CLASS_LABELS, SPLITS, DatasetInfo, get_info

Batch = dict[str, np.ndarray]
Host = tuple[int, int]  # (process index, process count)


def tf_available() -> bool:
  """Whether tensorflow and tensorflow-datasets are installed (nothing is imported)."""
  try:
    return all(importlib.util.find_spec(m) for m in ('tensorflow', 'tensorflow_datasets'))
  except ImportError:  # an import blocker, or a broken install
    return False


def tf_pipeline():
  """The tf.data pipeline module, imported on first use.

  Returns:
    `lth_jax.data.pipeline`.

  Raises:
    ImportError: tensorflow or tensorflow-datasets is not installed; the message says
      what needs them and what does not.
  """
  try:
    return importlib.import_module('lth_jax.data.pipeline')
  except ImportError as e:
    if e.name is None or e.name.split('.')[0] not in ('tensorflow', 'tensorflow_datasets'):
      raise
    raise ImportError(
        f'{e.name} is not installed. tfds sets, VOC, segmentation and detection data and '
        f'the host pipeline ({setting("data.pipeline=host")}) read through tf.data: pip '
        'install tensorflow tensorflow-datasets. The shipped classification sets train '
        f'without them with {setting("data.pipeline=device")}.', name=e.name) from e


def in_memory(info: DatasetInfo, image_size: int | None = None) -> bool:
  """Whether `eval_batches` evaluates `info` here, without tf.data.

  Args:
    info: the dataset.
    image_size: the requested side (None: the dataset's own).

  Returns:
    True at its own size where its source holds it in memory with one class per example
    (the shipped classification sets, whatever task reads them).
  """
  source = sources.get(info.source)
  return (source.arrays is not None and CLASS_LABELS in source.labels
          and image_size in (None, info.image_shape[0]))


def read_split(name: str | DatasetInfo, split: str, data_dir: str | None = None
               ) -> dict[str, np.ndarray]:
  """A whole classification split in stored order as numpy arrays.

  Args:
    name: dataset name or its `DatasetInfo`.
    split: 'train', 'val' or 'test'.
    data_dir: tfds data directory (unused for sets held in memory).

  Returns:
    {'image': uint8 [N, H, W, C], 'label': [N]}.
  """
  info = get_info(name)
  read = sources.get(info.source).arrays
  if read is not None:
    return read(info, split)
  return tf_pipeline().read_split(info, split, data_dir)


def eval_batches(info: DatasetInfo, split: str, *, batch_size: int, normalize: bool = True,
                 host: Host | None = None) -> Iterator[Batch]:
  """Every example of an in-memory split once, in padded batches, for this host.

  Args:
    info: a dataset for which `in_memory(info)` holds.
    split: 'train', 'val' or 'test' (train unaugmented, in stored order).
    batch_size: global batch size; must be divisible by the number of processes.
    normalize: subtract the mean and divide by the std; False keeps [0, 1] pixels.
    host: (process index, process count); this process by default.

  Returns:
    Iterator over {'image': float32 [B/P, H, W, C], 'label': int32 [B/P],
    'mask': float32 [B/P]} (mask 0.0 on the padding); every host yields the same
    number of batches.

  Raises:
    ValueError: an unknown split, a dataset that is not in memory, or a batch that does
      not split over the processes.
  """
  if split not in SPLITS:
    raise ValueError(f'split={split!r}: choose one of {SPLITS}.')
  if not in_memory(info):
    raise ValueError(f'{info.name!r} is not a shipped classification set; read it with '
                     'lth_jax.data.eval_batches.')
  index, count = host or (jax.process_index(), jax.process_count())
  if batch_size <= 0 or batch_size % count:
    raise ValueError(f'batch_size={batch_size} must be a positive multiple of the '
                     f'number of processes ({count}).')
  return _padded_batches(info, split, batch_size // count, index, count, normalize)


def _padded_batches(info: DatasetInfo, split: str, per_host: int, index: int, count: int,
                    normalize: bool) -> Iterator[Batch]:
  # A generator apart from `eval_batches`, whose checks then run when it is called.
  whole = read_split(info, split)
  images, labels = whole['image'], whole['label']
  # The host slices of `tfds.even_splits`, as the tf.data pipeline cuts them.
  part = np.array_split(np.arange(len(labels)), count)[index]
  num_batches = -(-(-(-len(labels) // count)) // per_host)
  # float32 throughout, in the tf.data pipeline's order of operations: equal bits.
  pixels = images[part].astype(np.float32) / np.float32(info.pixel_max)
  if normalize:
    pixels = (pixels - np.asarray(info.mean, np.float32)) / np.asarray(info.std, np.float32)
  padding = num_batches * per_host - len(part)
  image = np.concatenate([pixels, np.zeros((padding, *pixels.shape[1:]), np.float32)])
  label = np.concatenate([labels[part].astype(np.int32), np.zeros(padding, np.int32)])
  mask = np.concatenate([np.ones(len(part), np.float32), np.zeros(padding, np.float32)])
  for i in range(0, num_batches * per_host, per_host):
    yield {'image': image[i:i + per_host], 'label': label[i:i + per_host],
           'mask': mask[i:i + per_host]}
