"""tf.data pipelines: one training epoch at a time, and exact evaluation.

tfds sets and the arrays a source holds in memory (the offline sets) enter the same
pipeline; only the first stage differs (`tfds.load` of this host's slice vs
`from_tensor_slices` of it).

Training (`train_batches`): the train split -> shuffle (seeded by run seed and epoch)
-> first `steps * batch` examples -> skip the first `start_step` batches -> this host's
part of every global batch -> augment each example with a stateless seed derived from
its position in the epoch -> normalise -> batch (remainder dropped). Everything random is
a function of (seed, epoch), so a run killed in the middle of an epoch resumes at
`start_step` on exactly the batches it would have seen, and the global batches are the
same on any number of hosts (a run on 2 processes sees the batches of 1 process on 2
devices). ImageNet, too large to shuffle whole, is the exception: each host shuffles
and reads its own slice (`tfds.split_for_jax_process`), seeded by the process index too.

Evaluation (`eval_batches`): this host's slice, in order, each example with mask 1.0,
then zero examples with mask 0.0 up to a whole number of batches that is the same on
every host. Summing metric * mask over batches counts every example exactly once.

Hosts: with P processes each yields batches of batch_size // P examples; the global
batch is the concatenation over hosts in process order. Evaluation reads
`tfds.split_for_jax_process` of a split on each host (the offline sets are cut the same
way).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lth_jax.data import sources, transforms
from lth_jax.errors import DatasetNotFoundError, setting
from lth_jax.data.registry import SPLITS, DatasetInfo, get_info, steps_per_epoch

# The input pipeline runs on the host CPU; TF must not claim accelerator memory that
# JAX needs (as in flax/examples/imagenet).
try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:
  # TF was used (and its devices initialised) before this import; hiding GPUs is then
  # the caller's job, and failing the import would not give the memory back.
  logging.getLogger(__name__).warning(
      'TensorFlow devices were initialised before lth_jax.data was imported; call '
      'tf.config.set_visible_devices([], "GPU") first so TF leaves GPU memory to JAX.')

Batch = dict[str, np.ndarray]
Host = tuple[int, int]  # (process index, process count)


def train_batches(name: str | DatasetInfo, *, batch_size: int, epoch: int, seed: int,
                  data_dir: str | None = None, augment: bool = True,
                  normalize: bool = True, image_size: int | None = None,
                  start_step: int = 0) -> Iterator[Batch]:
  """Yields one epoch of shuffled training batches for this host.

  Args:
    name: dataset name (see `lth_jax.data.DATASETS`), or its `DatasetInfo`.
    batch_size: global batch size; must be divisible by jax.process_count().
    epoch: epoch number; with `seed` it fixes order and augmentation.
    seed: non-negative run seed.
    data_dir: tfds data directory (None: TFDS_DATA_DIR or ~/tensorflow_datasets).
    augment: apply the dataset's training augmentation (see `DatasetInfo`);
      False gives plain images (ImageNet: the evaluation resize and centre crop).
    normalize: subtract the mean and divide by the std; False keeps [0, 1] pixels.
    image_size: output side length (None: the dataset's native size; see
      `lth_jax.data` for what it does per dataset).
    start_step: number of batches of this epoch to skip (resuming a killed run).

  Returns:
    Iterator over {'image': float32 [B/P, H, W, C], 'label': int32 [B/P]}, yielding
    `steps_per_epoch(name, batch_size) - start_step` batches (fewer only if the data on
    disk has fewer examples than the registry states, as under tfds mock data).
  """
  info = get_info(name)
  preprocess = functools.partial(
      _preprocess, info=info, train=augment, normalize=normalize, image_size=image_size)
  return epoch_batches(info, _examples, preprocess, batch_size=batch_size, epoch=epoch,
                       seed=seed, data_dir=data_dir, start_step=start_step)


def eval_batches(name: str | DatasetInfo, split: str, *, batch_size: int, data_dir: str | None = None,
                 normalize: bool = True, image_size: int | None = None
                 ) -> Iterator[Batch]:
  """Yields every example of a split exactly once, in padded batches, for this host.

  Args:
    name: dataset name, or its `DatasetInfo`.
    split: 'val' or 'test'; 'train' reads the train split the same way (in stored
      order, no augmentation), e.g. for kNN evaluation of learnt features.
    batch_size: global batch size; must be divisible by jax.process_count().
    data_dir: tfds data directory (None: TFDS_DATA_DIR or ~/tensorflow_datasets).
    normalize: as in `train_batches`.
    image_size: as in `train_batches`.

  Returns:
    Iterator over {'image': float32 [B/P, H, W, C], 'label': int32 [B/P],
    'mask': float32 [B/P]} (mask 1.0 for real examples, 0.0 for padding); every host
    yields the same number of batches.
  """
  info = get_info(name)
  preprocess = functools.partial(
      _preprocess, info=info, train=False, normalize=normalize, image_size=image_size)
  return split_batches(info, split, _examples, preprocess, batch_size=batch_size,
                       data_dir=data_dir)


def read_split(name: str | DatasetInfo, split: str, data_dir: str | None = None
               ) -> dict[str, np.ndarray]:
  """A whole split in stored order as numpy arrays (for datasets that fit in memory).

  Args:
    name: dataset name or its `DatasetInfo`.
    split: 'train', 'val' or 'test'.
    data_dir: tfds data directory.

  Returns:
    {'image': uint8 [N, H, W, C], 'label': [N]}.
  """
  info = get_info(name)
  ds = _examples(info, split, data_dir, (0, 1)).batch(info.split_sizes[split] + 1)
  return next(ds.as_numpy_iterator())


def check_available(name: str | DatasetInfo, data_dir: str | None = None) -> None:
  """Raises unless every split of a dataset can be read (nothing is read yet).

  Args:
    name: dataset name, or its `DatasetInfo`.
    data_dir: tfds data directory (None: TFDS_DATA_DIR or ~/tensorflow_datasets).

  Raises:
    DatasetNotFoundError: the dataset is not prepared there; the message says how to.
  """
  info = get_info(name)
  for split in SPLITS:
    _examples(info, split, data_dir, (0, 1))


# examples(info, split, data_dir, host, file_seed=None) -> this host's examples of a split
# (all of it for host (0, 1)), in stored order; a file_seed shuffles the files.
Examples = Callable[..., tf.data.Dataset]
# preprocess(example, seed) -> the batch element (seed None: evaluation, no augmentation).
Preprocess = Callable[..., dict[str, tf.Tensor]]


def epoch_batches(info: DatasetInfo, examples: Examples, preprocess: Preprocess, *,
                  batch_size: int, epoch: int, seed: int, data_dir: str | None,
                  start_step: int = 0, host: Host | None = None) -> Iterator[Batch]:
  """One epoch of this host's training batches of any task's examples.

  The shuffle, the resume point, the hosts' parts of each global batch and the
  per-example stateless seeds are the same for every task (see the module docstring);
  `examples` and `preprocess` are what a task reads and how it augments.

  Args:
    info: the dataset.
    examples: its source (see `Examples`).
    preprocess: (example, seed) -> the element of a batch.
    batch_size: global batch size; must be divisible by jax.process_count().
    epoch: epoch number; with `seed` it fixes order and augmentation.
    seed: non-negative run seed.
    data_dir: where the data is.
    start_step: number of batches of this epoch to skip (resuming a killed run).
    host: (process index, process count); this process by default.

  Returns:
    Iterator over batches of `preprocess`'s elements, `steps_per_epoch - start_step` of
    them.
  """
  host = host or (jax.process_index(), jax.process_count())
  per_host = _per_host_batch(batch_size, host)
  steps = steps_per_epoch(info, batch_size)
  if not 0 <= start_step <= steps:
    raise ValueError(f'start_step={start_step} must be in [0, {steps}] (steps per '
                     f'epoch of {info.name!r} at batch size {batch_size}).')
  if seed < 0 or epoch < 0:
    raise ValueError(f'seed ({seed}) and epoch ({epoch}) must be non-negative.')
  # A split shuffled whole is read whole by every host, each keeping its part of every
  # global batch; a larger one (ImageNet) is sharded by host first.
  whole = info.shuffle_buffer >= info.split_sizes['train']
  index, count = host
  file_seed, shuffle_seed, augment_seed = (
      int(s) for s in np.random.SeedSequence([seed, epoch, 0 if whole else index])
      .generate_state(3))
  if whole:
    ds = examples(info, 'train', data_dir, (0, 1), file_seed=file_seed)
    ds = ds.shuffle(info.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.take(steps * batch_size).enumerate().skip(start_step * batch_size)
    if count > 1:
      ds = ds.filter(lambda i, ex: (i % batch_size) // per_host == index)
  else:
    # Every host holds at least steps * per_host examples (steps * B <= N), so all
    # hosts yield the same number of batches.
    ds = examples(info, 'train', data_dir, host, file_seed=file_seed)
    ds = ds.shuffle(info.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.take(steps * per_host).enumerate().skip(start_step * per_host)
  ds = ds.map(
      lambda i, ex: preprocess(ex, seed=tf.stack([tf.constant(augment_seed, tf.int64), i])),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(per_host, drop_remainder=True).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def split_batches(info: DatasetInfo, split: str, examples: Examples, preprocess: Preprocess,
                  *, batch_size: int, data_dir: str | None,
                  host: Host | None = None) -> Iterator[Batch]:
  """Every example of a split exactly once, in padded batches, for this host.

  Args:
    info: the dataset.
    split: 'train', 'val' or 'test'.
    examples: its source (see `Examples`).
    preprocess: (example, seed=None) -> the element of a batch.
    batch_size: global batch size; must be divisible by jax.process_count().
    data_dir: where the data is.
    host: (process index, process count); this process by default.

  Returns:
    Iterator over batches of `preprocess`'s elements plus 'mask' (1.0 real, 0.0 the
    padding of the last batches); every host yields the same number of batches.
  """
  if split not in SPLITS:
    raise ValueError(f'split={split!r}: choose one of {SPLITS}.')
  host = host or (jax.process_index(), jax.process_count())
  per_host = _per_host_batch(batch_size, host)
  ds = examples(info, split, data_dir, host)
  local = _cardinality(ds)
  # Host slices differ by at most one example; all hosts pad to the largest one.
  largest_slice = -(-_cardinality(examples(info, split, data_dir, (0, 1))) // host[1])
  num_batches = -(-largest_slice // per_host)
  ds = ds.map(lambda ex: {**preprocess(ex, seed=None), 'mask': tf.constant(1.0)},
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  padding = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
  ds = ds.concatenate(
      tf.data.Dataset.from_tensors(padding).repeat(num_batches * per_host - local))
  return ds.batch(per_host).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


class JointPipeline:
  """A task's training and evaluation batches from its examples and joint transforms.

  Segmentation and detection read their own examples (labels per pixel, padded boxes)
  and transform images and labels together; shuffling, resuming, hosts, seeds and exact
  padded evaluation are `epoch_batches` and `split_batches`.

  Args:
    examples: the task's source (see `Examples`).
    preprocess: (example, *, info, seed) -> the element of a batch (seed None:
      evaluation).
  """

  def __init__(self, examples: Examples, preprocess: Callable[..., dict[str, tf.Tensor]]):
    self.examples = examples
    self.preprocess = preprocess

  def train_batches(self, info: DatasetInfo, *, batch_size: int, epoch: int, seed: int,
                    data_dir: str | None, start_step: int = 0) -> Iterator[Batch]:
    """One epoch of this host's augmented training batches (see `epoch_batches`)."""
    return epoch_batches(info, self.examples, functools.partial(self.preprocess, info=info),
                         batch_size=batch_size, epoch=epoch, seed=seed, data_dir=data_dir,
                         start_step=start_step)

  def eval_batches(self, info: DatasetInfo, split: str, *, batch_size: int,
                   data_dir: str | None) -> Iterator[Batch]:
    """Every example of a split once, in padded batches with 'mask' (see `split_batches`)."""
    return split_batches(info, split, self.examples,
                         functools.partial(self.preprocess, info=info), batch_size=batch_size,
                         data_dir=data_dir)


