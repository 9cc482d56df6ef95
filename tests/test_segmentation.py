"""Segmentation transfer: joint transforms, VOC folders, exact mIoU evaluation, the task's
loss, masked fine-tuning of DeepLab, the reference's files, and the offline study."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from lth_jax import data, errors, experiments, masks as masks_lib, metrics, pruning
from lth_jax.data import canvases, segmentation as seg_data
from lth_jax.experiments import config as defaults
from lth_jax.experiments import wiring
from lth_jax.interop import checkpoints, mask_files
from lth_jax.models import create_deeplab, init_variables
from lth_jax.runtime import sharding
from lth_jax.tasks import segmentation as seg_task

SMALL = data.get_info('digit_canvas_seg_small')


def _example(height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
  """An image whose every pixel encodes its label: value = label + 1 (never 0)."""
  rng = np.random.default_rng(seed)
  label = rng.integers(0, 11, (height, width)).astype(np.uint8)
  label[rng.random((height, width)) < 0.1] = 255
  image = (label.astype(np.int32) + 1) % 256  # 255 -> 0 would look like padding
  image[label == 255] = 200
  return {'image': image.astype(np.uint8)[..., None], 'label': label}


def _unnormalised(image: np.ndarray, info: data.DatasetInfo) -> np.ndarray:
  return (image * np.asarray(info.std) + np.asarray(info.mean)) * info.pixel_max


def _decode(pixel: np.ndarray) -> np.ndarray:
  """The label an `_example` pixel value stands for (0 -> padding, 255)."""
  value = np.rint(pixel).astype(np.int32)
  return np.where(value == 0, 255, np.where(value == 200, 255, value - 1))


@pytest.mark.parametrize('augmentation', ['scale_crop', 'scale_crop_flip'])
def test_crop_and_flip_move_labels_with_pixels(augmentation):
  info = dataclasses.replace(SMALL, image_shape=(32, 32, 1), scale_range=(1.0, 1.0),
                             augmentation=augmentation)
  example = _example(40, 24)  # cropped in height, padded in width
  flipped = 0
  for seed in range(12):
    out = seg_data.preprocess({k: tf.constant(v) for k, v in example.items()}, info=info,
                              seed=tf.constant([seed, 7], tf.int64))
    image, label = out['image'].numpy()[..., 0], out['label'].numpy()
    assert image.shape == label.shape == (32, 32) and label.dtype == np.int32
    np.testing.assert_array_equal(_decode(_unnormalised(image, info)), label)
    # The crop is a window of the example padded to 32 columns (labels 255), maybe flipped.
    padded = np.pad(example['label'].astype(np.int32), ((0, 0), (0, 8)), constant_values=255)
    windows = [padded[top:top + 32] for top in range(9)]
    as_is = any(np.array_equal(label, w) for w in windows)
    mirrored = any(np.array_equal(label, w[:, ::-1]) for w in windows)
    assert as_is or mirrored
    flipped += mirrored
  # Flips only where the augmentation has them, and then about half the time.
  assert (flipped > 0) == (augmentation == 'scale_crop_flip')


def test_random_scale_moves_labels_with_pixels():
  info = dataclasses.replace(SMALL, image_shape=(48, 48, 1), scale_range=(1.5, 1.5))
  # Constant 8 x 8 blocks: bilinear image and nearest labels agree inside each block.
  blocks = np.random.default_rng(0).integers(0, 11, (4, 4)).astype(np.uint8)
  label = np.kron(blocks, np.ones((8, 8), np.uint8))
  example = {'image': (label + 1)[..., None], 'label': label}
  out = seg_data.preprocess({k: tf.constant(v) for k, v in example.items()}, info=info,
                            seed=tf.constant([3, 1], tf.int64))
  value = _unnormalised(out['image'].numpy()[..., 0], info)
  label = out['label'].numpy()
  # Block interiors: pixels whose 3 x 3 neighbourhood is one value.
  windows = np.lib.stride_tricks.sliding_window_view(np.pad(value, 1, mode='edge'), (3, 3))
  exact = np.ptp(windows, axis=(-2, -1)) < 1e-3
  assert exact.mean() > 0.5
  np.testing.assert_array_equal(np.rint(value[exact]).astype(int) - 1, label[exact])


def test_evaluation_pads_whole_images_and_refuses_larger_ones():
  info = dataclasses.replace(SMALL, image_shape=(32, 32, 1))
  example = _example(20, 30)
  out = seg_data.preprocess({k: tf.constant(v) for k, v in example.items()}, info=info,
                            seed=None)
  label = out['label'].numpy()
  np.testing.assert_array_equal(label[:20, :30], example['label'])
  assert (label[20:] == 255).all() and (label[:, 30:] == 255).all()
  with pytest.raises(tf.errors.InvalidArgumentError, match='larger than its image_shape'):
    seg_data.preprocess({k: tf.constant(v) for k, v in _example(33, 10).items()}, info=info,
                        seed=None)


# PIL resamples in uint8: it rounds after its horizontal pass and again after its vertical
# one (each at most half a level off), lth_jax resizes in float, so images agree to within
# one level of 255 (the float slack is rounding of the normalisation).
PIL_LEVELS = 1.0 + 1e-3


def _voc_like(size: int, **changes) -> data.DatasetInfo:
  """voc2012_seg (its transforms) with a small crop, to keep the examples small."""
  return dataclasses.replace(data.get_info('voc2012_seg'), image_shape=(size, size, 3),
                             **changes)


def _rgb_example(height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Noise pixels (the hardest case for resampling) and VOC-like labels."""
  rng = np.random.default_rng(seed)
  label = rng.integers(0, 21, (height, width)).astype(np.uint8)
  label[rng.random((height, width)) < 0.1] = 255
  return {'image': rng.integers(0, 256, (height, width, 3), dtype=np.uint8), 'label': label}


