"""Tests of lth_jax.data.canvases: digit canvases for offline segmentation and detection."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import pytest

from lth_jax.data import canvases as cv
from lth_jax.data import offline

SPLITS = ('train', 'val', 'test')
# sha256 of split_canvases('train') with the default parameters (see _digest). A change
# means the generator changed: every offline segmentation/detection result changes too.
TRAIN_SHA256 = 'ff79d0f16b65f169386416768654c2886a6fe9e86dd9644b5ce234722a23dde0'


def _digest(out: dict[str, np.ndarray]) -> str:
  sha = hashlib.sha256()
  for key in sorted(out):
    sha.update(key.encode())
    sha.update(str(out[key].shape).encode())
    sha.update(out[key].tobytes())
  return sha.hexdigest()


def _visible_crop(patch: np.ndarray) -> np.ndarray:
  rows = np.flatnonzero((patch >= cv.LOW_THRESHOLD).any(axis=1))
  cols = np.flatnonzero((patch >= cv.LOW_THRESHOLD).any(axis=0))
  return patch[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _objects(out: dict[str, np.ndarray], i: int):
  """(x1, y1, x2, y2, class, difficult, source) of each object of canvas i."""
  for k in range(out['num_objects'][i]):
    x1, y1, x2, y2 = (int(v) for v in out['boxes'][i, k])
    yield (x1, y1, x2, y2, int(out['classes'][i, k]), bool(out['difficult'][i, k]),
           int(out['source_index'][i, k]))


def _assert_pasted_from(out: dict[str, np.ndarray], images: np.ndarray,
                        sides: tuple[int, int] = cv.DIGIT_SIDES) -> None:
  """Every object of every canvas is its source image, scaled to some allowed side and cut
  to its visible box."""
  lo, hi = sides
  for i in range(len(out['image'])):
    for x1, y1, x2, y2, _, _, source in _objects(out, i):
      pasted = out['image'][i, y1:y2 + 1, x1:x2 + 1, 0]
      assert any(np.array_equal(_visible_crop(cv.scale_digit(images[source, ..., 0], side)),
                                pasted) for side in range(lo, hi + 1)), (i, source)


# ----------------------------------------------------------------------------------
# Resize: the documented formula, exactly.
# ----------------------------------------------------------------------------------

def test_resize_weights_hand_worked():
  np.testing.assert_array_equal(cv.resize_weights(2, 4),
                                [[4096, 0], [3072, 1024], [1024, 3072], [0, 4096]])
  # 3/7, 3/7, 1/7 of 4096 round to 1755, 1755, 585; the missing 1 goes to the first max.
  np.testing.assert_array_equal(cv.resize_weights(4, 2),
                                [[1756, 1755, 585, 0], [0, 585, 1756, 1755]])
  np.testing.assert_array_equal(cv.resize_weights(5, 5), 4096 * np.eye(5))


def test_resize_weights_match_exact_rational_formula_with_margin():
  """Rational arithmetic reproduces every 28 -> side weight of the default sides, and no
  unrounded weight is within 1e-3 of a rounding boundary, so float round-off on any
  machine cannot flip one."""
  for n_out in range(cv.DIGIT_SIDES[0], cv.DIGIT_SIDES[1] + 1):
    scale = Fraction(28, n_out)
    support = max(scale, Fraction(1))
    for i, row in enumerate(cv.resize_weights(28, n_out)):
      centre = (i + Fraction(1, 2)) * scale
      raw = [max(Fraction(0), 1 - abs(j + Fraction(1, 2) - centre) / support) for j in range(28)]
      exact = [w * 4096 / sum(raw) for w in raw]
      assert min(abs(e - int(e) - Fraction(1, 2)) for e in exact) > Fraction(1, 1000)
      expected = [round(e) for e in exact]
      expected[expected.index(max(expected))] += 4096 - sum(expected)
      assert row.tolist() == expected, (n_out, i)


def test_scale_digit_hand_worked_and_rounds_half_up():
  corner = np.array([[0, 0], [0, 255]], np.uint8)
  # Weights on the second input pixel are 0, 1/4, 3/4, 1: outer product times 255.
  np.testing.assert_array_equal(cv.scale_digit(corner, 4), [
      [0, 0, 0, 0], [0, 16, 48, 64], [0, 48, 143, 191], [0, 64, 191, 255]])
  # 2 -> 1 averages all four pixels: 0.25 -> 0, exactly 0.5 -> 1, 0.75 -> 1.
  for pixels, expected in (([[1, 0], [0, 0]], 0), ([[1, 1], [0, 0]], 1), ([[3, 0], [0, 0]], 1)):
    assert cv.scale_digit(np.array(pixels, np.uint8), 1).item() == expected
  image = offline.split_arrays('mnist5k', 'val')[0][0, ..., 0]
  np.testing.assert_array_equal(cv.scale_digit(image, 28), image)


# ----------------------------------------------------------------------------------
# Determinism.
# ----------------------------------------------------------------------------------

def test_make_canvases_is_deterministic_seeded_and_prefix_stable():
  images, labels = offline.split_arrays('mnist5k', 'train')
  first = cv.make_canvases(images, labels, num=100, seed=3)
  again = cv.make_canvases(images, labels, num=100, seed=3)
  assert _digest(first) == _digest(again)
  other = cv.make_canvases(images, labels, num=100, seed=4)
  assert not np.array_equal(first['image'], other['image'])
  assert not np.array_equal(first['source_index'], other['source_index'])
  prefix = cv.make_canvases(images, labels, num=40, seed=3)
  for key, value in prefix.items():
    np.testing.assert_array_equal(value, first[key][:40], err_msg=key)


def test_train_split_matches_golden_digest():
  assert _digest(cv.split_canvases('train')) == TRAIN_SHA256


def test_split_canvases_shapes_cache_and_read_only():
  for split in SPLITS:
    out = cv.split_canvases(split)
    n = cv.SPLIT_SIZES[split]
    expected = {
        'image': ((n, 56, 56, 1), np.uint8), 'segmentation': ((n, 56, 56), np.uint8),
        'boxes': ((n, 3, 4), np.float32), 'classes': ((n, 3), np.int32),
        'difficult': ((n, 3), np.bool_), 'num_objects': ((n,), np.int32),
        'source_index': ((n, 3), np.int32)}
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == expected
    again = cv.split_canvases(split)
    assert again is not out and all(again[k] is out[k] for k in out)
    assert not any(v.flags.writeable for v in out.values())
  assert cv.SPLIT_SIZES == {'train': 2000, 'val': 300, 'test': 500}
  small = cv.split_canvases('val', num=10, size=32, sides=(12, 20))
  assert small['image'].shape == (10, 32, 32, 1)
  # Splits use separate random streams: same seed, different layouts.
  val, test = cv.split_canvases('val'), cv.split_canvases('test')
  assert not np.array_equal(val['boxes'], test['boxes'][:300])


# ----------------------------------------------------------------------------------
# Provenance: each split's canvases hold only that split's digits.
# ----------------------------------------------------------------------------------

def test_mnist5k_splits_share_no_identical_image():
  rows = [image.tobytes() for s in SPLITS for image in offline.split_arrays('mnist5k', s)[0]]
  assert len(rows) == len(set(rows)) == 5000


@pytest.mark.parametrize('split', SPLITS)
def test_objects_come_from_their_own_split(split):
  images, labels = offline.split_arrays('mnist5k', split)
  out = cv.split_canvases(split)
  real = np.arange(cv.MAX_OBJECTS)[None, :] < out['num_objects'][:, None]
  sources = out['source_index']
  assert sources[real].min() >= 0 and sources[real].max() < len(images)
  assert (sources[~real] == -1).all()
  np.testing.assert_array_equal(out['classes'][real], labels[sources[real]])
  if split == 'train':
    return  # the pixel check below costs ~1 s for train; val and test are the held-out ones
  _assert_pasted_from(out, images)


# ----------------------------------------------------------------------------------
# Label semantics.
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize('split', SPLITS)
def test_labels_follow_boxes_and_thresholds(split):
  out = cv.split_canvases(split)
  n_objects = out['num_objects']
  assert n_objects.min() >= 1 and n_objects.max() <= cv.MAX_OBJECTS
  padding = np.arange(cv.MAX_OBJECTS)[None, :] >= n_objects[:, None]
  assert (out['classes'][padding] == -1).all() and (out['boxes'][padding] == 0).all()
  assert not out['difficult'][padding].any()
  for i in range(len(n_objects)):
    image, seg = out['image'][i, ..., 0], out['segmentation'][i]
    inside = np.zeros(seg.shape, bool)
    for x1, y1, x2, y2, cls, difficult, _ in _objects(out, i):
      assert 0 <= x1 <= x2 < seg.shape[1] and 0 <= y1 <= y2 < seg.shape[0]
      assert not inside[y1:y2 + 1, x1:x2 + 1].any(), 'boxes overlap'
      inside[y1:y2 + 1, x1:x2 + 1] = True
      pixels, labels = image[y1:y2 + 1, x1:x2 + 1], seg[y1:y2 + 1, x1:x2 + 1]
      expected = np.where(pixels >= cv.HIGH_THRESHOLD, cls + 1,
                          np.where(pixels >= cv.LOW_THRESHOLD, cv.IGNORE_LABEL, 0))
      np.testing.assert_array_equal(labels, expected)
      assert (labels == cls + 1).any()
      visible = pixels >= cv.LOW_THRESHOLD
      assert visible[0].any() and visible[-1].any() and visible[:, 0].any()
      assert visible[:, -1].any(), 'box not tight'
      assert difficult == (y2 - y1 + 1 < cv.DIFFICULT_HEIGHT)
    assert (seg[~inside] == 0).all() and (image[~inside] == 0).all()


def test_every_split_has_all_classes_counts_and_difficulties():
  for split in SPLITS:
    out = cv.split_canvases(split)
    real = out['classes'] >= 0
    assert set(np.unique(out['classes'][real])) == set(range(10)), split
    seg_labels = set(range(cv.NUM_SEG_CLASSES)) | {cv.IGNORE_LABEL}
    assert set(np.unique(out['segmentation'])) == seg_labels, split
    assert set(np.unique(out['num_objects'])) == {1, 2, 3}, split
    assert 0.05 < out['difficult'][real].mean() < 0.3, split


def test_bad_inputs_raise_clear_errors():
  images, labels = offline.split_arrays('mnist5k', 'val')
  with pytest.raises(ValueError, match='sides'):
    cv.make_canvases(images, labels, num=1, size=32)
  with pytest.raises(ValueError, match='uint8'):
    cv.make_canvases(images.astype(np.float32), labels, num=1)
  with pytest.raises(ValueError, match='0..9'):
    cv.make_canvases(images, labels.astype(np.int32) + 1, num=1)
  with pytest.raises(ValueError, match='choose one of'):
    cv.split_canvases('training')


# ----------------------------------------------------------------------------------
# Canvases of another source: Animal-MNIST's classes 5-9 (the few-shot dense tasks).
# ----------------------------------------------------------------------------------

def test_derived_sets_keep_their_classes_counts_and_statistics():
  """animal_mnist_a and animal_mnist_b are every image of Animal-MNIST's classes 0-4 and
  5-9, relabelled 0-4; the registry's mean/std are animal_mnist_b's train split's and
  those of each canvas set's training canvases."""
  from lth_jax import data

  for name, first in (('animal_mnist_a', 0), ('animal_mnist_b', 5)):
    for split in SPLITS:
      images, labels = offline.split_arrays(name, split)
      source, source_labels = offline.split_arrays('animal_mnist', split)
      kept = (source_labels >= first) & (source_labels < first + 5)
      np.testing.assert_array_equal(images, source[kept])
      np.testing.assert_array_equal(labels, source_labels[kept] - first)
      assert len(images) == data.get_info(name).split_sizes[split]
  images = offline.split_arrays('animal_mnist_b', 'train')[0] / 255
  info = data.get_info('animal_mnist_b')
  assert (info.mean[0], info.std[0]) == (round(images.mean(), 4), round(images.std(), 4))
  for name, source in (('animal_canvas_seg_few', 'animal_mnist_b'),
                       ('animal_canvas_det_few', 'animal_mnist_b'),
                       ('animal_a_canvas_det_few', 'animal_mnist_a')):
    info = data.get_info(name)
    assert cv.source_of(info) == source
    canvas = cv.split_canvases('train', source=source,
                               sides=info.object_sides or cv.DIGIT_SIDES)['image'] / 255
    assert (info.mean[0], info.std[0]) == (round(canvas.mean(), 4), round(canvas.std(), 4))
  assert cv.source_of(data.get_info('digit_canvas_seg')) == cv.SOURCE == 'mnist5k'