def _per_host_batch(batch_size: int, host: Host) -> int:
  count = host[1]
  if batch_size <= 0 or batch_size % count:
    raise ValueError(f'batch_size={batch_size} must be a positive multiple of the '
                     f'number of processes ({count}).')
  return batch_size // count


def _cardinality(ds: tf.data.Dataset) -> int:
  n = int(ds.cardinality())
  if n < 0:
    raise RuntimeError('the number of examples of an evaluation split is unknown; '
                       'exact evaluation needs it (tfds normally records it).')
  return n


def _examples(info: DatasetInfo, split: str, data_dir: str | None, host: Host,
              file_seed: int | None = None) -> tf.data.Dataset:
  """This host's slice of a split: a dataset of {'image', 'label'} in stored order.

  'image' is uint8 [H, W, C], or the encoded JPEG for 'inception' augmentation (decoding
  is part of its crop). `file_seed` shuffles the order of tfds files.
  """
  index, count = host
  read = sources.get(info.source).arrays
  if read is not None:  # held in memory (the offline sets)
    whole = read(info, split)
    images, labels = whole['image'], whole['label']
    # The same contiguous partition as tfds.even_splits: the first len % count hosts
    # get one extra example.
    part = np.array_split(np.arange(len(labels)), count)[index]
    return tf.data.Dataset.from_tensor_slices({'image': images[part], 'label': labels[part]})
  decoders = ({'image': tfds.decode.SkipDecoding()}
              if info.augmentation == 'inception' else None)
  try:
    return tfds.load(
        info.name,
        split=tfds.split_for_jax_process(
            info.tfds_splits[split], process_index=index, process_count=count),
        data_dir=data_dir, download=False, shuffle_files=file_seed is not None,
        read_config=tfds.ReadConfig(shuffle_seed=file_seed, try_autocache=False),
        decoders=decoders)
  except AssertionError as e:
    if 'could not find data' not in str(e):
      raise
    raise DatasetNotFoundError(_not_prepared_message(info, data_dir)) from e


