"""Training data resident on the devices: uint8 images placed once, batches made by jit.

For datasets that fit in device memory (the offline sets, CIFAR-10/100, SVHN,
Fashion-MNIST) the host pipeline's work per step (decode, crop, flip, normalise, copy to
the device) is the bottleneck on accelerators. Here the train split is put on every
device once as uint8, and each global batch is gathered, cropped, flipped and
normalised by one jitted function whose output is already sharded over the mesh's
'data' axis.

Randomness is stateless, from (run seed, epoch, step): the epoch's order is a
permutation drawn from (seed, epoch), and the example at position p of the epoch gets
its crop offsets and flip from (seed, epoch, p), so a run resumed at any step sees the
batches it would have seen and every host computes the same global batch. The
distribution is the host pipeline's (`lth_jax.data.transforms.random_crop_flip`: zero
padding, a uniform crop offset per axis, a flip with probability 1/2); the random
streams differ (JAX's, not TF's), so the two pipelines give different, equally
distributed batches.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lth_jax.data import arrays, sources
from lth_jax.data.registry import CLASS_LABELS, DatasetInfo, get_info, steps_per_epoch
from lth_jax.errors import setting
from lth_jax.runtime import sharding

# A train split larger than this stays on the host pipeline (bytes of uint8 pixels).
MAX_BYTES = 4 << 30
_AUGMENTATIONS = ('none', 'crop', 'crop_flip')


def fits(info: DatasetInfo) -> bool:
  """Whether `info`'s train split can live on the devices.

  Args:
    info: the dataset.

  Returns:
    True for uint8 image sets whose source holds one class per example, with crop/flip
    (or no) augmentation, whose train split is at most `MAX_BYTES`. Whether a task
    trains on such batches is the task's to say (`lth_jax.tasks.Task.labels`).
  """
  size = info.split_sizes['train'] * int(np.prod(info.image_shape))
  return (CLASS_LABELS in sources.get(info.source).labels
          and info.augmentation in _AUGMENTATIONS and size <= MAX_BYTES)


def augment_params(key: jax.Array, positions: jax.Array, padding: int, flip: bool
                   ) -> tuple[jax.Array, jax.Array]:
  """Each example's crop offsets and flip, from its position in the epoch.

  Args:
    key: the epoch's key (`epoch_key`).
    positions: int [B] positions of the batch's examples in the epoch.
    padding: the crop's zero padding (offsets are uniform in [0, 2 * padding]).
    flip: whether flips are drawn (False: never flipped).

  Returns:
    (offsets int32 [B, 2] as (row, column), flips bool [B]).
  """
  def one(position):
    crop_key, flip_key = jax.random.split(jax.random.fold_in(key, position))
    offsets = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1)
    return offsets, jax.random.bernoulli(flip_key) & flip
  return jax.vmap(one)(positions)


def epoch_key(seed: int, epoch: int) -> jax.Array:
  """The key of one epoch of a run: its order and every example's augmentation."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), 0x5EED)


def crop_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array, padding: int
              ) -> jax.Array:
  """Zero-pads by `padding`, crops each image at its offsets and flips it left-right.

  Args:
    images: [B, H, W, C] images.
    offsets: int [B, 2] (row, column) offsets into the padded images.
    flips: bool [B].
    padding: the zero padding on every side.

  Returns:
    [B, H, W, C] augmented images, the dtype of `images`.
  """
  height, width = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def one(image, offset, flip):
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, image.shape[-1]))
    return jnp.where(flip, crop[:, ::-1], crop)
  return jax.vmap(one)(padded, offsets, flips)


