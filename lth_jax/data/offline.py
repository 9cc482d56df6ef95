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


def split_arrays(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns the arrays of one split of an offline dataset.

  Args:
    name: offline dataset name (the file stem in `OFFLINE_DIR`).
    split: 'train', 'val' or 'test'.

  Returns:
    (images uint8 [N, H, W, C], labels uint8 [N]); read-only views of a cached copy.
  """
  arrays = _load(name)
  images, labels = arrays[key(split, 'images')], arrays[key(split, 'labels')]
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels
