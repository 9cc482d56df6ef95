"""Pascal VOC from a VOCdevkit folder on disk (never downloaded): segmentation and boxes.

    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt   image ids, one a line
    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png               palette PNG: class index a
                                                               pixel, 255 on object borders
    VOCdevkit/VOC2007/ImageSets/Main/{trainval,test}.txt
    VOCdevkit/VOC2007/Annotations/<id>.xml                     boxes, classes, difficult

`segmentation_examples(root, 'train')` and `detection_examples(root, [('2007', 'trainval'),
('2012', 'trainval')])` list what a split holds and check that every file is there; a
missing folder or file is a `DatasetNotFoundError` that names it and how to get VOC.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence

import numpy as np

from lth_jax.errors import DatasetNotFoundError, setting

# The 20 object classes in the order of the reference's (and every) VOC label map; the
# segmentation labels are 1 + this index (0 is background).
CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
           'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep',
           'sofa', 'train', 'tvmonitor')
def _how() -> str:
  """How to get VOC, the setting naming its folder spelled as the user sets it."""
  return ('Download VOCtrainval_11-May-2012.tar (and, for detection, VOCtrainval_06-Nov-2007.tar '
          'and VOCtest_06-Nov-2007.tar) from host.robots.ox.ac.uk/pascal/VOC, extract them '
          f'into one folder and pass the folder holding VOCdevkit as {setting("data.data_dir")}.')


@dataclasses.dataclass(frozen=True)
class Boxes:
  """One image's annotation.

  Attributes:
    boxes: float32 [M, 4] (x1, y1, x2, y2) as the XML has them (1-based, inclusive).
    classes: int32 [M] indices into `CLASSES`.
    difficult: bool [M].
  """
  boxes: np.ndarray
  classes: np.ndarray
  difficult: np.ndarray


def _year_dir(root: str, year: str) -> str:
  path = os.path.join(root, 'VOCdevkit', f'VOC{year}')
  if not os.path.isdir(path):
    raise DatasetNotFoundError(f'Pascal VOC {year} is not in {root}: {path} does not exist. '
                               f'lth_jax never downloads at run time. {_how()}')
  return path


def _ids(year_dir: str, task: str, split: str) -> list[str]:
  path = os.path.join(year_dir, 'ImageSets', task, f'{split}.txt')
  if not os.path.isfile(path):
    raise DatasetNotFoundError(f'{path} does not exist: the VOC image list of split '
                               f'{split!r}. {_how()}')
  with open(path) as f:
    return [line.split()[0] for line in f if line.strip()]


def _require(paths: Sequence[str]) -> None:
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise DatasetNotFoundError(f'{len(missing)} VOC file(s) are missing, e.g. {missing[:3]}; '
                               f'the VOCdevkit folder is incomplete. {_how()}')


def require_counts(name: str, data_dir: str | None,
                   lists: Sequence[tuple[str, int, int, str]]) -> None:
  """Raises unless VOC's lists hold as many images as a dataset's splits need.

  Args:
    name: the dataset (`lth_jax.data` name).
    data_dir: the folder holding VOCdevkit.
    lists: (what was listed, images found, images needed, the splits they make).

  Raises:
    DatasetNotFoundError: the first list whose count differs (a different VOC release or
      an edited list).
  """
  for listed, found, needed, splits in lists:
    if found != needed:
      raise DatasetNotFoundError(
          f'{listed} in {data_dir} lists {found:,} images; {name!r} needs {needed:,} '
          f'({splits}, VOC as released).')


def segmentation_examples(root: str, split: str, year: str = '2012') -> list[tuple[str, str]]:
  """The (JPEG, label PNG) paths of a VOC segmentation split.

  Args:
    root: the folder holding VOCdevkit.
    split: 'train', 'val' or 'trainval'.
    year: the VOC year.

  Returns:
    One (image path, label path) per image, in the list's order.

  Raises:
    DatasetNotFoundError: a folder, the list or a file is missing.
  """
  year_dir = _year_dir(root, year)
  pairs = [(os.path.join(year_dir, 'JPEGImages', f'{i}.jpg'),
            os.path.join(year_dir, 'SegmentationClass', f'{i}.png'))
           for i in _ids(year_dir, 'Segmentation', split)]
  _require([p for pair in pairs for p in pair])
  return pairs


def read_label(path: str) -> np.ndarray:
  """A segmentation PNG's class indices (its palette indices), uint8 [H, W].

  Args:
    path: a SegmentationClass PNG.

  Returns:
    The label map: 0 background, 1-20 the classes, 255 borders and unlabelled pixels.
  """
  from PIL import Image  # matplotlib's dependency; only label PNGs need it

  with Image.open(path) as image:
    if image.mode not in ('P', 'L'):
      raise ValueError(f'{path} is a {image.mode} image; VOC labels are palette (P) PNGs '
                       'whose indices are the classes.')
    return np.asarray(image, np.uint8)


def read_boxes(path: str) -> Boxes:
  """The objects of a VOC annotation XML.

  Args:
    path: an Annotations/<id>.xml file.

  Returns:
    Its `Boxes`.
  """
  root = ElementTree.parse(path).getroot()
  boxes, classes, difficult = [], [], []
  for obj in root.iter('object'):
    name = obj.findtext('name').strip()
    if name not in CLASSES:
      raise ValueError(f'{path}: unknown VOC class {name!r}.')
    box = obj.find('bndbox')
    boxes.append([float(box.findtext(k)) for k in ('xmin', 'ymin', 'xmax', 'ymax')])
    classes.append(CLASSES.index(name))
    difficult.append(obj.findtext('difficult', '0').strip() == '1')
  return Boxes(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int32),
               np.asarray(difficult, bool))


def detection_examples(root: str, splits: Sequence[tuple[str, str]]
                       ) -> list[tuple[str, Boxes]]:
  """The (JPEG path, annotation) pairs of VOC detection splits, e.g. VOC07+12 trainval.

  Args:
    root: the folder holding VOCdevkit.
    splits: (year, split) pairs, e.g. [('2007', 'trainval'), ('2012', 'trainval')].

  Returns:
    One (image path, `Boxes`) per image, the splits concatenated in order.

  Raises:
    DatasetNotFoundError: a folder, a list or a file is missing.
  """
  out = []
  for year, split in splits:
    year_dir = _year_dir(root, year)
    ids = _ids(year_dir, 'Main', split)
    images = [os.path.join(year_dir, 'JPEGImages', f'{i}.jpg') for i in ids]
    notes = [os.path.join(year_dir, 'Annotations', f'{i}.xml') for i in ids]
    _require(images + notes)
    out += [(image, read_boxes(note)) for image, note in zip(images, notes)]
  return out
