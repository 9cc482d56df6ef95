"""PASCAL VOC detection mAP with the semantics of py-faster-rcnn's `voc_eval`.

The reference (`Detection/eval/voc_eval.py`, driven by `Detection/eval/evaluator.py` and
`Detection/ap.py`) scores every class separately: its detections over all images, by
descending score, are matched greedily against the ground truths of their image.

- IoU uses the +1 pixel convention: area (x2 - x1 + 1)(y2 - y1 + 1), intersection
  sides (min(x2) - max(x1) + 1) clipped at 0.
- A detection looks only at its best-overlapping ground truth of the same image and
  class (the first one on an IoU tie). If that IoU is STRICTLY above the threshold it
  is a TP when the ground truth is not difficult and not matched yet, an FP when it is
  already matched, and neither TP nor FP when it is difficult. Otherwise it is an FP.
- npos = number of non-difficult ground truths; recall = TP / npos, precision =
  TP / max(TP + FP, eps).
- AP is VOC07's 11-point interpolation (the reference's setting) or the area under the
  monotone precision envelope (VOC2010+), as `voc_ap`. The 11 recall levels are
  np.arange(0.0, 1.1, 0.1) as in `voc_ap`, i.e. 0.30000000000000004 and not 0.3: a
  recall of exactly 3/10 does not reach that level there, nor here.

Boxes and scores are used as given: the reference's evaluator truncates box corners to
integers and rounds scores to 4 decimals when it writes the result files voc_eval reads,
which `lth_jax.tasks.yolo.round_like_reference` does before this metric in
`lth_jax.tasks.detection`.

Deviations from the reference:
- Score ties (common with 4-decimal scores) are broken by input order (image order, then
  row order within an image): the sort is stable, where voc_eval's np.argsort quicksort
  is not.
- A class without non-difficult ground truth has AP NaN and is left out of the mAP.
  voc_eval divides by npos = 0 there (AP 0 with the 11-point metric, NaN with the area
  one) and ap.py divides the sum of APs by the number of classes regardless (never the
  case on VOC2007 test).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# The reference's thresholds th / 100 for th in range(50, 100, 5): exact decimals, where
# np.arange(0.5, 0.96, 0.05) would drift (0.7000000000000002) and move IoU ties.
COCO_THRESHOLDS = np.arange(50, 100, 5) / 100
_RECALL_LEVELS_07 = np.arange(0.0, 1.1, 0.1)


def _as_detections(dets: Any, image: int, num_classes: int) -> np.ndarray:
  dets = np.asarray(dets, dtype=np.float64)
  if dets.size == 0:
    return np.zeros((0, 6))
  if dets.ndim != 2 or dets.shape[1] != 6:
    raise ValueError(f'detections[{image}] has shape {dets.shape}; expected [N, 6] rows '
                     '[x1, y1, x2, y2, score, class].')
  if not np.isfinite(dets).all():
    raise ValueError(f'detections[{image}] holds a NaN or infinite value; drop such boxes '
                     'before evaluation.')
  _check_classes(dets[:, 5], f'detections[{image}][:, 5]', num_classes)
  return dets


def _check_classes(classes: np.ndarray, name: str, num_classes: int) -> None:
  if classes.size and ((classes != np.round(classes)).any() or classes.min() < 0
                       or classes.max() >= num_classes):
    raise ValueError(f'{name} must hold integer class ids in [0, {num_classes}), got '
                     f'{np.unique(classes)[:10]}; check num_classes.')


def _as_ground_truth(gt: Any, image: int, num_classes: int) -> tuple[np.ndarray, ...]:
  if not isinstance(gt, Mapping) or 'boxes' not in gt or 'classes' not in gt:
    raise ValueError(f'ground_truths[{image}] must be a dict with "boxes" [M, 4], '
                     '"classes" [M] and optionally "difficult" [M].')
  boxes = np.asarray(gt['boxes'], dtype=np.float64)
  if boxes.size == 0:
    boxes = np.zeros((0, 4))
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f'ground_truths[{image}]["boxes"] has shape {boxes.shape}; expected '
                     '[M, 4] rows [x1, y1, x2, y2].')
  m = len(boxes)
  classes = np.asarray(gt['classes'], dtype=np.float64).reshape(-1)
  difficult = np.asarray(gt.get('difficult', np.zeros(m, bool))).reshape(-1)
  for name, x in (('classes', classes), ('difficult', difficult)):
    if x.shape != (m,):
      raise ValueError(f'ground_truths[{image}]["{name}"] has {x.size} entries for {m} '
                       'boxes; give one per box.')
  _check_classes(classes, f'ground_truths[{image}]["classes"]', num_classes)
  return boxes, classes.astype(np.int64), difficult.astype(bool)


def _iou(dets: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
  """IoU [N, M] of detection rows and ground-truth boxes, with the +1 pixel convention."""
  ix1 = np.maximum(dets[:, None, 0], gt_boxes[None, :, 0])
  iy1 = np.maximum(dets[:, None, 1], gt_boxes[None, :, 1])
  ix2 = np.minimum(dets[:, None, 2], gt_boxes[None, :, 2])
  iy2 = np.minimum(dets[:, None, 3], gt_boxes[None, :, 3])
  inter = np.maximum(ix2 - ix1 + 1.0, 0.0) * np.maximum(iy2 - iy1 + 1.0, 0.0)
  det_area = (dets[:, 2] - dets[:, 0] + 1.0) * (dets[:, 3] - dets[:, 1] + 1.0)
  gt_area = (gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0)
  return inter / (det_area[:, None] + gt_area[None, :] - inter)


def _check_same_length(detections: Sequence[Any], ground_truths: Sequence[Any]) -> None:
  if len(detections) != len(ground_truths):
    raise ValueError(f'got detections for {len(detections)} images and ground truths for '
                     f'{len(ground_truths)}; give one entry per image to both (empty arrays '
                     'for an image without boxes).')


def _best_overlaps(dets: np.ndarray, gt_boxes: np.ndarray,
                   gt_classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per detection: IoU with its best same-class ground truth (-inf if none), and its index."""
  if len(gt_boxes) == 0:
    return np.full(len(dets), -np.inf), np.zeros(len(dets), np.int64)
  iou = _iou(dets, gt_boxes)
  iou = np.where(dets[:, None, 5].astype(np.int64) == gt_classes[None, :], iou, -np.inf)
  # argmax returns the first maximum, as voc_eval's; a row of -inf gives index 0, unused.
  best = iou.argmax(axis=1)
  return iou[np.arange(len(dets)), best], best


