"""YOLOv4 target assignment with static shapes, equivalent to the reference's `__creat_label`.

`Detection/utils/datasets.py` assigns every ground truth (GT) box on its own:

- at each scale i the GT, in units of stride_i, is compared with the scale's 3 anchors
  placed at the centre of the cell holding the GT's centre (IoU of the full boxes, so
  the centre's offset within the cell counts, not only width and height);
- every anchor with IoU > 0.3 gets the GT, on every scale where one does;
- a GT with no such anchor anywhere gets the single best of the 9 anchors (the first
  on a tie, np.argmax);
- an assigned slot (cell, anchor) holds (cx, cy, w, h) in input pixels, objectness 1,
  the mix weight and the label-smoothed one-hot (delta 0.01: onehot * 0.99 + 0.01 / C);
  unassigned slots are all zero except the mix weight, 1;
- a slot two GTs claim holds the later one (the reference's loop overwrites): here
  the valid GT with the highest index in the padded list, an order-independent
  scatter-max, so the result does not depend on where the padding sits;
- each scale also lists the GTs assigned to it, for the ignore mask of the objectness
  loss.

Here GTs are padded to a fixed `max_boxes` with a validity mask, so one compiled train
step serves every batch. Deviations: the reference's per-scale list has 150 slots and
wraps around beyond that; here it has max_boxes slots and never wraps. A centre outside
the image (possible only for malformed boxes) is clamped to the border cell, where the
reference would wrap around or fail.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax.models.yolo import ANCHORS, STRIDES
from lth_jax.tasks.yolo.boxes import iou, xywh_to_xyxy, xyxy_to_xywh

# Detection/utils/datasets.py `iou_mask = iou_scale > 0.3`.
POSITIVE_IOU = 0.3
# Detection/utils/data_augment.py LabelSmooth(delta=0.01).
LABEL_SMOOTHING = 0.01
# Label channels: 0:4 box (cx, cy, w, h) in input pixels, 4 objectness, 5 mix weight,
# 6: smoothed class targets; the reference's layout.
MIX_CHANNEL = 5
CLASS_CHANNEL = 6


class ScaleTargets(NamedTuple):
  """What the loss needs at one scale.

  Attributes:
    labels: [batch, grid_h, grid_w, anchors, 6 + num_classes] dense label grid.
    boxes: [batch, max_boxes, 4] every GT as (cx, cy, w, h) in input pixels.
    box_mask: [batch, max_boxes] bool, the GTs assigned to this scale (the reference's
      sbboxes / mbboxes / lbboxes), which feed the ignore mask.
  """
  labels: jax.Array
  boxes: jax.Array
  box_mask: jax.Array


def grid_sizes(image_size: int | tuple[int, int], strides: Sequence[int] = STRIDES
               ) -> tuple[tuple[int, int], ...]:
  """(grid_h, grid_w) of each scale for an input size.

  Args:
    image_size: input side, or (height, width).
    strides: the scales' strides.

  Returns:
    One (grid_h, grid_w) per stride.

  Raises:
    ValueError: a side is not a multiple of every stride.
  """
  height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
  if any(side % s for side in (height, width) for s in strides):
    raise ValueError(f'input size {height}x{width} must be a multiple of every stride '
                     f'{tuple(strides)}; resize or pad the images to a multiple of {max(strides)}.')
  return tuple((height // s, width // s) for s in strides)


def _assign_image(boxes: jax.Array, classes: jax.Array, valid: jax.Array, mix: jax.Array, *,
                  grids: tuple[tuple[int, int], ...], anchors: np.ndarray,
                  strides: Sequence[int], num_classes: int) -> tuple[ScaleTargets, ...]:
  """One image's targets: boxes [M, 4] xyxy, classes/valid/mix [M]."""
  num_boxes, (num_scales, num_anchors) = boxes.shape[0], anchors.shape[:2]
  xywh = xyxy_to_xywh(boxes.astype(jnp.float32))
  scaled = xywh[:, None, :] / jnp.asarray(strides, jnp.float32)[None, :, None]   # [M, S, 4]
  cells = jnp.floor(scaled[..., :2])
  anchor_boxes = jnp.concatenate([
      jnp.broadcast_to(cells[:, :, None, :] + 0.5, (num_boxes, num_scales, num_anchors, 2)),
      jnp.broadcast_to(jnp.asarray(anchors), (num_boxes, num_scales, num_anchors, 2))], axis=-1)
  overlap = iou(xywh_to_xyxy(scaled)[:, :, None, :], xywh_to_xyxy(anchor_boxes))  # [M, S, A]
  positive = overlap > POSITIVE_IOU
  best = jax.nn.one_hot(jnp.argmax(overlap.reshape(num_boxes, -1), axis=-1),
                        num_scales * num_anchors, dtype=jnp.bool_)
  assigned = jnp.where(positive.any(axis=(1, 2), keepdims=True), positive,
                       best.reshape(positive.shape)) & valid[:, None, None]

  smooth = (jax.nn.one_hot(classes, num_classes) * (1 - LABEL_SMOOTHING)
            + LABEL_SMOOTHING / num_classes)
  rows = jnp.concatenate([xywh, jnp.ones((num_boxes, 1)), mix[:, None].astype(jnp.float32),
                          smooth], axis=-1)
  empty = jnp.zeros(CLASS_CHANNEL + num_classes).at[MIX_CHANNEL].set(1.0)
  box_index = jnp.arange(num_boxes)
  out = []
  for s, (grid_h, grid_w) in enumerate(grids):
    x = jnp.clip(cells[:, s, 0].astype(jnp.int32), 0, grid_w - 1)
    y = jnp.clip(cells[:, s, 1].astype(jnp.int32), 0, grid_h - 1)
    slots = (y * grid_w + x)[:, None] * num_anchors + jnp.arange(num_anchors)[None, :]
    claims = jnp.where(assigned[:, s], box_index[:, None], -1)
    winner = jnp.full(grid_h * grid_w * num_anchors, -1).at[slots.ravel()].max(claims.ravel())
    labels = jnp.where(winner[:, None] >= 0, rows[jnp.maximum(winner, 0)], empty)
    out.append(ScaleTargets(labels.reshape(grid_h, grid_w, num_anchors, -1), xywh,
                            assigned[:, s].any(axis=-1)))
  return tuple(out)


