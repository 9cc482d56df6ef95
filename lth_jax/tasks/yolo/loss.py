"""The reference's YOLOv4 loss (`Detection/model/loss/yolo_loss.py`), per scale and summed.

At every (cell, anchor) slot, with obj / mix / class targets from `targets.build_targets`:

- box: obj * (2 - w * h / (image_h * image_w)) * (1 - CIoU(pred, GT)) * mix, the weight
  favouring small GTs (w, h of the GT in pixels; the reference's img_size ** 2);
- objectness: focal BCE with gamma 2, alpha 1 (BCE(logit, obj) * |obj - sigmoid(logit)|^2)
  on positives, and on negatives whose decoded box has CIoU < 0.5 with every GT
  assigned to this scale (the reference takes CIoU, not IoU, for this ignore test),
  times mix (1 on unassigned slots);
- classes: obj * BCE(class logits, smoothed one-hot) * mix.

Each term is summed over the batch and divided by the batch size, then summed over
scales. The reference's trainer (`train_transfer.py`) calls it on batches of 8 and steps
SGD when `i % accumulate == 0` (default 2): a step applies the summed, not averaged,
gradients of two batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lth_jax.models.yolo import ANCHORS, STRIDES, decode
from lth_jax.tasks.yolo.boxes import ciou, xywh_to_xyxy
from lth_jax.tasks.yolo.targets import CLASS_CHANNEL, MIX_CHANNEL, ScaleTargets

# yolo_loss.py FocalLoss(gamma=2, alpha=1.0).
FOCAL_GAMMA = 2.0
FOCAL_ALPHA = 1.0
# Detection/config/yolov4_config.py TRAIN["IOU_THRESHOLD_LOSS"].
IGNORE_IOU = 0.5


def _scale_loss(raw: jax.Array, target: ScaleTargets, anchors: Any, stride: int,
                ignore_threshold: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(box, objectness, class) sums over one scale's batch, divided by the batch size."""
  raw = raw.astype(jnp.float32)
  batch, grid_h, grid_w = raw.shape[:3]
  pred = xywh_to_xyxy(decode(raw, anchors, stride)[..., :4])
  labels = target.labels
  gt_wh = labels[..., 2:4]
  obj = labels[..., 4:5]
  mix = labels[..., MIX_CHANNEL:MIX_CHANNEL + 1]

  scale = 2.0 - gt_wh[..., 0:1] * gt_wh[..., 1:2] / (grid_h * stride * grid_w * stride)
  box_ciou = ciou(pred, xywh_to_xyxy(labels[..., :4]))[..., None]
  box_loss = obj * scale * (1.0 - box_ciou) * mix

  # The ignore test only gates the loss: no gradient flows through it.
  gts = xywh_to_xyxy(target.boxes)[:, None, None, None, :, :]
  overlaps = ciou(jax.lax.stop_gradient(pred)[..., None, :], gts)
  overlaps = jnp.where(target.box_mask[:, None, None, None, :], overlaps, -jnp.inf)
  no_obj = (1.0 - obj) * (jnp.max(overlaps, axis=-1, keepdims=True) < ignore_threshold)
  logit = raw[..., 4:5]
  focal = (optax.sigmoid_binary_cross_entropy(logit, obj) * FOCAL_ALPHA
           * jnp.abs(obj - jax.nn.sigmoid(logit)) ** FOCAL_GAMMA)
  conf_loss = (obj + no_obj) * focal * mix

  cls_loss = obj * optax.sigmoid_binary_cross_entropy(raw[..., 5:],
                                                      labels[..., CLASS_CHANNEL:]) * mix
  return tuple(jnp.sum(term) / batch for term in (box_loss, conf_loss, cls_loss))


def yolo_loss(outputs: Sequence[jax.Array], targets: Sequence[ScaleTargets], *,
              anchors: Any = ANCHORS, strides: Sequence[int] = STRIDES,
              ignore_threshold: float = IGNORE_IOU) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The YOLOv4 loss of a batch. Pure jnp, jittable.

  Args:
    outputs: per scale, raw head outputs [batch, grid_h, grid_w, anchors, 5 + classes]
      (`YoloHead`), strides ascending.
    targets: per scale, `ScaleTargets` from `build_targets` for the same input size.
    anchors: [scales, anchors, 2] in stride units.
    strides: the scales' strides.
    ignore_threshold: a negative slot whose best CIoU with the scale's GTs reaches this
      is left out of the objectness loss.

  Returns:
    (total, {'ciou': box term, 'conf': objectness term, 'cls': class term}), each a
    float32 scalar summed over scales; total is their sum.
  """
  if not len(outputs) == len(targets) == len(strides) == len(anchors):
    raise ValueError(f'got {len(outputs)} outputs, {len(targets)} targets, {len(strides)} '
                     f'strides and {len(anchors)} anchor rows; pass one of each per scale.')
  for i, (raw, target) in enumerate(zip(outputs, targets)):
    if raw.shape[:-1] != target.labels.shape[:-1]:
      raise ValueError(f'scale {i}: outputs {raw.shape} and labels {target.labels.shape} '
                       'differ; build the targets for the same input size and batch.')
  parts = [_scale_loss(raw, target, anchor, stride, ignore_threshold)
           for raw, target, anchor, stride in zip(outputs, targets, anchors, strides)]
  box, conf, cls = (sum(p[i] for p in parts) for i in range(3))
  return box + conf + cls, {'ciou': box, 'conf': conf, 'cls': cls}