def _average_precision(tp: np.ndarray, fp: np.ndarray, npos: int,
                       use_07_metric: bool) -> float:
  """voc_ap on the cumulative precision/recall of score-sorted TP/FP flags."""
  tp, fp = np.cumsum(tp), np.cumsum(fp)
  recall = tp / npos
  precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  if use_07_metric:
    # Recall never decreases, so `recall >= t` is a suffix; its max precision is the
    # suffix maximum at the first index reaching t (0 if no detection reaches t).
    suffix_max = np.append(np.maximum.accumulate(precision[::-1])[::-1], 0.0)
    first = np.searchsorted(recall, _RECALL_LEVELS_07, side='left')
    return float(np.sum(suffix_max[first] / 11.0))
  mrec = np.concatenate(([0.0], recall, [1.0]))
  mpre = np.concatenate(([0.0], precision, [0.0]))
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]
  # voc_ap sums only where recall changes; the other steps have zero width anyway.
  return float(np.sum(np.diff(mrec) * mpre[1:]))


def _ap_table(detections: Sequence[Any], ground_truths: Sequence[Any], num_classes: int,
              thresholds: np.ndarray, use_07_metric: bool) -> np.ndarray:
  """AP [T, C] for every IoU threshold and class; NaN for a class without npos."""
  _check_same_length(detections, ground_truths)
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
  thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)

  # Matching depends on the threshold only through `overlap > threshold`: compute each
  # detection's best ground truth once, as a global id so images stay apart.
  # Seeded with empty arrays so that zero images still concatenate.
  rows, overlaps = [np.zeros((0, 6))], [np.zeros(0)]
  gt_ids, gt_difficult = [np.zeros(0, np.int64)], [np.zeros(0, bool)]
  npos = np.zeros(num_classes, np.int64)
  num_gts = 0
  for image, (dets, gt) in enumerate(zip(detections, ground_truths)):
    dets = _as_detections(dets, image, num_classes)
    boxes, classes, difficult = _as_ground_truth(gt, image, num_classes)
    npos += np.bincount(classes[~difficult], minlength=num_classes)
    overlap, best = _best_overlaps(dets, boxes, classes)
    rows.append(dets)
    overlaps.append(overlap)
    gt_ids.append(num_gts + best)
    gt_difficult.append(difficult[best] if len(boxes) else np.zeros(len(dets), bool))
    num_gts += len(boxes)
  dets, overlap = np.concatenate(rows), np.concatenate(overlaps)
  gt_id, difficult = np.concatenate(gt_ids), np.concatenate(gt_difficult)

  # Stable sort by class, then by descending score; ties keep input order.
  order = np.argsort(-dets[:, 4], kind='stable')
  order = order[np.argsort(dets[order, 5], kind='stable')]
  cls = dets[order, 5].astype(np.int64)
  overlap, gt_id, difficult = overlap[order], gt_id[order], difficult[order]
  bounds = np.searchsorted(cls, np.arange(num_classes + 1))

  table = np.full((len(thresholds), num_classes), np.nan)
  for t, threshold in enumerate(thresholds):
    hit = overlap > threshold
    candidate = np.flatnonzero(hit & ~difficult)
    # Within its class block, the first candidate (in score order) of a ground truth
    # claims it; later candidates of the same ground truth are duplicates, i.e. FPs.
    _, first = np.unique(gt_id[candidate], return_index=True)
    tp = np.zeros(len(cls), bool)
    tp[candidate[first]] = True
    # A hit on a difficult ground truth is neither TP nor FP; everything else not a TP is.
    fp = ~tp & ~(hit & difficult)
    for c in np.flatnonzero(npos):
      lo, hi = bounds[c], bounds[c + 1]
      table[t, c] = _average_precision(tp[lo:hi], fp[lo:hi], npos[c], use_07_metric)
  return table