def _run(example: dict[str, np.ndarray], info: data.DatasetInfo,
         seed: tf.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
  """preprocess's (pixels in 0-255, labels) of an example."""
  out = seg_data.preprocess({k: tf.constant(v) for k, v in example.items()}, info=info,
                            seed=seed)
  return _unnormalised(out['image'].numpy(), info), out['label'].numpy()


def _reference_crop_val(example: dict[str, np.ndarray],
                        size: int) -> tuple[np.ndarray, np.ndarray]:
  """The reference's ExtResize(size) + ExtCenterCrop(size), torchvision 0.x on PIL."""
  from PIL import Image

  image, label = Image.fromarray(example['image']), Image.fromarray(example['label'])
  w, h = image.size
  if not ((w <= h and w == size) or (h <= w and h == size)):  # F.resize(img, int)
    ow, oh = (size, int(size * h / w)) if w < h else (int(size * w / h), size)
    image, label = image.resize((ow, oh), Image.BILINEAR), label.resize((ow, oh), Image.NEAREST)
  w, h = image.size
  top, left = int(round((h - size) / 2.)), int(round((w - size) / 2.))  # F.center_crop
  box = (left, top, left + size, top + size)
  return np.asarray(image.crop(box), np.float64), np.asarray(label.crop(box))


# Smaller and larger than the crop, portrait and landscape, the short side already the
# crop's, square; centre-crop offsets of (68 - 33) / 2 = 17.5 and (54 - 33) / 2 = 10.5 round
# to even (18, 10); 22 -> 33 has nearest-neighbour ties.
@pytest.mark.parametrize('shape', [(20, 30), (30, 20), (50, 70), (70, 45), (33, 60),
                                   (40, 40), (44, 91), (22, 36), (36, 22)])
def test_voc_evaluation_is_the_references_resize_and_centre_crop(shape):
  info = _voc_like(33)
  assert info.seg_eval == 'resize_center_crop'  # voc2012_seg's default
  example = _rgb_example(*shape)
  image, label = _run(example, info, seed=None)
  want_image, want_label = _reference_crop_val(example, 33)
  np.testing.assert_array_equal(label, want_label)
  np.testing.assert_allclose(image, want_image, rtol=0, atol=PIL_LEVELS)


def _reference_pad(example: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """ExtRandomCrop(size, pad_if_needed=True)'s padding: F.pad(img, int) on PIL images."""
  from PIL import Image, ImageOps

  image, label = Image.fromarray(example['image']), Image.fromarray(example['label'])
  if image.size[0] < size:
    border = int((1 + size - image.size[0]) / 2)
    image, label = ImageOps.expand(image, border, 0), ImageOps.expand(label, border, 0)
  if image.size[1] < size:
    border = int((1 + size - image.size[1]) / 2)
    image, label = ImageOps.expand(image, border, 0), ImageOps.expand(label, border, 0)
  return {'image': np.asarray(image), 'label': np.asarray(label)}


@pytest.mark.parametrize('shape,padded', [
    ((40, 20), (54, 34)),   # short width only: its padding grows the height too
    ((20, 40), (34, 54)),   # short height only
    ((25, 30), (33, 38)),   # both short: the width's padding leaves the height short
    ((10, 12), (34, 36)),
])
def test_voc_training_pads_as_the_references_random_crop(shape, padded):
  info = _voc_like(33, scale_range=(1.0, 1.0), augmentation='scale_crop')
  assert info.seg_train_pad == 'background'  # voc2012_seg's default
  example = _rgb_example(*shape)
  want = _reference_pad(example, 33)
  assert want['label'].shape == padded
  # The training crop is a window of that padded pair (labels 0 in the padding).
  windows = set()
  for seed in range(6):
    image, label = _run(example, info, seed=tf.constant([seed, 5], tf.int64))
    found = [(top, left) for top in range(padded[0] - 32) for left in range(padded[1] - 32)
             if np.array_equal(label, want['label'][top:top + 33, left:left + 33])]
    assert found, 'the crop is no window of the reference padding'
    top, left = found[0]
    np.testing.assert_allclose(image, want['image'][top:top + 33, left:left + 33],
                               atol=1e-3)
    windows.add(found[0])
  assert len(windows) > 1
  got = seg_data._pad_as_reference(tf.constant(example['image'], tf.float32),
                                   tf.constant(example['label']), 33)
  np.testing.assert_array_equal(got[0].numpy(), want['image'])
  np.testing.assert_array_equal(got[1].numpy(), want['label'])


@pytest.mark.parametrize('shape,scale,size', [
    ((40, 60), 0.57, 40),   # shrinks to int(22.8) x int(34.2) = 22 x 34: antialiased
    ((15, 11), 1.37, 24),   # grows to int(20.55) x int(15.07) = 20 x 15
])
def test_random_scale_is_the_references_ext_random_scale(shape, scale, size):
  # Padded at the bottom and right to exactly the crop: the scaled image sits at (0, 0).
  info = _voc_like(size, scale_range=(scale, scale), augmentation='scale_crop',
                   seg_train_pad='ignore')
  example = _rgb_example(*shape)
  image, label = _run(example, info, seed=tf.constant([0, 1], tf.int64))
  from PIL import Image

  target = (int(shape[1] * scale), int(shape[0] * scale))  # ExtRandomScale, PIL (w, h)
  want_image = np.asarray(Image.fromarray(example['image']).resize(target, Image.BILINEAR),
                          np.float64)
  want_label = np.asarray(Image.fromarray(example['label']).resize(target, Image.NEAREST))
  h, w = want_label.shape
  np.testing.assert_array_equal(label[:h, :w], want_label)
  assert (label[h:] == 255).all() and (label[:, w:] == 255).all()
  np.testing.assert_allclose(image[:h, :w], want_image, rtol=0, atol=PIL_LEVELS)


def test_segmentation_protocol_is_set_from_the_config():
  config = defaults.load_config('segmentation_voc')
  config.pretrained.source = 'random'
  info = wiring.dataset_info(experiments.specs.data_spec(config), 'voc2012_seg')
  assert (info.seg_eval, info.seg_train_pad) == ('resize_center_crop', 'background')
  canvas = wiring.dataset_info(experiments.specs.data_spec(config), 'digit_canvas_seg')
  assert (canvas.seg_eval, canvas.seg_train_pad) == ('pad', 'ignore')
  config.data.seg_eval, config.data.seg_train_pad = 'pad', 'ignore'
  info = wiring.dataset_info(experiments.specs.data_spec(config), 'voc2012_seg')
  assert (info.seg_eval, info.seg_train_pad) == ('pad', 'ignore')
  config.data.seg_eval = 'crop'
  with pytest.raises(errors.ConfigError, match='data.seg_eval'):
    defaults.validate(config)


def test_canvas_batches_are_deterministic_and_resume():
  batches = lambda start=0: list(seg_data.train_batches(
      SMALL, batch_size=32, epoch=1, seed=4, data_dir=None, start_step=start))
  first, again, resumed = batches(), batches(), batches(start=3)
  assert len(first) == 8 and len(resumed) == 5
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['label'], b['label'])
  for a, b in zip(first[3:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
  assert set(np.unique(first[0]['label'])) <= set(range(11)) | {255}
  test = list(seg_data.eval_batches(SMALL, 'test', batch_size=48, data_dir=None))
  assert [b['mask'].sum() for b in test] == [48, 48, 32]
  expected = canvases.split_canvases('test', num=128)['segmentation']
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in test])[:128], expected)