class DeviceData:
  """A classification train split on the devices, batched and augmented by one jit."""

  def __init__(self, name: str | DatasetInfo, mesh: Mesh, *, batch_size: int,
               data_dir: str | None = None, augment: bool = True, normalize: bool = True,
               split: tuple[np.ndarray, np.ndarray] | None = None):
    """Reads the train split once and replicates it on every device of `mesh`.

    Args:
      name: the dataset or its `DatasetInfo`; must satisfy `fits`.
      mesh: the device mesh (its 'data' axis splits every batch).
      batch_size: the global batch size.
      data_dir: tfds data directory.
      augment: apply the dataset's crop and flip (False: the images as stored, e.g. the
        raw images that contrastive objectives draw their views from).
      normalize: subtract the mean and divide by the std (False: [0, 1] pixels).
      split: (uint8 images [N, H, W, C], labels [N]) to hold instead of the dataset's
        train split (synthetic data for benchmarks); N must be the train size of `name`.

    Raises:
      ValueError: the dataset cannot live on the devices, the batch does not split over
        the mesh, or the train split is not as large as the dataset says.
    """
    info = get_info(name)
    if not fits(info):
      raise ValueError(f'{info.name!r} cannot be kept on the devices (only classification '
                       f'sets with {"/".join(_AUGMENTATIONS)} augmentation under '
                       f'{MAX_BYTES >> 30} GiB); set {setting("data.pipeline=host")}.')
    if batch_size % mesh.size:
      raise ValueError(f'batch_size={batch_size} must be a multiple of the {mesh.size} '
                       'devices of the mesh.')
    self.info, self.mesh, self.batch_size = info, mesh, batch_size
    self.steps = steps_per_epoch(info, batch_size)
    whole = (arrays.read_split(info, 'train', data_dir) if split is None
             else {'image': split[0], 'label': split[1]})
    if len(whole['label']) != info.split_sizes['train']:
      # A gather past the end would silently repeat the last image.
      raise ValueError(f'{info.name!r} has {len(whole["label"])} training examples, not the '
                       f'{info.split_sizes["train"]} its DatasetInfo states.')
    if whole['image'].dtype != np.uint8:
      raise ValueError(f'{info.name!r} images are {whole["image"].dtype}, not uint8.')
    self.images = sharding.replicate(whole['image'], mesh)
    self.labels = sharding.replicate(whole['label'].astype(np.int32), mesh)
    scale = np.float32(1 / info.pixel_max)
    mean = np.asarray(info.mean if normalize else 0.0, np.float32)
    std = np.asarray(info.std if normalize else 1.0, np.float32)
    padding = info.crop_padding if augment and info.augmentation != 'none' else 0
    flip = augment and info.augmentation == 'crop_flip'
    out = sharding.batch_sharding(mesh)

    @functools.partial(jax.jit, out_shardings=out)
    def make(images, labels, key, order, step):
      positions = step * batch_size + jnp.arange(batch_size)
      index = order[positions]
      offsets, flips = augment_params(key, positions, padding, flip)
      pixels = crop_flip(images[index], offsets, flips, padding)
      image = (pixels.astype(jnp.float32) * scale - mean) / std
      return {'image': image, 'label': labels[index]}

    self._make = make
    num = info.split_sizes['train']
    self._order = jax.jit(lambda key: jax.random.permutation(key, num),
                          out_shardings=sharding.replicated_sharding(mesh))

  def batches(self, epoch: int, seed: int, start_step: int = 0
              ) -> Iterator[dict[str, jax.Array]]:
    """One epoch of global batches from `start_step` on, as sharded device arrays.

    Args:
      epoch: the epoch (0-based).
      seed: the run seed.
      start_step: batches of the epoch to skip (resuming).

    Returns:
      Iterator over {'image': float32 [B, H, W, C], 'label': int32 [B]} global arrays.
    """
    if not 0 <= start_step <= self.steps:
      raise ValueError(f'start_step={start_step} must be in [0, {self.steps}].')
    key = epoch_key(seed, epoch)
    order = self._order(key)
    for step in range(start_step, self.steps):
      yield self._make(self.images, self.labels, key, order, step)

  def __call__(self, epoch: int, seed: int, start_step: int) -> Iterator[Any]:
    """`batches` in the (epoch, seed, start_step) form `make_finetune` takes."""
    return self.batches(epoch, seed, start_step)