def _not_prepared_message(info: DatasetInfo, data_dir: str | None) -> str:
  where = data_dir or '$TFDS_DATA_DIR (default ~/tensorflow_datasets)'
  if info.name == 'imagenet2012':
    how = ('download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from '
           'image-net.org (tfds cannot), put them in DIR/downloads/manual/ and run '
           '`tfds build imagenet2012 --data_dir=DIR`')
  else:
    how = (f'run `tfds build {info.name} --data_dir=DIR` on a machine with '
           'internet and copy DIR here')
  return (f'Dataset {info.name!r} is not prepared in {where}, and lth_jax never '
          f'downloads at run time. To prepare it, {how}; then pass data_dir=DIR '
          f'({setting("data.data_dir=DIR")}).')


def _preprocess(example: dict[str, tf.Tensor], *, info: DatasetInfo, train: bool,
                normalize: bool, image_size: int | None, seed: tf.Tensor | None
                ) -> dict[str, tf.Tensor]:
  """One example -> {'image': float32 [S, S, C], 'label': int32}."""
  size = image_size or info.image_shape[0]
  if info.augmentation == 'inception':
    image = (transforms.inception_crop(example['image'], seed, size) if train
             else transforms.resize_center_crop(example['image'], size))
  else:
    image = tf.cast(example['image'], tf.float32) / info.pixel_max
    if train and info.augmentation != 'none':
      image = transforms.random_crop_flip(image, seed, info.crop_padding,
                                   flip=info.augmentation == 'crop_flip')
    if size != info.image_shape[0]:
      image = transforms.resize(image, size)
  if normalize:
    image = transforms.normalize(image, info.mean, info.std)
  image = tf.ensure_shape(image, (size, size, info.image_shape[-1]))
  return {'image': image, 'label': tf.cast(example['label'], tf.int32)}