# ------------------------------------------------------------------------- VOC on disk

def _write_voc(root, sizes: dict[str, list[tuple[int, int]]]) -> dict[str, np.ndarray]:
  """A VOCdevkit/VOC2012 folder with JPEGs, palette label PNGs and the split lists."""
  from PIL import Image

  base = root / 'VOCdevkit' / 'VOC2012'
  for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
    (base / sub).mkdir(parents=True, exist_ok=True)
  labels, rng = {}, np.random.default_rng(0)
  for split, shapes in sizes.items():
    ids = [f'2012_{split}_{i:03d}' for i in range(len(shapes))]
    (base / 'ImageSets' / 'Segmentation' / f'{split}.txt').write_text('\n'.join(ids) + '\n')
    for image_id, (h, w) in zip(ids, shapes):
      Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
          base / 'JPEGImages' / f'{image_id}.jpg')
      label = rng.integers(0, 21, (h, w)).astype(np.uint8)
      label[0] = 255  # an object border
      png = Image.fromarray(label, mode='P')
      png.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
      png.save(base / 'SegmentationClass' / f'{image_id}.png')
      labels[image_id] = label
  return labels


def test_voc_folder_is_read_exactly(tmp_path):
  labels = _write_voc(tmp_path, {'train': [(30, 40)] * 5, 'val': [(41, 33), (20, 48), (48, 48)]})
  # Whole-image evaluation shows what was read, pixel for pixel.
  info = dataclasses.replace(data.get_info('voc2012_seg'), image_shape=(48, 48, 3),
                             split_sizes={'train': 4, 'val': 1, 'test': 3}, seg_eval='pad')
  seg_data.check_available(info, str(tmp_path))
  test = list(seg_data.eval_batches(info, 'test', batch_size=2, data_dir=str(tmp_path)))
  assert [b['mask'].tolist() for b in test] == [[1, 1], [1, 0]]
  for got, (image_id, shape) in zip(np.concatenate([b['label'] for b in test]),
                                    [('2012_val_000', (41, 33)), ('2012_val_001', (20, 48)),
                                     ('2012_val_002', (48, 48))]):
    np.testing.assert_array_equal(got[:shape[0], :shape[1]], labels[image_id])
    assert (got[shape[0]:] == 255).all() and (got[:, shape[1]:] == 255).all()
  # 'val' is the end of VOC's train list, 'train' the rest.
  val = next(seg_data.eval_batches(info, 'val', batch_size=1, data_dir=str(tmp_path)))
  np.testing.assert_array_equal(val['label'][0, :30, :40], labels['2012_train_004'])
  train = list(seg_data.train_batches(info, batch_size=2, epoch=0, seed=0,
                                      data_dir=str(tmp_path)))
  assert len(train) == 2 and train[0]['image'].shape == (2, 48, 48, 3)


