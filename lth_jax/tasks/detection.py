"""Object detection: YOLOv4's neck and heads on the ResNet, the YOLO loss, VOC mAP.

The reference's `Detection/` recipe (a fork of argusswift/YOLOv4-pytorch): the
backbone's weights at the root of the tree (tickets, masks and PyTorch names are a
classifier's), SPP + PANet under `neck` and the three prediction heads under `head`
(never pruned), targets assigned on the device from padded boxes
(`lth_jax.tasks.yolo.build_targets`), the CIoU + focal objectness + BCE class loss, and
evaluation as its `Evaluator`: decode every scale, undo the letterbox, score =
objectness x best class probability > 0.005, per-class NMS at 0.45 (of the 300 best
boxes, keeping 100 an image), corners truncated to integers and scores rounded to 4
decimals (as it writes its result files), then VOC07 11-point AP per class over every
image of the split (`lth_jax.metrics.voc_map`) at IoU 0.5 (the headline mAP@0.5) and
averaged over 0.50:0.05:0.95. Difficult boxes are left out of training, as the
reference's annotation files leave them out, and are neither true nor false positives in
evaluation.

Model options (`ModelSpec.options`): neck_width, the neck's channels as a fraction of
the reference's (512, 1024, 2048) for ResNet-50 (1.0); neck, 'panet' (the reference's SPP +
PANet, the default) or 'none' (the heads on the backbone's stages; `lth_jax.models.yolo`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lth_jax import data, metrics
from lth_jax.data import DatasetInfo
from lth_jax.metrics.headline import Metric
from lth_jax.models import create_detector
from lth_jax.models.yolo import ANCHORS, decode
from lth_jax.runtime import sharding
from lth_jax.tasks import yolo
from lth_jax.tasks.task import Batch, ModelSpec, Task
from lth_jax.training import Evaluator

MAP50 = Metric('map50', 'mAP@0.5', 'map')
# NMS sees at most this many boxes an image and keeps at most MAX_DETECTIONS (the
# reference keeps every box above 0.005: thousands an image early in training, which
# makes host NMS slow); a trained detector has far fewer candidates.
MAX_CANDIDATES = 300
MAX_DETECTIONS = 100


@dataclasses.dataclass(frozen=True)
class YoloObjective:
  """The YOLOv4 loss of a batch of padded boxes (a `lth_jax.training.Objective`).

  Attributes:
    num_classes: object classes.
    image_size: the input side.
    strides: the detector's output strides.
  """
  num_classes: int
  image_size: int
  strides: tuple[int, ...]

  def __call__(self, model: nn.Module, params: Any, batch_stats: Any,
               batch: Batch) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
    """(loss, (new batch_stats, {'loss', 'ciou', 'conf', 'cls'}))."""
    outputs, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                                   batch['image'], train=True, mutable=['batch_stats'])
    targets = yolo.build_targets(batch['boxes'], batch['classes'], batch['valid'],
                                 image_size=self.image_size, num_classes=self.num_classes,
                                 strides=self.strides)
    loss, parts = yolo.yolo_loss(outputs, targets, strides=self.strides)
    return loss, (updates['batch_stats'], {'loss': loss, **parts})


def _predict(model: nn.Module, variables: Any, batch: Batch) -> dict[str, jax.Array]:
  outputs = model.apply(variables, batch['image'], train=False)
  rows = [decode(raw, ANCHORS[i], stride).reshape(raw.shape[0], -1, raw.shape[-1])
          for i, (raw, stride) in enumerate(zip(outputs, model.strides))]
  # The annotations ride along, so that every host sees the whole global batch.
  return {'predictions': jnp.concatenate(rows, axis=1),
          **{k: batch[k] for k in ('gt_boxes', 'classes', 'valid', 'difficult', 'hw', 'mask')}}


@functools.lru_cache(maxsize=16)
def _predict_step(model: nn.Module, mesh: Mesh) -> Any:
  replicated = sharding.replicated_sharding(mesh)
  return jax.jit(functools.partial(_predict, model),
                 in_shardings=(replicated, sharding.batch_sharding(mesh)),
                 out_shardings=replicated)


def detections(model: nn.Module, variables: Any, batches: Any, *, image_size: int,
               mesh: Mesh) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
  """Every real image's detections (original pixels) and ground truth, in order.

  Args:
    model: the detector.
    variables: {'params', 'batch_stats'}.
    batches: host-local evaluation batches of `lth_jax.data.detection.eval_batches`.
    image_size: the letterboxed input side.
    mesh: the device mesh.

  Returns:
    (per image [K, 6] rows (x1, y1, x2, y2, score, class) as the reference's evaluator
    writes them: corners truncated to integers, scores rounded to 4 decimals; per image
    {'boxes', 'classes', 'difficult'}), the inputs of `lth_jax.metrics.voc_map`.
  """
  step = _predict_step(model, mesh)
  variables = sharding.replicate(dict(variables), mesh)
  found, truths = [], []
  for batch in batches:
    out = jax.device_get(step(variables, sharding.shard_batch(batch, mesh)))
    for i in np.flatnonzero(out['mask'] > 0):
      found.append(yolo.round_like_reference(yolo.postprocess(
          out['predictions'][i], input_size=image_size,
          original_hw=tuple(int(v) for v in out['hw'][i]), max_candidates=MAX_CANDIDATES,
          max_det=MAX_DETECTIONS)))
      valid = out['valid'][i]
      truths.append({'boxes': out['gt_boxes'][i][valid], 'classes': out['classes'][i][valid],
                     'difficult': out['difficult'][i][valid]})
  return found, truths


def evaluate(model: nn.Module, variables: Any, batches: Any, *, num_classes: int,
             image_size: int, mesh: Mesh) -> dict[str, float]:
  """VOC mAP over every image of padded evaluation batches.

  Args:
    model: the detector.
    variables: {'params', 'batch_stats'}.
    batches: host-local evaluation batches.
    num_classes: object classes.
    image_size: the letterboxed input side.
    mesh: the device mesh.

  Returns:
    {'map50': VOC07 11-point mAP at IoU 0.5, 'map': averaged over IoU 0.50:0.05:0.95,
    'detections': mean detections per image}.
  """
  found, truths = detections(model, variables, batches, image_size=image_size, mesh=mesh)
  ranged = metrics.voc_map_range(found, truths, num_classes)
  thresholds = list(np.round(ranged['thresholds'], 2))
  return {'map50': float(ranged['map_per_threshold'][thresholds.index(0.5)]),
          'map': ranged['map'], 'detections': float(np.mean([len(f) for f in found]))}


class Detection(Task):
  """Object detection with YOLOv4 heads (see the module docstring)."""
  name = 'detection'
  metric = MAP50
  labels = data.BOX_LABELS
  options = ('neck', 'neck_width')

  def build_model(self, spec: ModelSpec, dataset: DatasetInfo) -> nn.Module:
    return create_detector(spec.arch, num_classes=dataset.num_classes,
                           width_multiplier=spec.width_multiplier, stem=spec.stem,
                           in_channels=dataset.image_shape[-1],
                           neck_width=spec.option('neck_width', 1.0),
                           neck=spec.option('neck', 'panet'), dtype=spec.dtype)

  def objective(self, model: nn.Module, dataset: DatasetInfo) -> YoloObjective:
    return YoloObjective(dataset.num_classes, dataset.image_shape[0], tuple(model.strides))

  def evaluator(self, model: nn.Module, dataset: DatasetInfo, *, batch_size: int,
                data_dir: str | None, mesh: Mesh) -> Evaluator:
    return lambda variables, split: evaluate(
        model, variables, data.detection.eval_batches(dataset, split, batch_size=batch_size,
                                                      data_dir=data_dir),
        num_classes=dataset.num_classes, image_size=dataset.image_shape[0], mesh=mesh)

  def train_batches(self, dataset: DatasetInfo, *, batch_size: int, epoch: int, seed: int,
                    data_dir: str | None, start_step: int) -> Iterator[Batch]:
    return data.detection.train_batches(dataset, batch_size=batch_size, epoch=epoch,
                                        seed=seed, data_dir=data_dir, start_step=start_step)