def build_targets(boxes: Any, classes: Any, valid: Any, mix: Any = None, *,
                  image_size: int | tuple[int, int], num_classes: int,
                  anchors: Any = ANCHORS, strides: Sequence[int] = STRIDES
                  ) -> tuple[ScaleTargets, ...]:
  """Dense per-scale targets for a batch of padded ground truths. Pure jnp, jittable.

  Args:
    boxes: [batch, max_boxes, 4] (x1, y1, x2, y2) in input pixels (after the resize).
    classes: [batch, max_boxes] integer class ids.
    valid: [batch, max_boxes] bool, False for padding.
    mix: [batch, max_boxes] mixup weight of each GT (lambda or 1 - lambda); None for 1.
    image_size: the input side, or (height, width); static.
    num_classes: number of object classes.
    anchors: [scales, anchors, 2] (w, h) in stride units, e.g. `ANCHORS`.
    strides: the scales' strides.

  Returns:
    One `ScaleTargets` per scale, strides ascending.
  """
  anchors = np.asarray(anchors, np.float32)
  if anchors.ndim != 3 or anchors.shape[0] != len(strides) or anchors.shape[2] != 2:
    raise ValueError(f'anchors has shape {anchors.shape}; expected [{len(strides)} scales, '
                     'anchors, 2] (w, h) in stride units, one row of anchors per stride.')
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
  boxes = jnp.asarray(boxes)
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f'boxes has shape {boxes.shape}; expected [batch, max_boxes, 4] xyxy, '
                     'padded to a fixed max_boxes with valid=False rows.')
  mix = jnp.ones(boxes.shape[:2]) if mix is None else mix
  for name, value in (('classes', classes), ('valid', valid), ('mix', mix)):
    if jnp.shape(value) != boxes.shape[:2]:
      raise ValueError(f'{name} has shape {jnp.shape(value)}; expected {boxes.shape[:2]}, '
                       'one entry per (image, box) of `boxes`.')
  assign = functools.partial(_assign_image, grids=grid_sizes(image_size, strides),
                             anchors=anchors, strides=strides, num_classes=num_classes)
  return jax.vmap(assign)(boxes, jnp.asarray(classes, jnp.int32), jnp.asarray(valid, bool),
                          jnp.asarray(mix, jnp.float32))
