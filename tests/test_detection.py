"""Detection transfer: joint image/box transforms, VOC folders, exact mAP evaluation, masked
fine-tuning of the YOLO detector, and the offline study."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf

import conftest

from lth_jax import data, errors, experiments, masks as masks_lib, metrics, pruning
from lth_jax.data import canvases, detection as det_data, voc
from lth_jax.experiments import config as defaults
from lth_jax.experiments import wiring
from lth_jax.models import create_detector, init_variables
from lth_jax.models.yolo import ANCHORS, decode
from lth_jax.runtime import sharding
from lth_jax.tasks import detection as det_task
from lth_jax.tasks import yolo

SMALL = data.get_info('digit_canvas_det_small')


def _boxes_example(height: int, width: int) -> dict[str, np.ndarray]:
  """Two solid rectangles of values 100 and 200 on black, and their boxes."""
  image = np.zeros((height, width, 1), np.uint8)
  boxes = np.array([[4, 6, 19, 25], [28, 10, 41, 33], [0, 0, 0, 0]], np.float32)
  for (x1, y1, x2, y2), value in zip(boxes[:2].astype(int), (100, 200)):
    image[y1:y2, x1:x2] = value
  return {'image': image, 'boxes': boxes, 'classes': np.array([3, 7, 0], np.int32),
          'difficult': np.array([False, False, False]), 'valid': np.array([True, True, False])}


def _pixels(image: np.ndarray, info: data.DatasetInfo) -> np.ndarray:
  return (image[..., 0] * info.std[0] + info.mean[0]) * info.pixel_max


@pytest.mark.parametrize('augmentation', ['box_crop', 'box_crop_flip'])
def test_training_transforms_move_boxes_with_their_pixels(augmentation):
  info = dataclasses.replace(SMALL, augmentation=augmentation)
  example = _boxes_example(48, 56)
  flips = 0
  for seed in range(16):
    out = det_data.preprocess({k: tf.constant(v) for k, v in example.items()}, info=info,
                              seed=tf.constant([seed, 3], tf.int64))
    pixels = _pixels(out['image'].numpy(), info)
    boxes = out['boxes'].numpy()
    assert out['image'].shape == (56, 56, 1) and boxes.shape == (3, 4)
    np.testing.assert_array_equal(out['valid'].numpy(), example['valid'])
    assert (boxes[2] == 0).all()  # padding stays zero
    for (x1, y1, x2, y2), value in zip(boxes[:2], (100, 200)):
      cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
      assert abs(pixels[cy, cx] - value) < 1.0, (seed, value, pixels[cy, cx])
      # Just outside the box (2 px beyond the scaled edge) is background or grey fill.
      outside = pixels[cy, min(55, int(np.ceil(x2)) + 2)] if value == 200 else (
          pixels[cy, max(0, int(x1) - 3)])
      assert outside < 5 or abs(outside - 128) < 1, (seed, outside)
    flips += boxes[0, 0] > boxes[1, 0]  # the 100-box ends up right of the 200-box
  assert (flips > 0) == (augmentation == 'box_crop_flip')


def test_difficult_boxes_are_not_trained_on_but_evaluated():
  example = _boxes_example(56, 56)
  example['difficult'] = np.array([False, True, False])
  train = det_data.preprocess({k: tf.constant(v) for k, v in example.items()}, info=SMALL,
                              seed=tf.constant([0, 0], tf.int64))
  assert train['valid'].numpy().tolist() == [True, False, False]
  test = det_data.preprocess({k: tf.constant(v) for k, v in example.items()}, info=SMALL,
                             seed=None)
  assert test['valid'].numpy().tolist() == [True, True, False]
  assert test['difficult'].numpy().tolist() == [False, True, False]


def test_an_example_without_a_trainable_box_passes_the_training_transforms():
  # Its union of valid boxes is +-1e9 wide: the translation must not build that padding,
  # which tf.data's default graph optimisations happened to prune.
  example = _boxes_example(56, 56)
  example['difficult'] = np.array([True, True, False])
  options = tf.data.Options()
  options.experimental_optimization.apply_default_optimizations = False
  for augmentation in ('box_crop', 'box_crop_flip'):
    info = dataclasses.replace(SMALL, augmentation=augmentation)
    ds = tf.data.Dataset.from_tensors(example).map(
        lambda ex, info=info: det_data.preprocess(ex, info=info, seed=tf.constant([0, 1],
                                                                                   tf.int64)))
    out = next(iter(ds.with_options(options)))
    assert not out['valid'].numpy().any() and out['image'].shape == (56, 56, 1)


def test_training_skips_canvases_whose_boxes_are_all_difficult():
  # As the reference's annotation script skips VOC images without a non-difficult object;
  # val and test keep every canvas (the reference evaluates every image of its test list).
  for name, made in (('digit_canvas_det_small', 256), ('digit_canvas_det', 2000)):
    info = data.get_info(name)
    arrays = canvases.split_canvases('train', num=made)
    trainable = (np.arange(3) < arrays['num_objects'][:, None]) & ~arrays['difficult']
    kept = np.flatnonzero(trainable.any(1))
    assert len(kept) == info.split_sizes['train'] == {256: 243, 2000: 1900}[made]
    train = next(iter(det_data.examples(info, 'train', None, (0, 1)).batch(made)))
    np.testing.assert_array_equal(train['image'].numpy(), arrays['image'][kept])
    assert (train['valid'].numpy() & ~train['difficult'].numpy()).any(1).all()
    for split in ('val', 'test'):
      held = canvases.split_canvases(split, num=info.split_sizes[split])
      got = next(iter(det_data.examples(info, split, None, (0, 1)).batch(made)))
      np.testing.assert_array_equal(got['image'].numpy(), held['image'])


def test_letterbox_scales_boxes_and_keeps_the_originals_for_the_metric():
  info = dataclasses.replace(SMALL, image_shape=(64, 64, 1))
  example = _boxes_example(40, 80)  # ratio 0.8: 32 x 64, 16 rows of grey above and below
  out = det_data.preprocess({k: tf.constant(v) for k, v in example.items()}, info=info,
                            seed=None)
  np.testing.assert_array_equal(out['gt_boxes'].numpy(), example['boxes'])
  assert out['hw'].numpy().tolist() == [40, 80]
  np.testing.assert_allclose(out['boxes'].numpy()[:2],
                             example['boxes'][:2] * 0.8 + np.array([0, 16, 0, 16]))
  pixels = _pixels(out['image'].numpy(), info)
  np.testing.assert_allclose(pixels[:16], 128, atol=1e-3)
  np.testing.assert_allclose(pixels[48:], 128, atol=1e-3)
  # postprocess undoes it: a prediction on a letterboxed box comes back to the original.
  x1, y1, x2, y2 = out['boxes'].numpy()[0]
  row = np.array([[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.9] + [0.0] * 3 +
                  [1.0] + [0.0] * 6])
  back = yolo.postprocess(row, input_size=64, original_hw=(40, 80))
  np.testing.assert_allclose(back[0, :4], example['boxes'][0], atol=1e-4)


def test_canvas_annotations_are_the_canvases():
  test = list(det_data.eval_batches(SMALL, 'test', batch_size=48, data_dir=None))
  arrays = canvases.split_canvases('test', num=128)
  gt = np.concatenate([b['gt_boxes'] for b in test])[:128]
  valid = np.concatenate([b['valid'] for b in test])[:128]
  np.testing.assert_array_equal(valid.sum(1), arrays['num_objects'])
  np.testing.assert_array_equal(gt[valid], arrays['boxes'][arrays['classes'] >= 0])
  assert [b['mask'].sum() for b in test] == [48, 48, 32]


# ------------------------------------------------------------------------- VOC on disk

_XML = """<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
_OBJECT = """<object><name>{name}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def _write_voc(root, lists: dict[tuple[str, str], int],
               all_difficult: frozenset[str] = frozenset()) -> dict[str, list]:
  """VOC folders of random images and objects; `all_difficult` images' are all difficult."""
  from PIL import Image

  truth, rng = {}, np.random.default_rng(0)
  for (year, split), count in lists.items():
    base = root / 'VOCdevkit' / f'VOC{year}'
    for sub in ('JPEGImages', 'Annotations', 'ImageSets/Main'):
      (base / sub).mkdir(parents=True, exist_ok=True)
    ids = [f'{year}_{split}_{i:03d}' for i in range(count)]
    (base / 'ImageSets' / 'Main' / f'{split}.txt').write_text('\n'.join(ids) + '\n')
    for image_id in ids:
      h, w = int(rng.integers(30, 60)), int(rng.integers(30, 60))
      Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
          base / 'JPEGImages' / f'{image_id}.jpg')
      objects = []
      for _ in range(int(rng.integers(1, 4))):
        x1, y1 = int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2))
        objects.append(dict(name=voc.CLASSES[int(rng.integers(20))], x1=x1, y1=y1,
                            x2=x1 + 10, y2=y1 + 12,
                            difficult=int(rng.random() < 0.3 or image_id in all_difficult)))
      (base / 'Annotations' / f'{image_id}.xml').write_text(_XML.format(
          w=w, h=h, objects=''.join(_OBJECT.format(**o) for o in objects)))
      truth[image_id] = objects
  return truth


