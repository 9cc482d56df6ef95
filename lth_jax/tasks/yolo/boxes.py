"""Box geometry for the YOLOv4 detector: conversions, IoU / GIoU / CIoU, NMS, post-processing.

Formulas follow the reference's `Detection/utils/tools.py`; areas are continuous
(w * h, no +1 pixel), there and here. The overlap functions broadcast like the
reference: `iou(a[:, None], b[None])` is the pairwise [N, M] matrix. They accept numpy
arrays (and then return numpy, which NMS uses) or jax arrays (and are then jittable).
Boxes given to them must have x1 <= x2 and y1 <= y2, which holds for every box built
from a width and height >= 0; the reference's torch versions re-sort corners first,
a no-op for such boxes.

`nms`, `postprocess` and `round_like_reference` are numpy, for evaluation, as the
reference's `eval/evaluator.py`: score = objectness x best class probability, keep the
scores above 0.005, per-class greedy NMS at 0.45, where the overlap is the GIoU
(`Giou_xyxy_numpy`), not the IoU, as in the reference's `tools.nms`, then integer corners
and 4-decimal scores, as it writes them to its result files.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

# Detection/config/yolov4_config.py VAL["CONF_THRESH"] and VAL["NMS_THRESH"].
SCORE_THRESHOLD = 0.005
NMS_IOU_THRESHOLD = 0.45


def _xp(*arrays: Any) -> Any:
  return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


def xywh_to_xyxy(boxes: Any) -> Any:
  """(cx, cy, w, h) -> (x1, y1, x2, y2) on the last axis.

  Args:
    boxes: [..., 4] numpy or jax array.

  Returns:
    [..., 4] of the same kind.
  """
  xp = _xp(boxes)
  half = boxes[..., 2:] * 0.5
  return xp.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def xyxy_to_xywh(boxes: Any) -> Any:
  """(x1, y1, x2, y2) -> (cx, cy, w, h) on the last axis.

  Args:
    boxes: [..., 4] numpy or jax array.

  Returns:
    [..., 4] of the same kind.
  """
  xp = _xp(boxes)
  return xp.concatenate([(boxes[..., :2] + boxes[..., 2:]) * 0.5,
                         boxes[..., 2:] - boxes[..., :2]], axis=-1)


def _overlap(b1: Any, b2: Any) -> tuple[Any, Any, Any]:
  """(iou, union, enclosing box size [..., 2]) of broadcast xyxy boxes."""
  xp = _xp(b1, b2)
  area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
  area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
  inter = xp.maximum(xp.minimum(b1[..., 2:], b2[..., 2:]) - xp.maximum(b1[..., :2], b2[..., :2]),
                     0.0)
  inter_area = inter[..., 0] * inter[..., 1]
  union = area1 + area2 - inter_area
  enclose = xp.maximum(xp.maximum(b1[..., 2:], b2[..., 2:]) - xp.minimum(b1[..., :2], b2[..., :2]),
                       0.0)
  return inter_area / union, union, enclose


def iou(boxes1: Any, boxes2: Any) -> Any:
  """Intersection over union of broadcast xyxy boxes (`iou_xyxy_numpy`, no epsilon).

  Args:
    boxes1: [..., 4] xyxy.
    boxes2: [..., 4] xyxy, broadcastable with boxes1.

  Returns:
    The broadcast shape without the last axis.
  """
  return _overlap(boxes1, boxes2)[0]


def giou(boxes1: Any, boxes2: Any) -> Any:
  """Generalised IoU: IoU - (enclosing area - union) / enclosing area (`Giou_xyxy_numpy`).

  Args:
    boxes1: [..., 4] xyxy.
    boxes2: [..., 4] xyxy, broadcastable with boxes1.

  Returns:
    The broadcast shape without the last axis, in [-1, 1].
  """
  ious, union, enclose = _overlap(boxes1, boxes2)
  enclose_area = enclose[..., 0] * enclose[..., 1]
  return ious - (enclose_area - union) / enclose_area


def ciou(boxes1: Any, boxes2: Any) -> Any:
  """Complete IoU as the reference's `CIOU_xywh_torch`, on xyxy boxes.

  CIoU = IoU - (d^2 / c^2 + alpha v), d the centre distance, c the enclosing box's
  diagonal, v = 4 / pi^2 (atan(w1 / h1) - atan(w2 / h2))^2 with heights clamped at 1e-6
  as the reference, alpha = v / (1 - IoU + v). Where 1 - IoU + v is 0 (the same box
  twice) the reference divides 0 by 0 and returns NaN; here alpha v takes its limit 0,
  with finite gradients.

  Args:
    boxes1: [..., 4] xyxy (the loss passes predictions).
    boxes2: [..., 4] xyxy, broadcastable with boxes1.

  Returns:
    The broadcast shape without the last axis; 1 for identical boxes.
  """
  xp = _xp(boxes1, boxes2)
  ious, _, enclose = _overlap(boxes1, boxes2)
  diagonal = enclose[..., 0] ** 2 + enclose[..., 1] ** 2
  centre = (boxes1[..., :2] + boxes1[..., 2:] - boxes2[..., :2] - boxes2[..., 2:]) * 0.5
  distance = centre[..., 0] ** 2 + centre[..., 1] ** 2
  size1 = xp.maximum(boxes1[..., 2:] - boxes1[..., :2], 0.0)
  size2 = xp.maximum(boxes2[..., 2:] - boxes2[..., :2], 0.0)
  v = (4 / math.pi ** 2) * (xp.arctan(size1[..., 0] / xp.maximum(size1[..., 1], 1e-6))
                            - xp.arctan(size2[..., 0] / xp.maximum(size2[..., 1], 1e-6))) ** 2
  denominator = 1 - ious + v
  # Double where: the unselected branch must not divide by zero, or its NaN gradient leaks.
  safe = xp.where(denominator > 0, denominator, 1.0)
  alpha = xp.where(denominator > 0, v / safe, 0.0)
  return ious - (distance / diagonal + alpha * v)


# Boxes whose GIoUs with the later boxes of their class `nms` computes at once.
_NMS_BLOCK = 128


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, *,
        iou_threshold: float = NMS_IOU_THRESHOLD, score_threshold: float = SCORE_THRESHOLD,
        max_det: int | None = None) -> np.ndarray:
  """Per-class greedy NMS with the reference's semantics (`tools.nms`, method 'nms').

  Boxes scoring <= score_threshold are dropped first (the evaluator's filter). Within
  each class, the best remaining box is kept and every remaining box whose GIoU with it
  is > iou_threshold is dropped; equal scores keep input order. GIoU <= IoU, so this
  suppresses less than IoU-based NMS would; degenerate pairs (NaN GIoU) never suppress.

  Args:
    boxes: [N, 4] xyxy.
    scores: [N].
    classes: [N] integer class ids.
    iou_threshold: the GIoU above which a box is suppressed.
    score_threshold: boxes must score strictly above it.
    max_det: keep at most this many (the best-scoring) after NMS; None keeps all, as
      the reference.

  Returns:
    int64 indices into the inputs of the kept boxes: classes ascending, scores
    descending within a class (the reference groups classes in set order).
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  classes = np.asarray(classes).reshape(-1)
  if not len(boxes) == len(scores) == len(classes):
    raise ValueError(f'nms needs as many boxes ({len(boxes)}), scores ({len(scores)}) and '
                     f'classes ({len(classes)}); pass one row per detection.')
  kept = []
  candidates = np.flatnonzero(scores > score_threshold)
  for cls in np.unique(classes[candidates]):
    order = candidates[classes[candidates] == cls]
    order = order[np.argsort(-scores[order], kind='stable')]
    ranked, alive = boxes[order], np.ones(len(order), bool)
    # The GIoUs of a block of surviving boxes with every later box at once (the same
    # float64 arithmetic as one box at a time, in bounded memory); the greedy pass
    # then only reads rows of it.
    for start in range(0, len(order), _NMS_BLOCK):
      rows = start + np.flatnonzero(alive[start:start + _NMS_BLOCK])
      with np.errstate(invalid='ignore', divide='ignore'):
        spared = ~(giou(ranked[rows][:, None], ranked[None, start:]) > iou_threshold)
      for row, i in zip(spared, rows.tolist()):
        if alive[i]:
          kept.append(order[i])
          alive[i + 1:] &= row[i + 1 - start:]
  kept = np.asarray(kept, np.int64)
  if max_det is not None and len(kept) > max_det:
    best = np.sort(np.argsort(-scores[kept], kind='stable')[:max_det])
    kept = kept[best]
  return kept


def postprocess(predictions: np.ndarray, *, input_size: int, original_hw: tuple[int, int],
                score_threshold: float = SCORE_THRESHOLD,
                iou_threshold: float = NMS_IOU_THRESHOLD,
                valid_scale: tuple[float, float] = (0.0, math.inf),
                max_det: int | None = None, max_candidates: int | None = None) -> np.ndarray:
  """Detections on the original image from one image's decoded predictions.

  The reference's `Evaluator.__convert_pred` then `nms`: undo the letterbox resize
  (ratio = min(input / w, input / h), centred padding), clip to [0, w - 1] x [0, h - 1],
  zero boxes left inverted by the clipping, keep sqrt(area) inside valid_scale and
  score = objectness x best class probability > score_threshold, then per-class NMS.

  Args:
    predictions: [N, 5 + num_classes] rows (cx, cy, w, h, objectness, class probs...)
      in input pixels, e.g. every scale of `decode` reshaped and concatenated.
    input_size: the square network input size the image was letterboxed to.
    original_hw: the original image's (height, width).
    score_threshold: minimum score (exclusive).
    iou_threshold: NMS GIoU threshold.
    valid_scale: (min, max) exclusive bounds on sqrt(box area).
    max_det: see `nms`.
    max_candidates: NMS sees only this many best-scoring boxes (None: all, as the
      reference; an untrained detector scores thousands of boxes an image above 0.005).

  Returns:
    [K, 6] float64 rows (x1, y1, x2, y2, score, class) in original pixels.
  """
  predictions = np.asarray(predictions, np.float64)
  if predictions.ndim != 2 or predictions.shape[1] < 6:
    raise ValueError(f'predictions has shape {predictions.shape}; expected [N, 5 + classes] '
                     'decoded rows, e.g. decoded.reshape(-1, decoded.shape[-1]).')
  height, width = original_hw
  ratio = min(input_size / width, input_size / height)
  offset = np.array([input_size - ratio * width, input_size - ratio * height]) / 2
  corners = xywh_to_xyxy(predictions[:, :4])
  corners = (corners - np.tile(offset, 2)) / ratio
  corners = np.concatenate([np.maximum(corners[:, :2], 0.0),
                            np.minimum(corners[:, 2:], [width - 1, height - 1])], axis=-1)
  inverted = (corners[:, 0] > corners[:, 2]) | (corners[:, 1] > corners[:, 3])
  corners[inverted] = 0.0
  scale = np.sqrt(np.prod(corners[:, 2:] - corners[:, :2], axis=-1))
  classes = np.argmax(predictions[:, 5:], axis=-1)
  scores = predictions[:, 4] * predictions[np.arange(len(predictions)), 5 + classes]
  keep = (valid_scale[0] < scale) & (scale < valid_scale[1]) & (scores > score_threshold)
  corners, scores, classes = corners[keep], scores[keep], classes[keep]
  if max_candidates is not None and len(scores) > max_candidates:
    best = np.sort(np.argsort(-scores, kind='stable')[:max_candidates])
    corners, scores, classes = corners[best], scores[best], classes[best]
  kept = nms(corners, scores, classes, iou_threshold=iou_threshold,
             score_threshold=score_threshold, max_det=max_det)
  return np.concatenate([corners[kept], scores[kept, None], classes[kept, None]], axis=-1)


def round_like_reference(detections: np.ndarray) -> np.ndarray:
  """Detections as the reference's evaluator writes them for `voc_eval`.

  `Evaluator.APs_voc` writes a box's corners as np.array(bbox[:4], dtype=np.int32),
  which truncates them toward zero (they are >= 0 there, so it floors them), and its
  score as '%.4f'; `voc_eval` scores what it reads back.

  Args:
    detections: [K, 6] rows (x1, y1, x2, y2, score, class), e.g. `postprocess`'s.

  Returns:
    A float64 copy with integer corners and scores rounded to 4 decimals.
  """
  out = np.array(detections, np.float64).reshape(-1, 6)
  out[:, :4] = np.trunc(out[:, :4])
  out[:, 4] = [float('%.4f' % score) for score in out[:, 4]]
  return out