def test_missing_or_miscounted_voc_is_a_clear_error(tmp_path):
  info = data.get_info('voc2012_seg')
  with pytest.raises(errors.DatasetNotFoundError, match='VOCdevkit'):
    data.check_available(info, str(tmp_path), data.PIXEL_LABELS)
  _write_voc(tmp_path, {'train': [(8, 8)] * 3, 'val': [(8, 8)]})
  with pytest.raises(errors.DatasetNotFoundError, match='1,464'):
    data.check_available(info, str(tmp_path), data.PIXEL_LABELS)
  os.remove(tmp_path / 'VOCdevkit/VOC2012/SegmentationClass/2012_val_000.png')
  small = dataclasses.replace(info, split_sizes={'train': 2, 'val': 1, 'test': 1})
  with pytest.raises(errors.DatasetNotFoundError, match='2012_val_000.png'):
    data.check_available(small, str(tmp_path), data.PIXEL_LABELS)


def test_voc_config_refuses_a_missing_folder_before_claiming_the_workdir(tmp_path):
  config = defaults.load_config('segmentation_voc')
  config.pretrained.source = 'random'
  config.num_devices = 1
  config.data.data_dir = str(tmp_path / 'nowhere')
  with pytest.raises(errors.DatasetNotFoundError, match='VOCdevkit'):
    experiments.run(config, str(tmp_path / 'workdir'))
  assert not os.path.exists(tmp_path / 'workdir')


