"""Training data on the devices (lth_jax.data.on_device) against numpy and the host pipeline."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from lth_jax import data, errors, experiments
from lth_jax.data import on_device, pipeline
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import wiring
from lth_jax.runtime import sharding


def _mesh(count):
  return sharding.make_mesh(jax.devices()[:count])


def _numpy_batch(info, raw, key, step, batch_size):
  """The batch of `step` computed in numpy from the same keys."""
  order = np.asarray(jax.random.permutation(key, len(raw['label'])))
  positions = step * batch_size + np.arange(batch_size)
  offsets, flips = jax.device_get(on_device.augment_params(
      key, positions, info.crop_padding, info.augmentation == 'crop_flip'))
  p = info.crop_padding
  height, width = info.image_shape[:2]
  images = []
  for index, (dy, dx), flip in zip(order[positions], offsets, flips):
    padded = np.pad(raw['image'][index], ((p, p), (p, p), (0, 0)))
    crop = padded[dy:dy + height, dx:dx + width]
    images.append(crop[:, ::-1] if flip else crop)
  pixels = np.stack(images).astype(np.float32) * np.float32(1 / info.pixel_max)
  image = (pixels - np.float32(info.mean[0])) / np.float32(info.std[0])
  return image, raw['label'][order[positions]].astype(np.int32)


@pytest.mark.parametrize('name, devices', [('digits', 1), ('mnist5k', 4)])
def test_batches_equal_numpy_crops_and_flips_from_the_same_keys(name, devices):
  info = data.get_info(name)
  raw = pipeline.read_split(info, 'train')
  resident = on_device.DeviceData(info, _mesh(devices), batch_size=64)
  key = on_device.epoch_key(3, 1)
  for step, batch in enumerate(resident.batches(epoch=1, seed=3)):
    if step in (0, resident.steps - 1):
      image, label = _numpy_batch(info, raw, key, step, 64)
      np.testing.assert_allclose(np.asarray(batch['image']), image, rtol=0, atol=1e-6)
      np.testing.assert_array_equal(np.asarray(batch['label']), label)
      assert batch['image'].sharding == sharding.batch_sharding(_mesh(devices))
  assert step + 1 == resident.steps == pipeline.steps_per_epoch(info, 64)


def test_flips_are_numpy_flips_for_a_crop_flip_dataset(monkeypatch):
  info = dataclasses.replace(data.get_info('digits'), augmentation='crop_flip')
  monkeypatch.setattr(pipeline, 'get_info', lambda name: info)
  monkeypatch.setattr(on_device, 'get_info', lambda name: info)
  raw = pipeline.read_split(info, 'train')
  resident = on_device.DeviceData(info, _mesh(2), batch_size=128)
  key = on_device.epoch_key(0, 0)
  batch = next(resident.batches(epoch=0, seed=0))
  image, _ = _numpy_batch(info, raw, key, 0, 128)
  np.testing.assert_allclose(np.asarray(batch['image']), image, rtol=0, atol=1e-6)
  _, flips = on_device.augment_params(key, np.arange(128), 1, True)
  assert 0 < int(flips.sum()) < 128


def test_an_epoch_is_a_permutation_and_resumes_at_any_step():
  info = data.get_info('digits')
  resident = on_device.DeviceData(info, _mesh(2), batch_size=100, normalize=False)
  whole = [jax.device_get(b) for b in resident.batches(epoch=2, seed=1)]
  tail = [jax.device_get(b) for b in resident.batches(epoch=2, seed=1, start_step=5)]
  assert len(whole) == 12 and len(tail) == 7
  for a, b in zip(whole[5:], tail):
    np.testing.assert_array_equal(a['image'], b['image'])
  # Every example at most once: the un-augmented centre of each image identifies it
  # only up to duplicates, so check labels' counts against the split instead.
  labels = np.concatenate([b['label'] for b in whole])
  raw = pipeline.read_split(info, 'train')['label']
  assert len(labels) == 1200 and all(
      np.sum(labels == c) <= np.sum(raw == c) for c in range(10))
  other = jax.device_get(next(resident.batches(epoch=3, seed=1)))
  assert not np.array_equal(other['label'], whole[0]['label'])
  assert whole[0]['image'].min() >= 0 and whole[0]['image'].max() <= 1  # [0, 1] pixels


def test_crop_offsets_and_flips_have_the_host_pipelines_distribution():
  # Host: tf.image.stateless_random_crop of the zero-padded image (offsets uniform in
  # [0, 2p]) and a flip with probability 1/2; the device draws the same distribution.
  offsets, flips = jax.device_get(on_device.augment_params(
      on_device.epoch_key(0, 0), np.arange(40_000), 4, True))
  for axis in (0, 1):
    counts = np.bincount(offsets[:, axis], minlength=9)
    assert len(counts) == 9 and np.all(np.abs(counts / 40_000 - 1 / 9) < 0.01)
  assert abs(flips.mean() - 0.5) < 0.01
  assert abs(np.corrcoef(offsets[:, 0], offsets[:, 1])[0, 1]) < 0.02
  _, never = on_device.augment_params(on_device.epoch_key(0, 0), np.arange(100), 4, False)
  assert not np.asarray(never).any()


def test_datasets_that_cannot_live_on_the_devices_are_refused():
  assert on_device.fits(data.get_info('cifar10')) and on_device.fits(data.get_info('mnist5k'))
  assert not on_device.fits(data.get_info('imagenet2012'))      # inception crops, 190 GB
  assert not on_device.fits(data.get_info('digit_canvas_seg'))  # a segmentation task
  with pytest.raises(ValueError, match='data.pipeline=host'):
    on_device.DeviceData('digit_canvas_seg', _mesh(1), batch_size=8)
  with pytest.raises(ValueError, match='multiple of the 4 devices'):
    on_device.DeviceData('digits', _mesh(4), batch_size=10)


def test_raw_images_are_the_stored_pixels_in_the_epochs_order():
  # What the contrastive objectives draw their views from: no crop, no flip, [0, 1].
  info = data.get_info('animal_mnist_b_few')  # crop_flip augmentation
  raw = data.read_split(info, 'train')
  device = on_device.DeviceData(info, _mesh(2), batch_size=20, augment=False, normalize=False)
  key = on_device.epoch_key(3, 1)
  order = np.asarray(jax.random.permutation(key, len(raw['label'])))
  for step, batch in enumerate(device.batches(epoch=1, seed=3)):
    index = order[step * 20:(step + 1) * 20]
    expected = raw['image'][index].astype(np.float32) * np.float32(1 / info.pixel_max)
    np.testing.assert_array_equal(np.asarray(batch['image']), expected)
    np.testing.assert_array_equal(np.asarray(batch['label']), raw['label'][index])


def test_auto_is_the_device_pipeline_where_tensorflow_is_absent(monkeypatch):
  monkeypatch.setattr(data.arrays, 'tf_available', lambda: False)
  config = _tiny()
  wiring.resolve_pipeline(config)
  assert config.data.pipeline == 'device'
  with pytest.raises(errors.ConfigError, match=r'pip install tensorflow tensorflow-datasets'
                     r'.*--config\.data\.pipeline=device'):
    wiring.resolve_pipeline(_tiny(**{'data.pipeline': 'host'}))


def _tiny(**overrides):
  c = config_lib.load_config('demo:tiny')
  c.num_devices, c.checkpoint_every_steps = 2, 5
  c.update_from_flattened_dict(overrides)
  return c


@pytest.mark.slow
def test_imp_trains_on_device_batches_and_the_choice_is_recorded(tmp_path, monkeypatch):
  made = []
  real = on_device.DeviceData.batches

  def counting(self, *args, **kwargs):
    made.append(args)
    return real(self, *args, **kwargs)
  monkeypatch.setattr(on_device.DeviceData, 'batches', counting)
  run = tmp_path / 'device'
  # The dense round and one pruned round, one seed each, of a network half demo:tiny's width.
  short = {'imp.num_rounds': 2, 'dense_seeds': 1, 'imp.random_baseline': False,
           'model.width_multiplier': 0.0625}
  out = experiments.run(_tiny(**short, **{'data.pipeline': 'device'}), str(run))
  assert made and all(0 < r['test_accuracy'] <= 1 for r in out['curves']['magnitude'])
  assert len(out['curves']['magnitude']) == 2
  assert json.load(open(run / 'experiment.json'))['data']['pipeline'] == 'device'
  # 'auto' on CPU is the host pipeline, whose stream differs: the workdir refuses it.
  with pytest.raises(errors.WorkdirError, match='data.pipeline'):
    experiments.run(_tiny(**short), str(run))
  with pytest.raises(errors.ConfigError, match="'auto', 'device', 'host'"):
    experiments.run(_tiny(**{'data.pipeline': 'gpu'}), str(tmp_path / 'bad'))


def test_auto_is_recorded_as_host_on_cpu_and_older_records_count_as_host(tmp_path,
                                                                         fake_finetunes):
  run = tmp_path / 'host'
  experiments.run(_tiny(**{'imp.num_rounds': 1}), str(run))
  record = json.load(open(run / 'experiment.json'))
  assert record['data']['pipeline'] == 'host'
  del record['data']['pipeline']  # a workdir written before the field existed
  (run / 'experiment.json').write_text(json.dumps(record))
  trained = len(fake_finetunes.calls)
  experiments.run(_tiny(**{'imp.num_rounds': 1}), str(run))
  assert len(fake_finetunes.calls) == trained  # resumed: nothing trained again