def test_voc_folders_are_read_with_classes_boxes_and_difficult_flags(tmp_path):
  truth = _write_voc(tmp_path, {('2007', 'trainval'): 3, ('2012', 'trainval'): 2,
                                ('2007', 'test'): 3})
  info = dataclasses.replace(data.get_info('voc0712_det'), image_shape=(64, 64, 3),
                             split_sizes={'train': 4, 'val': 1, 'test': 3})
  data.check_available(info, str(tmp_path), data.BOX_LABELS)
  test = list(det_data.eval_batches(info, 'test', batch_size=2, data_dir=str(tmp_path)))
  assert [b['mask'].tolist() for b in test] == [[1, 1], [1, 0]]
  images = [f'2007_test_{i:03d}' for i in range(3)]
  for i, image_id in enumerate(images):
    batch, row = test[i // 2], i % 2
    valid = batch['valid'][row]
    expected = truth[image_id]
    np.testing.assert_array_equal(batch['gt_boxes'][row][valid],
                                  [[o['x1'], o['y1'], o['x2'], o['y2']] for o in expected])
    assert batch['classes'][row][valid].tolist() == [voc.CLASSES.index(o['name'])
                                                     for o in expected]
    assert batch['difficult'][row][valid].tolist() == [bool(o['difficult']) for o in expected]
  # 'val' is the last of VOC07 + VOC12 trainval.
  val = next(det_data.eval_batches(info, 'val', batch_size=1, data_dir=str(tmp_path)))
  assert val['classes'][0][val['valid'][0]].tolist() == [
      voc.CLASSES.index(o['name']) for o in truth['2012_trainval_001']]
  train = list(det_data.train_batches(info, batch_size=2, epoch=0, seed=0,
                                      data_dir=str(tmp_path)))
  assert len(train) == 2 and train[0]['image'].shape == (2, 64, 64, 3)


def test_voc_training_skips_images_whose_objects_are_all_difficult(tmp_path):
  truth = _write_voc(tmp_path, {('2007', 'trainval'): 3, ('2012', 'trainval'): 2,
                                ('2007', 'test'): 2},
                     all_difficult=frozenset({'2007_trainval_001', '2007_test_000'}))
  info = dataclasses.replace(data.get_info('voc0712_det'), image_shape=(64, 64, 3),
                             split_sizes={'train': 3, 'val': 1, 'test': 2})
  data.check_available(info, str(tmp_path), data.BOX_LABELS)
  for split, ids in (('train', ['2007_trainval_000', '2007_trainval_002', '2012_trainval_000']),
                     ('val', ['2012_trainval_001']), ('test', ['2007_test_000', '2007_test_001'])):
    found = [ex['boxes'][ex['valid']].tolist() for ex in det_data.examples(
        info, split, str(tmp_path), (0, 1)).as_numpy_iterator()]
    assert found == [[[o[k] for k in ('x1', 'y1', 'x2', 'y2')] for o in truth[i]]
                     for i in ids], split
  wrong = dataclasses.replace(info, split_sizes={'train': 4, 'val': 1, 'test': 2})
  with pytest.raises(errors.DatasetNotFoundError,
                     match="needs 6 .'train' . 'val' . 1 images whose objects are all "):
    data.check_available(wrong, str(tmp_path), data.BOX_LABELS)


def test_missing_or_miscounted_voc_is_a_clear_error(tmp_path):
  info = data.get_info('voc0712_det')
  with pytest.raises(errors.DatasetNotFoundError, match='VOC2007'):
    data.check_available(info, str(tmp_path), data.BOX_LABELS)
  _write_voc(tmp_path, {('2007', 'trainval'): 2, ('2012', 'trainval'): 1,
                        ('2007', 'test'): 1})
  with pytest.raises(errors.DatasetNotFoundError, match='16,551'):
    data.check_available(info, str(tmp_path), data.BOX_LABELS)


# ------------------------------------------------------------------ exact evaluation

def test_evaluation_is_voc_map_of_every_image_over_padded_batches():
  model = create_detector('resnet18', num_classes=10, stem='cifar', in_channels=1,
                          width_multiplier=0.125, neck_width=1 / 32)
  variables = jax.device_get(init_variables(model, jax.random.key(3), 56))
  info = dataclasses.replace(SMALL, split_sizes={**SMALL.split_sizes, 'val': 13})
  got = det_task.evaluate(model, variables, det_data.eval_batches(info, 'val', batch_size=8,
                                                                  data_dir=None),
                          num_classes=10, image_size=56, mesh=sharding.make_mesh())
  arrays = canvases.split_canvases('val', num=13)
  images = (arrays['image'] / 255.0 - info.mean[0]) / info.std[0]
  outputs = model.apply(variables, images.astype(np.float32), train=False)
  rows = np.concatenate([np.asarray(decode(o, ANCHORS[i], s)).reshape(13, -1, 15)
                         for i, (o, s) in enumerate(zip(outputs, model.strides))], axis=1)
  # As the reference's evaluator writes them: integer corners, 4-decimal scores.
  found = [yolo.round_like_reference(yolo.postprocess(
      r, input_size=56, original_hw=(56, 56), max_candidates=300, max_det=100)) for r in rows]
  task_found, _ = det_task.detections(
      model, variables, det_data.eval_batches(info, 'val', batch_size=8, data_dir=None),
      image_size=56, mesh=sharding.make_mesh())
  assert sum(map(len, task_found)) > 0
  for mine, expected in zip(task_found, found, strict=True):
    np.testing.assert_array_equal(mine, expected)
    np.testing.assert_array_equal(mine[:, :4], np.floor(mine[:, :4]))
    np.testing.assert_array_equal(mine[:, 4], np.round(mine[:, 4], 4))
  truths = [{'boxes': arrays['boxes'][i, :n], 'classes': arrays['classes'][i, :n],
             'difficult': arrays['difficult'][i, :n]}
            for i, n in enumerate(arrays['num_objects'])]
  assert got['map50'] == pytest.approx(metrics.voc_map(found, truths, 10)['map'], abs=1e-9)
  assert got['map'] == pytest.approx(metrics.voc_map_range(found, truths, 10)['map'],
                                     abs=1e-9)
  assert got['detections'] == np.mean([len(f) for f in found])


# -------------------------------------------------------------- masked YOLO training

@pytest.mark.slow
def test_finetune_keeps_pruned_backbone_weights_zero_and_never_prunes_neck_or_heads(tmp_path):
  config = defaults.load_config('detection_offline:tiny')
  config.optim.num_epochs = 1  # 8 steps: every kept weight moves
  config.model.width_multiplier = 0.0625  # half the tiny width: faster
  experiment = experiments.specs.build(config)
  task, info = wiring.task_and_data(experiment.data, 'digit_canvas_det_small')
  info = dataclasses.replace(info, split_sizes={'train': 64, 'val': 16, 'test': 16})
  model = task.build_model(experiment.model, info)
  start = jax.device_get(init_variables(model, jax.random.key(0), 56))
  ticket = pruning.random_like(jax.random.key(1), pruning.to_sparsity(
      start['params'], masks_lib.init(start['params']), 0.5), layerwise=False)
  prunable = masks_lib.prunable_leaves(ticket)
  assert len(prunable) == 19 and not any(n.startswith(('neck', 'head')) for n in prunable)
  variables = {'params': masks_lib.apply(start['params'], ticket),
               'batch_stats': start['batch_stats']}
  result = wiring.make_finetune(experiment, model, task, info, wiring.mesh_for(experiment))(
      variables, ticket, seed=0, checkpoint_dir=str(tmp_path / 'run'))
  trained = jax.device_get(result.variables['params'])
  before = masks_lib.prunable_leaves(start['params'])
  for name, leaf in masks_lib.prunable_leaves(trained).items():
    kept = np.asarray(prunable[name])
    assert (np.asarray(leaf)[~kept] == 0).all(), name
    assert (np.asarray(leaf)[kept] != np.asarray(before[name])[kept]).mean() > 0.5, name
  for part in ('neck', 'head'):
    kernels = [a for a in jax.tree.leaves(trained[part]) if a.ndim == 4]
    assert kernels and all((np.asarray(a) != 0).mean() > 0.99 for a in kernels)
  assert set(result.test_metrics) == {'map50', 'map', 'detections'}
  # benchmarks/detection_errors.py reads back the final weights the run saved and scores
  # them as the run's own test (its one epoch is its best).
  errors_benchmark = conftest.load_script('benchmarks/detection_errors.py')
  restored = errors_benchmark.final_variables(str(tmp_path / 'run'), start)
  jax.tree.map(np.testing.assert_array_equal, restored, jax.device_get(result.variables))
  got = errors_benchmark.breakdown(model, restored, info, experiment.data.eval_batch_size)
  assert got['map50'] == pytest.approx(result.test_metrics['map50'], abs=1e-12)
  assert set(got) == {'map50', 'agnostic_map', 'located', 'class_accuracy'}


def test_config_neck_reaches_the_detector_and_a_bad_one_is_refused_before_the_workdir(
    tmp_path):
  config = defaults.load_config('detection_offline:tiny')
  config.model.neck = 'none'
  experiment = experiments.specs.build(config)
  task, info = wiring.task_and_data(experiment.data, 'digit_canvas_det_small')
  model = task.build_model(experiment.model, info)
  assert (model.neck, model.neck_width) == ('none', config.model.neck_width)
  params = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 56))['params']
  assert 'neck' not in params and 'head' in params
  config.model.neck = 'fpn'
  with pytest.raises(errors.ConfigError, match="model.*Unknown detector neck 'fpn'"):
    experiments.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_detection_errors_reads_scratch_runs_and_skips_an_unfinished_round(
    tmp_path, monkeypatch, gap_benchmark):
  """The gap benchmark's scratch runs record its own source, and a round without its
  record (killed mid-run) holds a half-trained network, not a result."""
  errors_benchmark = conftest.load_script('benchmarks/detection_errors.py')
  config = gap_benchmark._config('detection', 'scratch', 1, {})
  (tmp_path / 'experiment.json').write_text(json.dumps(config.to_dict()))
  # As in a process of its own, which the gap benchmark did not start.
  experiments.sources.SOURCES.unregister('scratch')
  (tmp_path / 'magnitude' / 'round_00' / 'seed_0').mkdir(parents=True)
  assert errors_benchmark._start(str(tmp_path)) == []
  (tmp_path / 'magnitude' / 'round_01' / 'seed_0').mkdir(parents=True)  # not the dense round
  (tmp_path / 'magnitude' / 'round_01' / 'round.json').write_text('{}')
  assert errors_benchmark._start(str(tmp_path)) == []
  # Once the dense round has its record, each of its seeds is scored.
  (tmp_path / 'magnitude' / 'round_00' / 'seed_1').mkdir()
  (tmp_path / 'magnitude' / 'round_00' / 'seed_1_tensorboard').mkdir()
  (tmp_path / 'magnitude' / 'round_00' / 'round.json').write_text('{}')
  monkeypatch.setattr(errors_benchmark, 'final_variables', lambda run, like: run)
  monkeypatch.setattr(errors_benchmark, 'breakdown', lambda model, run, *_: os.path.basename(run))
  assert errors_benchmark._start(str(tmp_path)) == ['seed_0', 'seed_1']