def _class_mean(ap: np.ndarray) -> np.ndarray:
  """Mean over the classes axis (last) of the classes with ground truth (non-NaN)."""
  present = ~np.isnan(ap)
  count = present.sum(axis=-1)
  total = np.where(present, ap, 0.0).sum(axis=-1)
  return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def voc_map(detections: Sequence[np.ndarray], ground_truths: Sequence[Mapping[str, Any]],
            num_classes: int, iou_threshold: float = 0.5,
            use_07_metric: bool = True) -> dict[str, Any]:
  """VOC mean average precision at one IoU threshold (voc_eval semantics, module doc).

  Args:
    detections: per image, float [N, 6] rows [x1, y1, x2, y2, score, class], class an
      integer-valued float in [0, num_classes). An empty array for no detection.
    ground_truths: per image (same length), {'boxes': [M, 4], 'classes': [M],
      'difficult': [M] bool}; 'difficult' may be omitted (none difficult).
    num_classes: C.
    iou_threshold: a detection matches when its IoU is strictly above this.
    use_07_metric: True: VOC07 11-point AP (the reference's setting); False: area
      under the precision envelope.

  Returns:
    {'map': float, 'ap': float64 [C]}. A class without non-difficult ground truth has
    AP NaN and is excluded from 'map' (NaN if no class has any). A class with ground
    truth but no detection has AP 0.

  Raises:
    ValueError: mismatched lengths, malformed arrays, or class ids outside [0, C).
  """
  ap = _ap_table(detections, ground_truths, num_classes, np.array([iou_threshold]),
                 use_07_metric)[0]
  return {'map': float(_class_mean(ap)), 'ap': ap}


