"""Datasets and their sources as registries: what the data layer asks instead of names.

A dataset is one `data.register` call, a source one `sources.register` call; a task's
labels (`Task.labels`), not its name, decide whether its dataset is served in memory and
on the devices, where TensorFlow is absent too.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest

from lth_jax import data, errors, experiments, tasks
from lth_jax.data import arrays, offline, on_device, sources
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import specs, wiring
from lth_jax.runtime import sharding
from lth_jax.tasks.classification import Classification


class SmoothedClassification(Classification):
  """A classification variant registered under its own name (its loss is not the point)."""
  name = 'smoothed'


@pytest.fixture
def unregister():
  """unregister(registry, name): removes what a test registered when it ends."""
  added = []
  yield lambda registry, name: added.append((registry, name))
  for registry, name in reversed(added):
    registry.unregister(name)


@pytest.fixture
def smoothed(unregister):
  """The digits as a dataset of the classification variant 'smoothed'."""
  unregister(tasks.TASKS, tasks.register(SmoothedClassification()).name)
  info = data.register(dataclasses.replace(
      data.get_info('digits'), name='digits_smoothed', task='smoothed',
      derived_from='digits', classes=tuple(range(10))))
  unregister(data.DATASETS, info.name)
  return info


@pytest.fixture
def without_tensorflow(monkeypatch):
  """Every tf.data path raises, as where TensorFlow is not installed."""
  def absent():
    raise ImportError('no tensorflow here')
  monkeypatch.setattr(arrays, 'tf_available', lambda: False)
  monkeypatch.setattr(arrays, 'tf_pipeline', absent)


def _tiny(**overrides):
  c = config_lib.load_config('demo:tiny')
  c.num_devices = 1
  c.update_from_flattened_dict(overrides)
  return c


def _same_batches(got, want):
  got, want = list(got), list(want)
  assert len(got) == len(want)
  for one, other in zip(got, want):
    assert set(one) == set(other)
    for key in one:
      np.testing.assert_array_equal(np.asarray(one[key]), np.asarray(other[key]), err_msg=key)


def _first_device_batch(info):
  mesh = sharding.make_mesh(jax.devices()[:1])
  return next(on_device.DeviceData(info, mesh, batch_size=64).batches(epoch=0, seed=1))


# -------------------------------------------------------------------------- datasets

def test_every_dataset_names_a_registered_source_and_task():
  for name in data.DATASETS:
    info = data.get_info(name)
    assert info.source in sources.SOURCES and info.task in tasks.TASKS, name
    assert tasks.get(info.task).labels in sources.get(info.source).labels, name
  assert {t: tasks.get(t).labels for t in tasks.TASKS} == {
      'classification': 'class', 'segmentation': 'pixels', 'detection': 'boxes'}


def test_register_adds_a_dataset_and_refuses_a_name_taken_naming_both(unregister):
  info = data.register(dataclasses.replace(data.get_info('mnist5k'), name='mnist5k_copy'))
  unregister(data.DATASETS, info.name)
  assert data.get_info('mnist5k_copy') is info and 'mnist5k_copy' in data.DATASETS
  config_lib.check_dataset('data.dataset', 'mnist5k_copy')  # configs take it
  again = dataclasses.replace(data.get_info('cifar10'), name='mnist5k_copy')
  with pytest.raises(ValueError, match=r"'mnist5k_copy' exists already \(offline source, "
                     r'classification task, 10 classes, 28x28x1 images\); give this one '
                     r'\(tfds source, classification task, 10 classes, 32x32x3 images\)'):
    data.register(again)
  assert data.get_info('mnist5k_copy') is info
  with pytest.raises(ValueError, match=r"Unknown dataset 'nope'; choose one of \["):
    data.get_info('nope')


# --------------------------------------------------------------------------- sources

def test_a_source_registered_here_is_read_checked_and_kept_on_the_devices(
    unregister, monkeypatch, tmp_path):
  checked = []

  def check(info, data_dir, labels):
    checked.append((info.name, data_dir, labels))

  # The digits, held in memory under a source of their own.
  unregister(sources.SOURCES, sources.register(sources.Source(
      'memory', shipped=True, labels=(data.CLASS_LABELS,), check=check,
      arrays=lambda info, split: offline.arrays(data.get_info('digits'), split))).name)
  info = data.register(dataclasses.replace(data.get_info('digits'), name='digits_held',
                                           source='memory'))
  unregister(data.DATASETS, info.name)
  digits = data.get_info('digits')
  # tf.data reads it as it reads the shipped arrays.
  _same_batches(data.train_batches(info, batch_size=256, epoch=0, seed=3),
                data.train_batches(digits, batch_size=256, epoch=0, seed=3))
  data.check_available('digits_held')
  assert checked == [('digits_held', None, 'class')]
  with pytest.raises(ValueError, match=r"'digits_held' \(memory source\) holds class labels, "
                     'not pixels'):
    data.check_available('digits_held', labels=data.PIXEL_LABELS)
  # A data_dir that only such a source would read is refused as for the shipped sets.
  with pytest.raises(errors.ConfigError, match='ships with lth_jax; remove it'):
    experiments.run(_tiny(**{'data.dataset': 'digits_held', 'data.data_dir': str(tmp_path)}),
                    str(tmp_path / 'run'))
  # Without TensorFlow: evaluated in memory and kept on the devices.
  monkeypatch.setattr(arrays, 'tf_pipeline', lambda: pytest.fail('tf.data was asked'))
  assert arrays.in_memory(info) and on_device.fits(info)
  _same_batches(data.eval_batches(info, 'test', batch_size=100),
                data.eval_batches(digits, 'test', batch_size=100))
  _same_batches([_first_device_batch(info)], [_first_device_batch(digits)])


def test_segmentation_and_detection_read_any_source_held_in_memory(unregister):
  from lth_jax.data import detection, segmentation

  canvases = sources.get('canvases')
  unregister(sources.SOURCES, sources.register(dataclasses.replace(canvases, name='copy')).name)
  for name, reader in (('digit_canvas_seg_small', segmentation),
                       ('digit_canvas_det_small', detection)):
    original = data.get_info(name)
    info = data.register(dataclasses.replace(original, name=f'{name}_copy', source='copy'))
    unregister(data.DATASETS, info.name)
    data.check_available(info, labels=tasks.get(info.task).labels)
    _same_batches(reader.eval_batches(info, 'val', batch_size=64, data_dir=None),
                  reader.eval_batches(original, 'val', batch_size=64, data_dir=None))
    # Detection trains on the first canvases with a box that is not difficult.
    _same_batches(reader.train_batches(info, batch_size=81, epoch=0, seed=0, data_dir=None),
                  reader.train_batches(original, batch_size=81, epoch=0, seed=0, data_dir=None))


def test_an_unknown_source_is_named_with_the_registered_ones():
  with pytest.raises(ValueError, match=r"Unknown dataset source 'nope'; choose one of "
                     r"\['canvases', 'offline', 'tfds', 'voc'"):
    sources.get('nope')
  with pytest.raises(ValueError, match="A dataset source named 'tfds' exists already"):
    sources.register(sources.get('tfds'))


# ------------------------------------------------------------- a task's labels decide

def test_a_classification_variant_is_served_in_memory_and_on_the_devices(
    smoothed, without_tensorflow):
  digits = data.get_info('digits')
  assert arrays.in_memory(smoothed) and on_device.fits(smoothed)
  _same_batches(data.eval_batches(smoothed, 'test', batch_size=100),
                data.eval_batches(digits, 'test', batch_size=100))
  _same_batches([_first_device_batch(smoothed)], [_first_device_batch(digits)])
  # Where TensorFlow is absent the device pipeline is chosen, and serves it.
  config = _tiny(**{'data.dataset': 'digits_smoothed'})
  wiring.resolve_pipeline(config)
  assert config.data.pipeline == 'device'
  wiring.check_pipeline(specs.build(config), ['digits_smoothed'])


@pytest.mark.parametrize('overrides, reason', [
    ({'data.dataset': 'digit_canvas_seg_small'},
     r"its task 'segmentation' reads pixels labels; --config\.data\.pipeline=device serves "
     'one class per example'),
    ({'data.dataset': 'cifar10', 'data.data_dir': '/nowhere'},
     r"its source 'tfds' is read through tf\.data"),
])
def test_a_dataset_the_pipeline_cannot_serve_is_refused_before_the_claim(
    overrides, reason, without_tensorflow, monkeypatch, tmp_path):
  workdir = tmp_path / 'run'
  # Were it claimed, the run would train until its first tf.data batch.
  monkeypatch.setattr(experiments, 'claim', lambda *a, **k: pytest.fail('claimed'))
  with pytest.raises(errors.ConfigError, match=rf"Dataset '{overrides['data.dataset']}' "
                     rf'needs tf\.data \({reason}\), and tensorflow or tensorflow-datasets is '
                     r'not installed: pip install tensorflow tensorflow-datasets\.'):
    experiments.run(_tiny(**overrides), str(workdir))
  assert not os.path.exists(workdir)