# -------------------------------------------------------------------- the offline study

@pytest.mark.slow
def test_detection_offline_tiny_study_on_fake_finetunes(tmp_path, fake_finetunes):
  # What the study runs and writes; YOLO's masked training is the test above, and paper
  # mode's real run test_paper.py's.
  fake_finetunes.extra = lambda value: {'map': value / 2, 'detections': 10.0}
  config = defaults.load_config('detection_offline:tiny')
  out = experiments.run(config, str(tmp_path))
  rows = out['rows']
  assert {(r['method'], r['ticket']) for r in rows} == {
      ('scratch', 'scratch'), ('supervised', 'dense'), ('supervised', 'round_01'),
      ('random_global', 'random_global_round_01'), ('task_specific', 'task_specific_round_01')}
  # One fine-tune on the canvases per row: the dense θ_p is trained once, for its row and
  # as round 0 of the task-specific IMP.
  trained = [c for c in fake_finetunes.calls if c['dataset'] == 'digit_canvas_det_small']
  assert len(trained) == len(rows) == 5
  dense = next(r for r in rows if (r['method'], r['ticket']) == ('supervised', 'dense'))
  assert dense['test_map50'] == pytest.approx(0.5) and dense['test_map'] == pytest.approx(0.25)
  assert 'test_map_std' in dense
  specific = next(r for r in rows if r['method'] == 'task_specific')
  assert specific['sparsity'] == pytest.approx(0.2, abs=1e-4)
  imp_round = tmp_path / 'transfer/digit_canvas_det_small/task_specific/round_00/round.json'
  assert json.loads(imp_round.read_text())['runs'] == dense['runs']
  verdict = (tmp_path / 'verdict.txt').read_text()
  assert verdict.startswith('digit_canvas_det_small (mAP@0.5): upstream tickets match to ')
  for name in ('results.csv', 'extreme_sparsity.csv', 'map_vs_sparsity_digit_canvas_det_small.png'):
    assert os.path.exists(tmp_path / name), name