@pytest.mark.parametrize('split', SPLITS)
@pytest.mark.parametrize('source,sides', [('animal_mnist_b', cv.DIGIT_SIDES),
                                          ('animal_mnist_a', (24, 40))])
def test_animal_canvases_paste_their_own_splits_silhouettes(source, sides, split):
  """The canvases of classes 5-9 (the few-shot dense tasks) and of the upstream classes
  0-4 at 24-40 pixels (animal_a_canvas_det_few) paste only their own split's silhouettes:
  no val or test canvas holds one that training (pre-training, for classes 0-4) saw."""
  images, labels = offline.split_arrays(source, split)
  out = cv.split_canvases(split, num=100, source=source, sides=sides)
  real = out['classes'] >= 0
  np.testing.assert_array_equal(out['classes'][real], labels[out['source_index'][real]])
  assert set(np.unique(out['classes'][real])) == set(range(5))
  assert set(np.unique(out['segmentation'])) <= set(range(6)) | {cv.IGNORE_LABEL}
  _assert_pasted_from(out, images, sides)
  # The source is read: these are not the digit canvases.
  assert _digest(out) != _digest(cv.split_canvases(split, num=100))
  if split != 'train':
    train = {im.tobytes() for im in offline.split_arrays(source, 'train')[0]}
    assert not any(images[i].tobytes() in train for i in np.unique(out['source_index'][real]))


