"""Digit canvases: a small real segmentation and detection task built from MNIST-5k.

The offline stand-in for Pascal VOC. Each canvas is a `size` x `size` uint8 image (black
background) holding 1..MAX_OBJECTS MNIST-5k digits at different scales, with VOC-style
labels:

  segmentation  uint8 per pixel: 0 background, digit + 1 (1..10) where the pasted digit's
                intensity is >= HIGH_THRESHOLD, IGNORE_LABEL (255) on its anti-aliased edge
                band (LOW_THRESHOLD <= intensity < HIGH_THRESHOLD), like VOC's object
                border. NUM_SEG_CLASSES = 11.
  boxes         [x1, y1, x2, y2], inclusive integer pixel bounds as in VOC XML (x2 is the
                index of the last column holding the digit, so a box is x2 - x1 + 1 pixels
                wide; VOC metrics use that +1 area convention), tight around the digit's
                visible pixels (intensity >= LOW_THRESHOLD).
  classes       the digit, 0..9 (NUM_DET_CLASSES = 10).
  difficult     True iff the box height y2 - y1 + 1 < DIFFICULT_HEIGHT: small objects,
                which VOC training skips and VOC evaluation ignores.

Generation, per canvas: draw the digit count uniformly from 1..MAX_OBJECTS; per digit,
draw a source image uniformly from the given images and a side uniformly from
`sides` (inclusive), scale the 28 x 28 image to side x side (`scale_digit`) and cut it to
its visible box. A digit with no pixel >= HIGH_THRESHOLD (a thin stroke at the smallest
scales) is dropped, so every box holds pixels of its class. Then up to PLACEMENT_TRIES
positions for the box, fully inside the canvas, are drawn until one overlaps no box
placed before; a digit that finds none is dropped. Every canvas keeps its first digit.
Only the box is pasted, so the image is exactly 0 outside the boxes.

Determinism: the result is a pure function of (images, labels, num, size, seed, sides),
the same on every machine and numpy version. The only random source is PCG64 through
`np.random.SeedSequence`, read only with `Generator.random()` (53-bit doubles, whose
algorithm is fixed), and the resize uses integer weights so that every float64 sum is
exact whatever the BLAS summation order. The draws are sequential, so the first k
canvases do not depend on `num`.

`split_canvases` builds the canvases of a MNIST-5k split from that split's digits only,
so train, val and test digits are disjoint (MNIST-5k holds no identical images across
splits). Another offline set of 28 x 28 objects on black can stand in for MNIST-5k
(`source`): the Animal-MNIST canvases paste the silhouettes of Animal-MNIST's classes 5-9
(`animal_mnist_b`), whose splits are disjoint too (exact duplicates were dropped). Generating all three default splits takes ~0.2 s on a 2-core CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from lth_jax.data import offline
from lth_jax.data.registry import SPLITS, DatasetInfo

SOURCE = 'mnist5k'
CANVAS_SIZE = 56
# Inclusive range of the scaled 28 x 28 patch's side. MNIST digits fill about 20 / 28 of
# their patch, so digit heights run from ~9 px (side 12) to ~30 px (side 40).
DIGIT_SIDES = (12, 40)
MAX_OBJECTS = 3
PLACEMENT_TRIES = 20
NUM_DET_CLASSES = 10
NUM_SEG_CLASSES = NUM_DET_CLASSES + 1
IGNORE_LABEL = 255
LOW_THRESHOLD = 32
HIGH_THRESHOLD = 128
# Boxes lower than this many pixels are difficult (~15% of the objects by default).
DIFFICULT_HEIGHT = 12
# Small enough that a dense network trains on them in minutes on two CPU cores.
SPLIT_SIZES = {'train': 2000, 'val': 300, 'test': 500}

# Resize weights are integers summing to 2**_WEIGHT_BITS per output pixel. With uint8
# inputs every partial sum of the two-pass resize stays below 255 * 2**24 < 2**53, so
# float64 arithmetic is exact.
_WEIGHT_BITS = 12


@functools.lru_cache(maxsize=None)
def resize_weights(n_in: int, n_out: int) -> np.ndarray:
  """The integer weights that resize one axis from `n_in` to `n_out` pixels.

  Triangle ("bilinear") filter in half-pixel coordinates, widened by the scale factor
  when shrinking (anti-aliased, like PIL's bilinear): input pixel j covers [j, j + 1),
  output pixel i is centred at c_i = (i + 0.5) * n_in / n_out, and its weight on input
  pixel j is max(0, 1 - |j + 0.5 - c_i| / max(n_in / n_out, 1)). Each row is normalised
  to sum 1, scaled by 2**12 and rounded half to even; the rounding residual goes to the
  row's first largest weight so that every row sums to exactly 4096.

  Args:
    n_in: input length (>= 1).
    n_out: output length (>= 1).

  Returns:
    Read-only float64 [n_out, n_in] of non-negative integers, each row summing to 4096.
  """
  if n_in < 1 or n_out < 1:
    raise ValueError(f'resize lengths must be >= 1, got n_in={n_in}, n_out={n_out}.')
  scale = n_in / n_out
  centres = (np.arange(n_out) + 0.5) * scale
  weights = np.maximum(
      0.0, 1.0 - np.abs(np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / max(scale, 1.0))
  weights /= weights.sum(axis=1, keepdims=True)
  one = 2**_WEIGHT_BITS
  weights = np.round(weights * one)
  weights[np.arange(n_out), np.argmax(weights, axis=1)] += one - weights.sum(axis=1)
  weights.flags.writeable = False
  return weights


def scale_digit(image: np.ndarray, side: int) -> np.ndarray:
  """Resizes a uint8 image to side x side with `resize_weights` on both axes.

  Args:
    image: uint8 [H, W].
    side: output side length (>= 1).

  Returns:
    uint8 [side, side]: the exact weighted sum, divided by 2**24 and rounded half up.
  """
  rows = resize_weights(image.shape[0], side)
  cols = resize_weights(image.shape[1], side)
  total = (rows @ image.astype(np.float64) @ cols.T).astype(np.int64)
  half = 1 << (2 * _WEIGHT_BITS - 1)
  return ((total + half) >> (2 * _WEIGHT_BITS)).astype(np.uint8)


def make_canvases(images: np.ndarray, labels: np.ndarray, *, num: int,
                  size: int = CANVAS_SIZE, seed: int | Sequence[int] = 0,
                  sides: tuple[int, int] = DIGIT_SIDES) -> dict[str, np.ndarray]:
  """Builds `num` digit canvases from the given digits (see the module docstring).

  Args:
    images: uint8 [N, H, W, 1] source digits (MNIST: 28 x 28, black background).
    labels: [N] integer classes in 0..9.
    num: number of canvases (>= 0).
    size: canvas side length.
    seed: non-negative int, or a sequence of them, the entropy of the SeedSequence.
    sides: (min, max) side of a scaled digit patch, inclusive, 1 <= min <= max <= size.

  Returns:
    'image': uint8 [num, size, size, 1]; 'segmentation': uint8 [num, size, size];
    'boxes': float32 [num, MAX_OBJECTS, 4] inclusive [x1, y1, x2, y2], zero padded;
    'classes': int32 [num, MAX_OBJECTS], -1 padded; 'difficult': bool
    [num, MAX_OBJECTS], False padded; 'num_objects': int32 [num];
    'source_index': int32 [num, MAX_OBJECTS], the index into `images` of each object,
    -1 padded. Objects come first in each row, in placement order.
  """
  images, labels = _check_digits(images, labels)
  low, high = _check_layout(num, size, sides)
  rng = np.random.default_rng(np.random.SeedSequence(seed))
  out = {
      'image': np.zeros((num, size, size, 1), np.uint8),
      'segmentation': np.zeros((num, size, size), np.uint8),
      'boxes': np.zeros((num, MAX_OBJECTS, 4), np.float32),
      'classes': np.full((num, MAX_OBJECTS), -1, np.int32),
      'difficult': np.zeros((num, MAX_OBJECTS), bool),
      'num_objects': np.zeros((num,), np.int32),
      'source_index': np.full((num, MAX_OBJECTS), -1, np.int32),
  }
  for i in range(num):
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(1 + _uniform_int(rng, MAX_OBJECTS)):
      source = _uniform_int(rng, len(images))
      crop = _visible_crop(scale_digit(images[source], low + _uniform_int(rng, high - low + 1)))
      box = None if crop is None else _place(rng, crop.shape, size, placed)
      if box is None:
        continue
      x1, y1, x2, y2 = box
      label = int(labels[source])
      k = len(placed)
      out['image'][i, y1:y2 + 1, x1:x2 + 1, 0] = crop
      out['segmentation'][i, y1:y2 + 1, x1:x2 + 1] = np.where(
          crop >= HIGH_THRESHOLD, label + 1,
          np.where(crop >= LOW_THRESHOLD, IGNORE_LABEL, 0))
      out['boxes'][i, k] = box
      out['classes'][i, k] = label
      out['difficult'][i, k] = y2 - y1 + 1 < DIFFICULT_HEIGHT
      out['source_index'][i, k] = source
      placed.append(box)
    out['num_objects'][i] = len(placed)
  return out


def split_canvases(split: str, *, num: int | None = None, size: int = CANVAS_SIZE,
                   seed: int = 0, sides: tuple[int, int] = DIGIT_SIDES,
                   source: str = SOURCE) -> dict[str, np.ndarray]:
  """The canvases of one split, drawn only from that split of `source`, cached in memory.

  Each split has its own random stream (SeedSequence entropy (seed, index of the split
  in SPLITS)), so the splits' layouts are independent too.

  Args:
    split: 'train', 'val' or 'test'.
    num: number of canvases; None for SPLIT_SIZES[split] (2000 / 300 / 500).
    size: canvas side length.
    seed: non-negative int.
    sides: (min, max) side of a scaled object patch, inclusive.
    source: the offline set (28 x 28, black background, at most 10 classes) whose
      images are pasted: MNIST-5k's digits, or e.g. Animal-MNIST's silhouettes.

  Returns:
    `make_canvases`'s dict (a fresh dict of shared read-only arrays); 'source_index'
    indexes `offline.split_arrays(source, split)`.
  """
  if split not in SPLITS:
    raise ValueError(f'split={split!r}: choose one of {SPLITS}.')
  num = SPLIT_SIZES[split] if num is None else num
  return dict(_cached_split(split, num, size, seed, tuple(sides), source))


def source_of(info: DatasetInfo) -> str:
  """The offline set whose images a canvas dataset pastes (its `derived_from`; MNIST-5k
  for the digit canvases, which name none)."""
  return info.derived_from or SOURCE


def arrays(info: DatasetInfo, split: str) -> dict[str, np.ndarray]:
  """The 'canvases' source's arrays of a split (`lth_jax.data.sources.Source.arrays`).

  Args:
    info: a canvas dataset.
    split: 'train', 'val' or 'test'.

  Returns:
    `split_canvases` of its source: as many canvases as `info.split_sizes[split]`, its
    objects' sides `info.object_sides` (DIGIT_SIDES where it names none).
  """
  return split_canvases(split, num=info.split_sizes[split], source=source_of(info),
                        sides=info.object_sides or DIGIT_SIDES)


def check(info: DatasetInfo, data_dir: str | None, labels: str) -> None:
  """Raises FileNotFoundError unless the shipped set the canvases paste is there."""
  del data_dir, labels  # made from a shipped set, holding pixels and boxes alike
  for split in SPLITS:
    offline.split_arrays(source_of(info), split)


@functools.lru_cache(maxsize=None)
def _cached_split(split: str, num: int, size: int, seed: int, sides: tuple[int, int],
                  source: str) -> dict[str, np.ndarray]:
  images, labels = offline.split_arrays(source, split)
  out = make_canvases(images, labels, num=num, size=size, seed=(seed, SPLITS.index(split)),
                      sides=sides)
  for array in out.values():
    array.flags.writeable = False
  return out


def _uniform_int(rng: np.random.Generator, n: int) -> int:
  # floor(u * n) of a 53-bit double u in [0, 1): Generator.random's algorithm is fixed,
  # whereas Generator.integers' may change between numpy versions.
  return int(rng.random() * n)


def _visible_crop(patch: np.ndarray) -> np.ndarray | None:
  """`patch` cut to its pixels >= LOW_THRESHOLD; None if none reaches HIGH_THRESHOLD."""
  if patch.max() < HIGH_THRESHOLD:
    return None
  rows = np.flatnonzero((patch >= LOW_THRESHOLD).any(axis=1))
  cols = np.flatnonzero((patch >= LOW_THRESHOLD).any(axis=0))
  return patch[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _place(rng: np.random.Generator, shape: tuple[int, int], size: int,
           placed: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int] | None:
  """A box of `shape` inside the canvas overlapping none of `placed`, or None."""
  height, width = shape
  for _ in range(PLACEMENT_TRIES):
    y1 = _uniform_int(rng, size - height + 1)
    x1 = _uniform_int(rng, size - width + 1)
    box = (x1, y1, x1 + width - 1, y1 + height - 1)
    if not any(_overlap(box, other) for other in placed):
      return box
  return None


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
  """Whether two inclusive [x1, y1, x2, y2] boxes share a pixel."""
  return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _check_digits(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Validates the source digits; returns (uint8 [N, H, W], int64 [N])."""
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 1:
    raise ValueError(f'images must be uint8 [N, H, W, 1] (as offline.split_arrays returns), '
                     f'got {images.dtype} {images.shape}.')
  if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integers of shape [{images.shape[0]}] (one per image), '
                     f'got {labels.dtype} {labels.shape}.')
  if not len(images):
    raise ValueError('images is empty: pass at least one source digit.')
  if labels.min() < 0 or labels.max() >= NUM_DET_CLASSES:
    raise ValueError(f'labels must be digits in 0..{NUM_DET_CLASSES - 1}, got values in '
                     f'{labels.min()}..{labels.max()}.')
  return images[..., 0], labels.astype(np.int64)


def _check_layout(num: int, size: int, sides: Sequence[int]) -> tuple[int, int]:
  """Validates the canvas parameters; returns sides as (min, max)."""
  if num < 0:
    raise ValueError(f'num={num} must be >= 0.')
  if len(sides) != 2 or not 1 <= sides[0] <= sides[1] <= size:
    raise ValueError(f'sides={tuple(sides)} must be (min, max) with 1 <= min <= max <= '
                     f'size={size}; pass smaller sides or a larger size.')
  return int(sides[0]), int(sides[1])