# ------------------------------------------------------------- loss and exact evaluation

def test_pixel_cross_entropy_is_torch_with_ignore_index():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 5, 6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, (2, 5, 6))
  labels[rng.random(labels.shape) < 0.3] = 255
  total, counted = seg_task.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 255)
  expected = torch.nn.CrossEntropyLoss(ignore_index=255)(
      torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels))
  assert int(counted) == (labels != 255).sum()
  np.testing.assert_allclose(float(total / counted), float(expected), rtol=1e-6)


def test_evaluation_sums_every_pixel_once_over_padded_batches():
  model = create_deeplab('resnet18', num_classes=11, stem='cifar', in_channels=1,
                         width_multiplier=0.125, head_channels=8, low_level_channels=4,
                         aspp_rates=(1, 2, 3))
  variables = init_variables(model, jax.random.key(0), 56)
  info = dataclasses.replace(SMALL, split_sizes={**SMALL.split_sizes, 'val': 13})
  mesh = sharding.make_mesh()
  got = seg_task.evaluate(model, variables, seg_data.eval_batches(info, 'val', batch_size=8,
                                                                  data_dir=None),
                          num_classes=11, ignore_label=255, mesh=mesh)
  arrays = canvases.split_canvases('val', num=13)
  images = (arrays['image'] / 255.0 - info.mean[0]) / info.std[0]
  logits = np.asarray(model.apply(variables, jnp.asarray(images, jnp.float32), train=False))
  confusion = metrics.confusion_matrix(arrays['segmentation'], logits.argmax(-1), 11)
  miou, _ = metrics.mean_iou(confusion)
  assert got['miou'] == pytest.approx(miou, abs=1e-12)
  assert got['pixel_accuracy'] == pytest.approx(metrics.pixel_accuracy(confusion), abs=1e-12)
  labels = arrays['segmentation']
  counted = labels != 255
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  loss = -np.take_along_axis(log_p, np.where(counted, labels, 0)[..., None], -1)[..., 0]
  assert got['loss'] == pytest.approx(loss[counted].mean(), rel=1e-5)


# --------------------------------------------------------------- masked DeepLab training