@pytest.mark.parametrize('name,source,sides', [
    ('animal_canvas_det_few', 'animal_mnist_b', cv.DIGIT_SIDES),
    ('animal_a_canvas_det_few', 'animal_mnist_a', (24, 40))])
def test_the_few_shot_detection_tasks_serve_their_first_canvases(name, source, sides):
  from lth_jax import data
  from lth_jax.data import detection

  info = data.get_info(name)
  train = detection._held_split(info, 'train')
  made = cv.split_canvases('train', num=300, source=source, sides=sides)
  trainable = ((made['classes'] >= 0) & ~made['difficult']).any(axis=1)
  first = np.flatnonzero(trainable)[:100]
  np.testing.assert_array_equal(train['image'], made['image'][first])
  assert train['image'].shape == (100, 56, 56, 1)
  val = cv.split_canvases('val', num=300, source=source, sides=sides)['image'][:100]
  np.testing.assert_array_equal(detection._held_split(info, 'val')['image'], val)
  assert len(detection._held_split(info, 'test')['image']) == 500


def test_a_canvas_set_pastes_its_objects_at_its_object_sides():
  import dataclasses

  from lth_jax import data

  base = data.get_info('animal_canvas_det_few')
  large = dataclasses.replace(base, name='large', object_sides=(24, 40))
  out = cv.arrays(large, 'val')
  made = cv.split_canvases('val', num=100, source='animal_mnist_b', sides=(24, 40))
  np.testing.assert_array_equal(out['image'], made['image'])
  np.testing.assert_array_equal(out['boxes'], made['boxes'])
  # Boxes fit the 24-40 pixel patches, larger than the default's (12-40): 12-40 pixels
  # high, median 27 against 21 (val's 100 canvases).
  heights, default = _heights(out), _heights(cv.arrays(base, 'val'))
  assert (heights.min(), np.median(heights), heights.max()) == (12, 27, 40)
  assert (default.min(), np.median(default)) == (9, 21)


def _heights(out: dict[str, np.ndarray]) -> np.ndarray:
  return (out['boxes'][..., 3] - out['boxes'][..., 1] + 1)[out['classes'] >= 0]
