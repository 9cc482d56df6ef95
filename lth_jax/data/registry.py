"""What each dataset is: classes, shapes, splits, normalisation and augmentation.

Static facts only (no tensorflow, no file access), so configs can be validated and
schedules sized before any data is read. `register` adds a dataset (a user's, a test's);
`DATASETS` holds the registered ones.

Splits follow the reference (VITA-Group/CV_LTH_Pre-training, dataset.py): a validation
split is held out of the end of the official train split, and the official test split
is the test split. TFDS stores examples in its own fixed order, so the held-out images
are not the same ones torchvision's order would give; the sizes are. ImageNet has no
labelled test split: the official validation set is 'test', and 'val' is held out of the
end of train (`get_info(..., val_from_train=N)`, the experiments' `data.val_from_train`,
10,000 by default); with N = 0 'val' is the official validation set too, as in the
reference, and model selection then looks at the test set.

Normalisation constants are the reference's own for the four downstream sets (its SVHN
and Fashion-MNIST std values are not the datasets' pixel std; kept for parity, and the
freshly initialised stem conv + BN absorb the scale), torchvision's for ImageNet, and
the train split's pixel mean/std for the offline sets (printed by
scripts/rebuild_offline_data.py, checked by tests/test_data.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from lth_jax.registry import Registry

# Augmentations (see `lth_jax.data.transforms`):
#   'crop_flip'  zero-pad by `crop_padding`, random crop back to size, random h-flip
#   'crop'       the same without the flip (digits are not mirror-symmetric)
#   'none'       the reference trains SVHN and Fashion-MNIST without augmentation
#   'inception'  random-resized crop (area 8-100%, aspect 3/4-4/3) + h-flip; eval resizes
#                the short side to 256/224 of the output size and centre-crops
#   'scale_crop_flip'  segmentation (image and labels jointly, `lth_jax.data.segmentation`):
#                random scale in `scale_range`, pad to the crop (as `seg_train_pad`),
#                random crop of `image_shape`, random h-flip
#   'scale_crop'  the same without the flip (digit canvases)
#   'box_crop_flip'  detection (image and boxes jointly, `lth_jax.data.detection`): h-flip,
#                crop and translation keeping every box, letterbox to `image_shape`
#   'box_crop'   the same without the flip (digit canvases)
AUGMENTATIONS = ('crop_flip', 'crop', 'none', 'inception', 'scale_crop_flip', 'scale_crop',
                 'box_crop_flip', 'box_crop')
# The labels a task reads (`lth_jax.tasks.Task.labels`) and a source holds
# (`lth_jax.data.sources.Source.labels`):
#   'class'   one integer class per example: `train_batches` and `eval_batches` (tf.data),
#             `arrays` (in memory, without TensorFlow), `on_device`
#   'pixels'  a class per pixel (`lth_jax.data.segmentation`)
#   'boxes'   boxes and their classes, padded to `max_boxes` (`lth_jax.data.detection`)
CLASS_LABELS, PIXEL_LABELS, BOX_LABELS = 'class', 'pixels', 'boxes'
LABELS = (CLASS_LABELS, PIXEL_LABELS, BOX_LABELS)
SPLITS = ('train', 'val', 'test')
# Segmentation evaluation (`seg_eval`):
#   'pad'  whole images, padded at the bottom and right to `image_shape` (labels
#          `ignore_label`): every pixel is scored once
#   'resize_center_crop'  the reference's `--crop_val` (ExtResize + ExtCenterCrop): the
#          short side scaled to the crop, the long side's ends cut off and never scored
SEG_EVALS = ('pad', 'resize_center_crop')
# Padding of segmentation training images smaller than the crop (`seg_train_pad`):
#   'ignore'  bottom and right, labels `ignore_label` (the padding is never trained on)
#   'background'  the reference's ExtRandomCrop(pad_if_needed=True): every side, image
#          and labels 0 (the padding is trained as background)
SEG_TRAIN_PADS = ('ignore', 'background')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """One dataset as the pipelines serve it.

  Attributes:
    name: the name the API takes ('cifar10', 'mnist5k', ...); for tfds sets also the
      tensorflow-datasets name.
    source: a registered source (`lth_jax.data.sources`): 'tfds' (tensorflow-datasets,
      prepared under a data_dir), 'offline' (arrays shipped in lth_jax/data/offline),
      'canvases' or 'voc'.
    num_classes: number of labels.
    image_shape: (H, W, C) of the images the pipeline yields by default.
    split_sizes: number of examples of 'train', 'val' and 'test'.
    mean: per-channel mean of the [0, 1] pixels, subtracted when normalising.
    std: per-channel std, divided by when normalising.
    augmentation: one of AUGMENTATIONS, applied to training images.
    crop_padding: zero padding of the random crop (0 when there is no crop).
    pixel_max: the raw pixel value that maps to 1.0 (255; 16 for scikit-learn digits).
    tfds_splits: tfds split string of 'train', 'val' and 'test' (empty for offline sets).
    shuffle_buffer: examples in the training shuffle buffer (the whole split unless
      that would not fit in memory).
    val_is_test: 'val' reads the same examples as 'test' (ImageNet's official
      validation set) unless `get_info(..., val_from_train=N)` holds N out of train.
    task: the registered task (`lth_jax.tasks`) its labels are for; the task says which
      of its source's labels it reads (`Task.labels`).
    derived_from: an offline set whose splits this one takes its classes from; for
      canvases, the offline set whose images they paste (none: MNIST-5k).
    classes: the `derived_from` labels kept, in order (relabelled 0, 1, ...).
    train_per_class: keep only the first this many train images of each class (0: all),
      a small downstream training set.
    scale_range: (low, high) of the random rescaling of segmentation training images.
    ignore_label: the label of pixels no loss or metric counts (segmentation).
    seg_eval: one of SEG_EVALS, how segmentation evaluation fits images to `image_shape`.
    seg_train_pad: one of SEG_TRAIN_PADS, how segmentation training pads images smaller
      than the crop.
    max_boxes: the boxes of every image are padded to this many (detection).
    object_sides: canvases: (min, max) side, inclusive, of a pasted object's scaled
      28 x 28 patch (empty: `lth_jax.data.canvases.DIGIT_SIDES`).
  """
  name: str
  source: str
  num_classes: int
  image_shape: tuple[int, int, int]
  split_sizes: Mapping[str, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augmentation: str
  crop_padding: int = 0
  pixel_max: int = 255
  tfds_splits: Mapping[str, str] = dataclasses.field(default_factory=dict)
  shuffle_buffer: int = 0
  val_is_test: bool = False
  task: str = 'classification'
  derived_from: str = ''
  classes: tuple[int, ...] = ()
  train_per_class: int = 0
  scale_range: tuple[float, float] = (1.0, 1.0)
  ignore_label: int = 255
  seg_eval: str = 'pad'
  seg_train_pad: str = 'ignore'
  max_boxes: int = 0
  object_sides: tuple[int, ...] = ()

  def __post_init__(self):
    assert self.augmentation in AUGMENTATIONS
    assert self.seg_eval in SEG_EVALS and self.seg_train_pad in SEG_TRAIN_PADS
    assert len(self.mean) == len(self.std) == self.image_shape[-1]
    if not self.shuffle_buffer:
      object.__setattr__(self, 'shuffle_buffer', self.split_sizes['train'])


def _tfds(name: str, num_classes: int, image_shape: tuple[int, int, int],
          train_size: int, val_size: int, test_size: int, **kwargs) -> DatasetInfo:
  """A tfds set whose 'val' is the last `val_size` examples of its train split."""
  kept = train_size - val_size
  return DatasetInfo(
      name=name, source='tfds', num_classes=num_classes, image_shape=image_shape,
      split_sizes={'train': kept, 'val': val_size, 'test': test_size},
      tfds_splits={'train': f'train[:{kept}]', 'val': f'train[{kept}:]', 'test': 'test'},
      **kwargs)


def _offline(name: str, num_classes: int, image_shape: tuple[int, int, int],
             train_size: int, val_size: int, test_size: int, **kwargs) -> DatasetInfo:
  """A set shipped in lth_jax/data/offline, its three splits stored apart."""
  return DatasetInfo(
      name=name, source='offline', num_classes=num_classes, image_shape=image_shape,
      split_sizes={'train': train_size, 'val': val_size, 'test': test_size}, **kwargs)


_DATASETS = (
    _tfds('cifar10', 10, (32, 32, 3), 50_000, 5_000, 10_000,
          mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
          augmentation='crop_flip', crop_padding=4),
    _tfds('cifar100', 100, (32, 32, 3), 50_000, 5_000, 10_000,
          mean=(0.5071, 0.4866, 0.4409), std=(0.2009, 0.1984, 0.2023),
          augmentation='crop_flip', crop_padding=4),
    _tfds('svhn_cropped', 10, (32, 32, 3), 73_257, 5_000, 26_032,
          mean=(0.4377, 0.4438, 0.4728), std=(0.1201, 0.1231, 0.1052),
          augmentation='none'),
    _tfds('fashion_mnist', 10, (28, 28, 1), 60_000, 5_000, 10_000,
          mean=(0.1436,), std=(0.1609,), augmentation='none'),
    DatasetInfo(
        name='imagenet2012', source='tfds', num_classes=1000, image_shape=(224, 224, 3),
        split_sizes={'train': 1_281_167, 'val': 50_000, 'test': 50_000},
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        augmentation='inception',
        tfds_splits={'train': 'train', 'val': 'validation', 'test': 'validation'},
        # Encoded JPEGs (~110 kB each) wait in the buffer; files are shuffled too.
        shuffle_buffer=10_000, val_is_test=True),
    _offline('animal_mnist', 10, (28, 28, 1), 6807, 968, 1941, mean=(0.2748,), std=(0.4063,),
             augmentation='crop_flip', crop_padding=2),
    # The paper in miniature's pair of tasks from one domain (configs/paper_offline.py):
    # pre-training on five animal classes, a small downstream task on the other five,
    # where what pre-training learnt matters (its val and test splits are whole).
    _offline('animal_mnist_a', 5, (28, 28, 1), 3318, 471, 945, mean=(0.2856,), std=(0.4218,),
             augmentation='crop_flip', crop_padding=2, derived_from='animal_mnist',
             classes=(0, 1, 2, 3, 4)),
    _offline('animal_mnist_b_few', 5, (28, 28, 1), 100, 497, 996, mean=(0.2667,),
             std=(0.3924,), augmentation='crop_flip', crop_padding=2,
             derived_from='animal_mnist', classes=(5, 6, 7, 8, 9), train_per_class=20),
    # All of classes 5-9: the source of the Animal-MNIST canvases below.
    _offline('animal_mnist_b', 5, (28, 28, 1), 3489, 497, 996, mean=(0.2646,), std=(0.3906,),
             augmentation='crop_flip', crop_padding=2, derived_from='animal_mnist',
             classes=(5, 6, 7, 8, 9)),
    _offline('mnist5k', 10, (28, 28, 1), 3500, 500, 1000, mean=(0.1320,), std=(0.3093,),
             augmentation='crop', crop_padding=2),
    _offline('digits', 10, (8, 8, 1), 1266, 176, 355, mean=(0.3055,), std=(0.3760,),
             augmentation='crop', crop_padding=1, pixel_max=16),
    # Segmentation. Digit canvases: 1-3 MNIST-5k digits of 9-30 px on 56 x 56, labels
    # background 0 / digit + 1 / 255 on the anti-aliased edges (`lth_jax.data.canvases`);
    # whole canvases are evaluated, and training padding is ignored (the defaults).
    DatasetInfo(
        name='digit_canvas_seg', source='canvases', task='segmentation', num_classes=11,
        image_shape=(56, 56, 1), split_sizes={'train': 2000, 'val': 300, 'test': 500},
        mean=(0.0593,), std=(0.2032,), augmentation='scale_crop', scale_range=(0.75, 1.25)),
    # The first canvases of each split (the canvases do not depend on how many are made):
    # smoke tests and quick looks.
    DatasetInfo(
        name='digit_canvas_seg_small', source='canvases', task='segmentation', num_classes=11,
        image_shape=(56, 56, 1), split_sizes={'train': 256, 'val': 64, 'test': 128},
        mean=(0.0593,), std=(0.2032,), augmentation='scale_crop', scale_range=(0.75, 1.25)),
    # Detection: the same canvases, their digits' tight boxes (10 classes; boxes under
    # 12 px high are 'difficult'); the letterbox keeps 56 x 56. Training skips the
    # canvases whose boxes are all difficult (100 of the first 2,000, 13 of the first 256),
    # as the reference skips such images; val and test are whole.
    DatasetInfo(
        name='digit_canvas_det', source='canvases', task='detection', num_classes=10,
        image_shape=(56, 56, 1), split_sizes={'train': 1900, 'val': 300, 'test': 500},
        mean=(0.0593,), std=(0.2032,), augmentation='box_crop', max_boxes=3),
    DatasetInfo(
        name='digit_canvas_det_small', source='canvases', task='detection', num_classes=10,
        image_shape=(56, 56, 1), split_sizes={'train': 243, 'val': 64, 'test': 128},
        mean=(0.0593,), std=(0.2032,), augmentation='box_crop', max_boxes=3),
    # Few-shot dense tasks on the paper in miniature's downstream classes: canvases of
    # 1-3 silhouettes of Animal-MNIST's classes 5-9 (`animal_mnist_b`, none of them seen by
    # the upstream task), made as the digit canvases are. Segmentation: the first 200
    # training canvases, whole val and test, background + 5 classes. Detection: the first
    # 100 training canvases with a box that is not difficult, the first 100 val canvases
    # (the detector is evaluated every epoch) and the whole test; 5 classes. (With 100 or
    # 200 training canvases, behind the reference's neck, a detector from scratch is as
    # good as one from any θ_p: README, "The paper in miniature".)
    DatasetInfo(
        name='animal_canvas_seg_few', source='canvases', task='segmentation', num_classes=6,
        image_shape=(56, 56, 1), split_sizes={'train': 200, 'val': 300, 'test': 500},
        mean=(0.0978,), std=(0.2592,), augmentation='scale_crop', scale_range=(0.75, 1.25),
        derived_from='animal_mnist_b'),
    DatasetInfo(
        name='animal_canvas_det_few', source='canvases', task='detection', num_classes=5,
        image_shape=(56, 56, 1), split_sizes={'train': 100, 'val': 100, 'test': 500},
        mean=(0.0978,), std=(0.2592,), augmentation='box_crop', max_boxes=3,
        derived_from='animal_mnist_b'),
    # Few-shot detection on the upstream task's own classes 0-4 (`animal_mnist_a`, as VOC's
    # classes are ImageNet's), their patches 24-40 pixels (nearer the 28 of pre-training);
    # the first 100 training canvases with a box that is not difficult, the first 100 val
    # canvases and the whole test. Each split's canvases paste that split's silhouettes,
    # so no test canvas holds one that pre-training saw. The miniature's detection task:
    # with the heads on the backbone's stages (`neck='none'`) and the backbone at a fifth of
    # their rate every θ_p beats scratch here by more than twice the seeds' std (behind the
    # reference's neck none did; README, "The paper in miniature").
    DatasetInfo(
        name='animal_a_canvas_det_few', source='canvases', task='detection', num_classes=5,
        image_shape=(56, 56, 1), split_sizes={'train': 100, 'val': 100, 'test': 500},
        mean=(0.1339,), std=(0.3134,), augmentation='box_crop', max_boxes=3,
        derived_from='animal_mnist_a', object_sides=(24, 40)),
    # Pascal VOC detection (the reference's recipe): VOC07 + VOC12 trainval (16,551
    # images) less the last 500 held out as 'val' (none has only difficult objects, which
    # training would skip); 'test' is VOC07 test. 416 letterbox, [0, 1] pixels without
    # mean/std (as the reference).
    DatasetInfo(
        name='voc0712_det', source='voc', task='detection', num_classes=20,
        image_shape=(416, 416, 3), split_sizes={'train': 16_051, 'val': 500, 'test': 4952},
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), augmentation='box_crop_flip',
        max_boxes=64),
    # Pascal VOC 2012 segmentation (the reference's recipe): VOC's 1,464 train images less
    # the last 146 held out as 'val'; 'test' is VOC's val (1,449). 513 crops, padded as
    # the reference's (training); evaluation as its `--crop_val` (short side to 513,
    # centre crop); seg_eval='pad' scores whole images (VOC's are at most 500 px).
    DatasetInfo(
        name='voc2012_seg', source='voc', task='segmentation', num_classes=21,
        image_shape=(513, 513, 3), split_sizes={'train': 1318, 'val': 146, 'test': 1449},
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        augmentation='scale_crop_flip', scale_range=(0.5, 2.0),
        seg_eval='resize_center_crop', seg_train_pad='background'),
)
DATASETS: Registry[DatasetInfo] = Registry('dataset')


def register(info: DatasetInfo) -> DatasetInfo:
  """Adds a dataset under `info.name`, the name configs and `get_info` take.

  Args:
    info: the dataset; its `source` a registered source (`lth_jax.data.sources`), its
      `task` a registered task (`lth_jax.tasks`).

  Returns:
    `info`.

  Raises:
    ValueError: the name is taken; the message describes both datasets.
  """
  if info.name in DATASETS:
    raise ValueError(f'A dataset named {info.name!r} exists already '
                     f'({_describe(DATASETS.get(info.name))}); give this one '
                     f'({_describe(info)}) another name.')
  return DATASETS.register(info.name, info)


def _describe(info: DatasetInfo) -> str:
  return (f'{info.source} source, {info.task} task, {info.num_classes} classes, '
          f'{"x".join(map(str, info.image_shape))} images')


for _info in _DATASETS:
  register(_info)


def get_info(name: str | DatasetInfo, *, val_from_train: int = 0) -> DatasetInfo:
  """Returns the facts about a dataset, with its validation split resolved.

  Args:
    name: one of `DATASETS` (or a DatasetInfo, returned as it is).
    val_from_train: for a dataset whose 'val' would be its test set (`val_is_test`,
      ImageNet), hold this many examples out of the end of train as 'val' instead; 0
      keeps the test set as 'val'. Other datasets ignore it (their 'val' is held out
      already).

  Returns:
    Its DatasetInfo.

  Raises:
    ValueError: for an unknown name, listing the known ones, or a hold-out that leaves
      no training data.
  """
  if isinstance(name, DatasetInfo):
    return name
  info = DATASETS.get(name)
  if not (info.val_is_test and val_from_train):
    return info
  train = info.split_sizes['train']
  if not 0 < val_from_train < train:
    raise ValueError(f'val_from_train={val_from_train} must be in (0, {train}) for '
                     f'{name!r} (its train split has {train} examples).')
  kept = train - val_from_train
  return dataclasses.replace(
      info, val_is_test=False,
      split_sizes={**info.split_sizes, 'train': kept, 'val': val_from_train},
      tfds_splits={**info.tfds_splits, 'train': f'{info.tfds_splits["train"]}[:{kept}]',
                   'val': f'{info.tfds_splits["train"]}[{kept}:]'})


def steps_per_epoch(name: str | DatasetInfo, batch_size: int) -> int:
  """Number of training steps in one epoch (the last partial batch is dropped).

  Args:
    name: dataset name, or its `DatasetInfo` (`get_info(name, val_from_train=...)`).
    batch_size: global batch size (over all hosts).

  Returns:
    train split size // batch_size.
  """
  info = get_info(name)
  train_size = info.split_sizes['train']
  if not 0 < batch_size <= train_size:
    raise ValueError(f'batch_size={batch_size} must be in [1, {train_size}] (the size '
                     f'of the train split of {info.name!r}).')
  return train_size // batch_size