@pytest.mark.slow
def test_finetune_keeps_pruned_backbone_weights_zero_and_never_prunes_the_head(tmp_path):
  config = defaults.load_config('segmentation_offline:tiny')
  config.optim.num_epochs = 1  # 8 steps: every kept weight moves
  config.model.width_multiplier = 0.0625  # half the tiny width: faster
  experiment = experiments.specs.build(config)
  task, info = wiring.task_and_data(experiment.data, 'digit_canvas_seg_small')
  info = dataclasses.replace(info, split_sizes={'train': 64, 'val': 16, 'test': 16})
  model = task.build_model(experiment.model, info)
  start = init_variables(model, jax.random.key(0), 56)
  dense = masks_lib.init(start['params'])
  ticket = pruning.random_like(jax.random.key(1), pruning.to_sparsity(
      start['params'], dense, 0.5), layerwise=False)
  # Only the backbone's 19 convolutions (the stem excluded) are prunable.
  prunable = masks_lib.prunable_leaves(ticket)
  assert len(prunable) == 19 and not any(n.startswith('classifier') for n in prunable)
  variables = {'params': masks_lib.apply(start['params'], ticket),
               'batch_stats': start['batch_stats']}
  mesh = wiring.mesh_for(experiment)
  result = wiring.make_finetune(experiment, model, task, info, mesh)(
      variables, ticket, seed=0, checkpoint_dir=str(tmp_path / 'run'))
  trained = jax.device_get(result.variables['params'])
  for name, leaf in masks_lib.prunable_leaves(trained).items():
    kept = np.asarray(prunable[name])
    assert (np.asarray(leaf)[~kept] == 0).all(), name
    assert (np.asarray(leaf)[kept] != np.asarray(
        masks_lib.prunable_leaves(start['params'])[name])[kept]).mean() > 0.5, name
  # The head trained at every weight.
  head = jax.tree.leaves(trained['classifier'])
  assert all((np.asarray(a) != 0).mean() > 0.99 for a in head if a.ndim == 4)
  assert 0 <= result.test <= 1 and set(result.test_metrics) == {'miou', 'pixel_accuracy',
                                                                 'loss'}


# --------------------------------------------------------------- the reference's files

def test_reference_mask_file_fits_deeplab_resnet50():
  model = create_deeplab('resnet50', num_classes=21)
  params = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 64))['params']
  rng = np.random.default_rng(0)
  names = mask_files.to_pytorch(masks_lib.init(params))
  assert len(names) == 52  # the reference's 52 prunable convolutions
  reference = {k: (rng.random(v.shape) < 0.6).astype(np.float32) for k, v in names.items()}
  ticket = mask_files.from_pytorch(reference, like=params)
  assert masks_lib.sparsity(ticket) == pytest.approx(
      1 - np.mean(np.concatenate([v.ravel() for v in reference.values()])), abs=1e-3)
  assert all(np.asarray(m).all() for m in jax.tree.leaves(ticket['classifier']))
  back = mask_files.to_pytorch(ticket)
  for key, value in reference.items():
    np.testing.assert_array_equal(back[key], value != 0)