def voc_map_range(detections: Sequence[np.ndarray], ground_truths: Sequence[Mapping[str, Any]],
                  num_classes: int, thresholds: np.ndarray = COCO_THRESHOLDS,
                  use_07_metric: bool = True) -> dict[str, Any]:
  """VOC mAP averaged over IoU thresholds (by default 0.50:0.05:0.95, as the reference's AP).

  Same matching and AP as `voc_map` at each threshold; the reference's ap.py likewise
  averages the per-threshold mAPs. Its AP50 and AP75 are 'map_per_threshold' at 0.5
  and 0.75.

  Args:
    detections: per image, float [N, 6] rows [x1, y1, x2, y2, score, class].
    ground_truths: per image, {'boxes': [M, 4], 'classes': [M], 'difficult': [M]}.
    num_classes: C.
    thresholds: IoU thresholds [T]; a match needs an IoU strictly above each.
    use_07_metric: True: 11-point AP; False: area under the precision envelope.

  Returns:
    {'map': float, mean of 'map_per_threshold';
     'ap': float64 [C], per class mean over thresholds (NaN: no ground truth);
     'map_per_threshold': float64 [T]; 'ap_per_threshold': float64 [T, C];
     'thresholds': float64 [T]}.

  Raises:
    ValueError: mismatched lengths, malformed arrays, class ids outside [0, C), or no
      threshold.
  """
  thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
  if thresholds.size == 0:
    raise ValueError('thresholds is empty; give at least one IoU threshold.')
  table = _ap_table(detections, ground_truths, num_classes, thresholds, use_07_metric)
  per_threshold = _class_mean(table)
  return {
      'map': float(per_threshold.mean()),
      'ap': table.mean(axis=0),
      'map_per_threshold': per_threshold,
      'ap_per_threshold': table,
      'thresholds': thresholds,
  }


def error_breakdown(detections: Sequence[np.ndarray], ground_truths: Sequence[Mapping[str, Any]],
                    num_classes: int, iou_threshold: float = 0.5) -> dict[str, Any]:
  """Where a detector's mAP goes: finding the objects, or naming them.

  Per non-difficult ground truth, the detections of any class whose IoU is strictly above
  `iou_threshold` (the `voc_map` convention) locate it; the highest-scoring of them (the
  first on a score tie) names its class.

  Args:
    detections: per image, float [N, 6] rows [x1, y1, x2, y2, score, class].
    ground_truths: per image, {'boxes': [M, 4], 'classes': [M], 'difficult': [M]}.
    num_classes: C.
    iou_threshold: the IoU a detection must exceed to locate a ground truth.

  Returns:
    {'located': share of the non-difficult ground truths that some detection locates;
     'class_accuracy': share of the located ones whose best detection has their class
       (NaN if none is located);
     'agnostic_map': `voc_map` at `iou_threshold` with every class merged into one, the
       mAP a detector would have if it named every class right;
     'confusion': int64 [C, C], located ground truths by (true class, named class)}.

  Raises:
    ValueError: as `voc_map`.
  """
  _check_same_length(detections, ground_truths)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  total = 0
  merged_dets, merged_gts = [], []
  for image, (dets, gt) in enumerate(zip(detections, ground_truths)):
    dets = _as_detections(dets, image, num_classes)
    boxes, classes, difficult = _as_ground_truth(gt, image, num_classes)
    counted = ~difficult
    total += int(counted.sum())
    if len(dets) and len(boxes):
      iou = _iou(dets, boxes[counted])
      located = np.flatnonzero((iou > iou_threshold).any(axis=0))
      by_score = np.argsort(-dets[:, 4], kind='stable')
      # The first row in score order among those above the threshold.
      best = by_score[(iou[by_score][:, located] > iou_threshold).argmax(axis=0)]
      np.add.at(confusion, (classes[counted][located], dets[best, 5].astype(np.int64)), 1)
    merged_dets.append(np.concatenate([dets[:, :5], np.zeros((len(dets), 1))], axis=1))
    merged_gts.append({'boxes': boxes, 'classes': np.zeros(len(boxes), np.int64),
                       'difficult': difficult})
  found = int(confusion.sum())
  return {
      'located': found / total if total else float('nan'),
      'class_accuracy': np.trace(confusion) / found if found else float('nan'),
      'agnostic_map': voc_map(merged_dets, merged_gts, 1, iou_threshold)['map'],
      'confusion': confusion,
  }