def test_reference_segmentation_imp_file_loads_weights_and_mask(tmp_path):
  pytest.importorskip('torch')
  import torch
  import torch.nn.utils.prune  # a submodule torch does not import itself

  from lth_jax.testing.torch_reference import build_torch_deeplab

  kwargs = dict(num_classes=5, width_multiplier=0.25, head_channels=16,
                low_level_channels=8, aspp_rates=(1, 2, 3))
  torch.manual_seed(0)
  net = build_torch_deeplab('resnet18', **kwargs).eval()
  for name, module in net.backbone.named_modules():
    if isinstance(module, torch.nn.Conv2d) and name != 'conv1':
      torch.nn.utils.prune.custom_from_mask(
          module, 'weight', (torch.rand(module.weight.shape) < 0.5).float())
  # main_imp_imagenet.py's `seg_backbone_imp{k}.pth`.
  path = tmp_path / 'seg_backbone_imp3.pth'
  torch.save({'first_conv': net.backbone.conv1.state_dict(),
              'backbone': net.backbone.state_dict(),
              'classifier': net.classifier.state_dict()}, path)
  model = create_deeplab('resnet18', **kwargs)
  variables = checkpoints.load_pytorch(str(path), model)
  ticket = mask_files.from_pytorch(str(path), like=variables['params'])
  assert len(masks_lib.prunable_leaves(ticket)) == 19
  assert masks_lib.sparsity(ticket) == pytest.approx(0.5, abs=0.02)
  for leaf, kept in zip(masks_lib.prunable_leaves(variables['params']).values(),
                        masks_lib.prunable_leaves(ticket).values()):
    assert (np.asarray(leaf)[~np.asarray(kept)] == 0).all()
  images = np.random.default_rng(0).standard_normal((1, 3, 40, 40)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(images)).numpy().transpose(0, 2, 3, 1)
  got = np.asarray(model.apply(variables, images.transpose(0, 2, 3, 1), train=False))
  assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


# -------------------------------------------------------------------- the offline study

@pytest.mark.slow
def test_segmentation_offline_tiny_study_on_fake_finetunes(tmp_path, fake_finetunes):
  # What the study runs and writes; DeepLab's masked training is the test above, and paper
  # mode's real run test_paper.py's.
  fake_finetunes.extra = lambda value: {'pixel_accuracy': 0.9, 'loss': 1.0}
  config = defaults.load_config('segmentation_offline:tiny')
  out = experiments.run(config, str(tmp_path))
  rows = out['rows']
  methods = {(r['method'], r['ticket']) for r in rows}
  assert methods == {
      ('scratch', 'scratch'), ('supervised', 'dense'), ('supervised', 'round_01'),
      ('random_global', 'random_global_round_01'), ('task_specific', 'task_specific_round_01')}
  assert all(r['task'] == 'digit_canvas_seg_small' for r in rows)
  trained = [c for c in fake_finetunes.calls if c['dataset'] == 'digit_canvas_seg_small']
  assert len(trained) == len(rows) == 5  # the dense θ_p once, as below
  dense = next(r for r in rows if (r['method'], r['ticket']) == ('supervised', 'dense'))
  assert dense['test_miou'] == pytest.approx(0.5)
  # Task-specific IMP pruned 20% of the backbone's prunable weights, judged against the
  # dense transfer of the same θ_p.
  specific = next(r for r in rows if r['method'] == 'task_specific')
  assert specific['sparsity'] == pytest.approx(0.2, abs=1e-4)
  # Its dense round 0 is the dense transfer, trained once (no transfer unit of its own).
  imp_round = tmp_path / 'transfer/digit_canvas_seg_small/task_specific/round_00/round.json'
  assert json.loads(imp_round.read_text())['runs'] == dense['runs']
  assert not (tmp_path / 'transfer/digit_canvas_seg_small/supervised/dense').exists()
  assert specific['matching'] == (specific['test_miou'] >= dense['test_miou'] - 1e-9)
  verdict = (tmp_path / 'verdict.txt').read_text()
  assert verdict.startswith('digit_canvas_seg_small (mIoU): upstream tickets match to ')
  assert 'task-specific to' in verdict and 'random global to' in verdict
  for name in ('results.csv', 'results_digit_canvas_seg_small.csv', 'extreme_sparsity.csv',
               'miou_vs_sparsity_digit_canvas_seg_small.png'):
    assert os.path.exists(tmp_path / name), name
  calls = len(fake_finetunes.calls)
  again = experiments.run(config, str(tmp_path))  # finished: read back, not recomputed
  assert [r['test_miou'] for r in again['rows']] == [r['test_miou'] for r in rows]
  assert len(fake_finetunes.calls) == calls


def test_bad_deeplab_option_is_refused_before_the_workdir(tmp_path):
  config = defaults.load_config('segmentation_offline:tiny')
  config.model.output_stride = 32
  with pytest.raises(errors.ConfigError, match='output_stride'):
    experiments.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)
