"""Metrics: confusion matrix / IoU against pixel loops, VOC mAP by hand and against voc_eval."""

from __future__ import annotations

import functools
import warnings

import jax
import numpy as np
import pytest

from lth_jax.metrics import (COCO_THRESHOLDS, confusion_matrix, confusion_matrix_jax,
                             error_breakdown, mean_iou, pixel_accuracy, voc_map, voc_map_range)

# ----------------------------------------------------------------------------- segmentation

C = 6
ABSENT = 4  # occurs in neither labels nor predictions


def _label_maps(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """[4, 12, 12] labels with 255s and labels >= C; predictions in [0, C); class ABSENT unused."""
  rng = np.random.default_rng(seed)
  allowed = np.array([c for c in range(C) if c != ABSENT])
  labels = rng.choice(np.concatenate([allowed, [C, C + 3, 255, 255]]), size=(4, 12, 12))
  predictions = rng.choice(allowed, size=labels.shape)
  # Mostly right, so that IoUs are not all small.
  right = rng.random(labels.shape) < 0.5
  predictions = np.where(right & (labels < C), labels, predictions)
  return labels.astype(np.uint8), predictions.astype(np.int32)


def _loop_confusion(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
  cm = np.zeros((C, C), np.int64)
  for t, p in zip(labels.ravel().tolist(), predictions.ravel().tolist()):
    if t != 255 and 0 <= t < C:
      cm[t, p] += 1
  return cm


def _loop_iou(cm: np.ndarray) -> list[float]:
  iou = []
  for c in range(C):
    tp = int(cm[c, c])
    fp = sum(int(cm[r, c]) for r in range(C) if r != c)
    fn = sum(int(cm[c, k]) for k in range(C) if k != c)
    iou.append(tp / (tp + fp + fn) if tp + fp + fn else float('nan'))
  return iou


def test_confusion_matrix_and_iou_match_pixel_loops():
  labels, predictions = _label_maps()
  expected = _loop_confusion(labels, predictions)
  cm = confusion_matrix(labels, predictions, C)
  assert cm.dtype == np.int64
  np.testing.assert_array_equal(cm, expected)
  # Skipped pixels really were skipped: 255s and labels >= C.
  assert cm.sum() == np.sum(labels < C) < labels.size

  miou, iou = mean_iou(cm)
  expected_iou = _loop_iou(expected)
  assert np.isnan(iou[ABSENT]) and np.isnan(expected_iou[ABSENT])
  np.testing.assert_allclose(iou, expected_iou, rtol=0, atol=1e-15)
  present = [x for x in expected_iou if x == x]
  assert len(present) == C - 1
  assert miou == pytest.approx(sum(present) / len(present), abs=1e-15)
  assert pixel_accuracy(cm) == pytest.approx(
      np.sum((labels == predictions) & (labels < C)) / np.sum(labels < C), abs=1e-15)


def test_confusion_matrix_ignore_label_inside_range_and_errors():
  labels = np.array([[0, 1], [2, 2]])
  predictions = np.array([[0, 2], [2, 1]])
  np.testing.assert_array_equal(
      confusion_matrix(labels, predictions, 3, ignore_label=2),
      [[1, 0, 0], [0, 0, 1], [0, 0, 0]])
  with pytest.raises(ValueError, match='same shape'):
    confusion_matrix(labels, predictions[:1], 3)
  with pytest.raises(ValueError, match='integer'):
    confusion_matrix(labels.astype(np.float32), predictions, 3)
  with pytest.raises(ValueError, match=r'\[0, 2\)'):
    confusion_matrix(labels, predictions, 2, ignore_label=255)
  with pytest.raises(ValueError, match='square'):
    mean_iou(np.zeros((2, 3)))


def test_mean_iou_all_absent_is_nan_without_warning():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    miou, iou = mean_iou(np.zeros((3, 3), np.int64))
    accuracy = pixel_accuracy(np.zeros((3, 3), np.int64))
  assert np.isnan(miou) and np.isnan(iou).all() and np.isnan(accuracy)


def test_confusion_matrix_jax_jitted_matches_host_and_weights_drop_images():
  labels, predictions = _label_maps(seed=1)
  count = jax.jit(functools.partial(confusion_matrix_jax, num_classes=C))
  got = count(labels, predictions)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, confusion_matrix(labels, predictions, C))

  keep = np.array([1, 0, 1, 1], np.float32)
  weighted = count(labels, predictions, weights=keep)
  np.testing.assert_array_equal(
      weighted, confusion_matrix(labels[keep > 0], predictions[keep > 0], C))
  # Per-pixel weights: the same zeros spelled out over [N, H, W].
  np.testing.assert_array_equal(
      count(labels, predictions, weights=np.broadcast_to(keep[:, None, None], labels.shape)),
      weighted)

  # An out-of-range prediction cannot crash a jitted step; it is dropped.
  bad = predictions.copy()
  bad[0, 0, 0] = C
  expected = confusion_matrix(np.where(bad == C, 255, labels), predictions, C)
  np.testing.assert_array_equal(count(labels, bad), expected)
  with pytest.raises(ValueError, match='leading axes'):
    confusion_matrix_jax(labels, predictions, C, weights=np.ones(3))


# ----------------------------------------------------------------------------- detection

# Three 10 x 10 ground truths (area (9 - 0 + 1)^2 = 100 under the +1 convention).
GT_A, GT_B, GT_C = [0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9]
FAR = [100, 100, 109, 109]  # overlaps nothing


def _dets(*rows: tuple) -> np.ndarray:
  """Rows (box, score) or (box, score, class) -> [N, 6]."""
  return np.array([[*box, score, *cls] for box, score, *cls in
                   (row if len(row) == 3 else (*row, 0) for row in rows)], np.float64)


def _gt(*boxes, classes=None, difficult=None) -> dict:
  n = len(boxes)
  return {'boxes': np.array(boxes, np.float64).reshape(n, 4),
          'classes': np.zeros(n, np.int64) if classes is None else np.array(classes),
          'difficult': np.zeros(n, bool) if difficult is None else np.array(difficult)}


# In score order TP (A), FP, TP (B); C is missed; npos = 3.
#   recall    1/3, 1/3, 2/3      precision 1, 1/2, 2/3
#   11-point: t = 0, .1, .2, .3 reach recall 1/3 -> max precision 1; t = .4, .5, .6 reach
#             2/3 -> 2/3; t = .7 ... 1 are not reached -> 0.  (4 + 3 * 2/3) / 11 = 6/11.
#   area:     envelope over recall 0 -> 1/3 is 1, over 1/3 -> 2/3 it is 2/3, beyond 0:
#             1/3 + 2/9 = 5/9.
TP_FP_TP = _dets((GT_A, 0.9), (FAR, 0.8), (GT_B, 0.7))


def _both_aps(dets, gts, num_classes=1, **kwargs) -> tuple[dict, dict]:
  return (voc_map(dets, gts, num_classes, use_07_metric=True, **kwargs),
          voc_map(dets, gts, num_classes, use_07_metric=False, **kwargs))


def test_voc_map_hand_worked_tp_fp_tp():
  r07, area = _both_aps([TP_FP_TP], [_gt(GT_A, GT_B, GT_C)])
  assert r07['map'] == pytest.approx(6 / 11, abs=1e-15)
  assert area['map'] == pytest.approx(5 / 9, abs=1e-15)
  np.testing.assert_allclose(r07['ap'], [6 / 11], atol=1e-15)

  # The same over three images; a second class (class 1) is scored apart: AP 1.
  dets = [_dets((GT_A, 0.9), (GT_A, 0.95, 1)), _dets((FAR, 0.8)), _dets((GT_B, 0.7)),
          np.zeros((0, 6))]
  gts = [_gt(GT_A, GT_A, classes=[0, 1]), _gt(), _gt(GT_B), _gt(GT_C)]
  r07, area = _both_aps(dets, gts, num_classes=2)
  np.testing.assert_allclose(r07['ap'], [6 / 11, 1.0], atol=1e-15)
  np.testing.assert_allclose(area['ap'], [5 / 9, 1.0], atol=1e-15)
  assert r07['map'] == pytest.approx((6 / 11 + 1) / 2, abs=1e-15)


def test_error_breakdown_hand_worked():
  """A is located by a wrong-class box that outscores a right-class one (named wrong), B is
  located and named, the difficult C counts nowhere, D is missed. Merged into one class,
  in score order: TP (A), TP (B), neither (C), FP (far), FP (A again): recall 1/3, 2/3 at
  precision 1, so 7 of the 11 recall levels reach precision 1."""
  a, b, c = (0, 0, 9, 9), (20, 20, 29, 29), (40, 40, 49, 49)
  dets = [_dets((a, 0.9, 1), (a, 0.5, 0), (b, 0.8, 1), (c, 0.7, 2)),
          _dets(((30, 30, 39, 39), 0.6, 0))]
  gts = [_gt(a, b, c, classes=[0, 1, 2], difficult=[False, False, True]), _gt(a)]
  out = error_breakdown(dets, gts, num_classes=3)
  assert out['located'] == pytest.approx(2 / 3, abs=1e-15)
  assert out['class_accuracy'] == 0.5
  assert out['agnostic_map'] == pytest.approx(7 / 11, abs=1e-15)
  np.testing.assert_array_equal(out['confusion'], [[0, 1, 0], [0, 1, 0], [0, 0, 0]])
  # The same boxes, each named right: accuracy 1 and an unchanged class-agnostic mAP; a
  # box at IoU exactly 0.5 (10 x 10 against 10 x 20 sharing half) locates nothing.
  right = [_dets((a, 0.9, 0), (b, 0.8, 1)), np.zeros((0, 6))]
  out = error_breakdown(right, [_gt(a, b, classes=[0, 1]), _gt(a)], num_classes=3)
  assert (out['located'], out['class_accuracy']) == (2 / 3, 1.0)
  half = error_breakdown([_dets(((0, 0, 9, 19), 0.9))], [_gt(a)], num_classes=1)
  assert (half['located'], np.isnan(half['class_accuracy'])) == (0.0, True)
  with pytest.raises(ValueError, match='class ids in'):
    error_breakdown([_dets((a, 0.9, 3))], [_gt(a)], num_classes=3)


def test_voc_map_difficult_match_is_neither_tp_nor_fp():
  difficult_box = [60, 0, 69, 9]
  dets = _dets((GT_A, 0.9), (difficult_box, 0.85), (FAR, 0.8), (GT_B, 0.7))
  gts = _gt(GT_A, GT_B, GT_C, difficult_box, difficult=[False, False, False, True])
  r07, area = _both_aps([dets], [gts])
  assert r07['map'] == pytest.approx(6 / 11, abs=1e-15)
  assert area['map'] == pytest.approx(5 / 9, abs=1e-15)
  # Without the flag the same detection is a TP (TP, TP, FP, TP; npos 4): recall 1/4, 1/2,
  # 1/2, 3/4 at precision 1, 1, 2/3, 3/4 -> 11-point (6 * 1 + 2 * 3/4) / 11 = 15/22.
  plain = _gt(GT_A, GT_B, GT_C, difficult_box)
  assert voc_map([dets], [plain], 1)['map'] == pytest.approx(15 / 22, abs=1e-15)


def test_voc_map_best_overlap_tie_goes_to_first_ground_truth():
  # Two identical ground truths, the first difficult: voc_eval's argmax picks the first,
  # so the detection is ignored (no TP: AP 0), although the second one is free.
  gts = _gt(GT_A, GT_A, difficult=[True, False])
  assert voc_map([_dets((GT_A, 0.9))], [gts], 1)['map'] == 0.0
  gts = _gt(GT_A, GT_A, difficult=[False, True])
  assert voc_map([_dets((GT_A, 0.9))], [gts], 1)['map'] == 1.0


def test_voc_map_11_point_levels_are_voc_aps_floats():
  # Three TPs among ten ground truths: recall 0.1, 0.2, 0.3 at precision 1. voc_ap's levels
  # are np.arange(0.0, 1.1, 0.1), whose fourth is 0.30000000000000004 > 3/10: only t = 0,
  # 0.1, 0.2 are reached, AP 3/11 (4/11 with levels i/10).
  boxes = [[20 * i, 0, 20 * i + 9, 9] for i in range(10)]
  dets = _dets(*((box, 0.9 - 0.1 * i) for i, box in enumerate(boxes[:3])))
  assert voc_map([dets], [_gt(*boxes)], 1)['map'] == pytest.approx(3 / 11, abs=1e-15)
  assert voc_map([dets], [_gt(*boxes)], 1, use_07_metric=False)['map'] == pytest.approx(
      0.3, abs=1e-15)


def test_voc_map_score_ties_keep_input_order():
  # Equal scores: the earlier row (image order, then row order) ranks first.
  #   FP, TP, TP: recall 0, 1/2, 1 at precision 0, 1/2, 2/3 -> every level gets 2/3.
  #   TP, FP, TP: levels 0 ... 0.5 get 1, 0.6 ... 1 get 2/3 -> (6 + 5 * 2/3) / 11 = 28/33.
  gts = [_gt(GT_A, GT_B)]
  fp_first = _dets((FAR, 0.5), (GT_A, 0.5), (GT_B, 0.4))
  tp_first = fp_first[[1, 0, 2]]
  assert voc_map([fp_first], gts, 1)['map'] == pytest.approx(2 / 3, abs=1e-15)
  assert voc_map([tp_first], gts, 1)['map'] == pytest.approx(28 / 33, abs=1e-15)
  # Across images, the earlier image's detection ranks first.
  a, far, b = _dets((GT_A, 0.5)), _dets((FAR, 0.5)), _dets((GT_B, 0.4))
  assert voc_map([a, np.concatenate([far, b])], [_gt(GT_A), _gt(GT_B)], 1)['map'] == \
      pytest.approx(28 / 33, abs=1e-15)
  assert voc_map([np.concatenate([far, b]), a], [_gt(GT_B), _gt(GT_A)], 1)['map'] == \
      pytest.approx(2 / 3, abs=1e-15)


def test_voc_map_duplicate_detection_is_fp():
  shifted_a = [1, 0, 10, 9]  # IoU 90 / 110 with A, still above 0.5
  for duplicate in (GT_A, shifted_a):
    dets = _dets((GT_A, 0.9), (duplicate, 0.8), (GT_B, 0.7))
    r07, area = _both_aps([dets], [_gt(GT_A, GT_B, GT_C)])
    assert r07['map'] == pytest.approx(6 / 11, abs=1e-15)
    assert area['map'] == pytest.approx(5 / 9, abs=1e-15)


def test_voc_map_iou_exactly_at_threshold_is_not_tp():
  # [0, 0, 4, 9] has area 5 * 10 = 50 and lies inside A: IoU = 50 / (100 + 50 - 50) = 1/2.
  half = _dets(([0, 0, 4, 9], 0.9))
  assert voc_map([half], [_gt(GT_A)], 1, iou_threshold=0.5)['map'] == 0.0
  assert voc_map([half], [_gt(GT_A)], 1, iou_threshold=0.49)['map'] == 1.0
  # [0, 0, 5, 9]: IoU 60 / 100 -> a TP at 0.50 and 0.55 only, so the 0.50:0.95 mean is 2/10.
  six_tenths = _dets(([0, 0, 5, 9], 0.9))
  result = voc_map_range([six_tenths], [_gt(GT_A)], 1)
  np.testing.assert_array_equal(result['map_per_threshold'], [1, 1] + [0] * 8)
  assert result['map'] == pytest.approx(0.2, abs=1e-15)
  np.testing.assert_array_equal(result['thresholds'], COCO_THRESHOLDS)


def test_voc_map_classes_without_ground_truth_are_excluded():
  dets = [_dets((GT_A, 0.9), (GT_B, 0.8, 1), (GT_C, 0.7, 2))]
  # Class 1: no ground truth at all; class 2: only a difficult one; class 3: nothing.
  gts = [_gt(GT_A, GT_C, GT_B, classes=[0, 2, 3], difficult=[False, True, False])]
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    result = voc_map(dets, gts, 4)
    none = voc_map(dets[:1], [_gt()], 4)
  assert result['ap'][0] == 1.0 and result['ap'][3] == 0.0
  assert np.isnan(result['ap'][1]) and np.isnan(result['ap'][2])
  assert result['map'] == 0.5
  assert np.isnan(none['map']) and np.isnan(none['ap']).all()


def test_voc_map_input_errors():
  gts = [_gt(GT_A)]
  with pytest.raises(ValueError, match='one entry per image'):
    voc_map([TP_FP_TP, TP_FP_TP], gts, 1)
  with pytest.raises(ValueError, match=r'\[N, 6\]'):
    voc_map([TP_FP_TP[:, :5]], gts, 1)
  with pytest.raises(ValueError, match=r'class ids in \[0, 1\)'):
    voc_map([_dets((GT_A, 0.9, 1))], gts, 1)
  with pytest.raises(ValueError, match='one per box'):
    voc_map([TP_FP_TP], [{'boxes': [GT_A, GT_B], 'classes': [0]}], 1)
  with pytest.raises(ValueError, match=r'\[M, 4\]'):
    voc_map([TP_FP_TP], [{'boxes': [[0, 0, 9]], 'classes': [0]}], 1)
  with pytest.raises(ValueError, match='NaN'):
    voc_map([_dets((GT_A, float('nan')))], gts, 1)


def _reference_voc_ap(rec, prec, use_07_metric):
  """py-faster-rcnn's voc_ap, transcribed literally."""
  if use_07_metric:
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
      if np.sum(rec >= t) == 0:
        p = 0
      else:
        p = np.max(prec[rec >= t])
      ap = ap + p / 11.0
  else:
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
      mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
  return ap


def _reference_voc_eval(detections, ground_truths, classname, ovthresh, use_07_metric):
  """py-faster-rcnn's voc_eval per-class loop, transcribed literally (files -> lists)."""
  class_recs = {}
  npos = 0
  for imagename, gt in enumerate(ground_truths):
    keep = gt['classes'] == classname
    bbox = gt['boxes'][keep]
    difficult = gt['difficult'][keep].astype(bool)
    det = [False] * len(bbox)
    npos = npos + sum(~difficult)
    class_recs[imagename] = {'bbox': bbox, 'difficult': difficult, 'det': det}

  # The result file's lines: image by image, in row order.
  lines = [(imagename, d[4], d[:4]) for imagename, dets in enumerate(detections)
           for d in dets if d[5] == classname]
  image_ids = [x[0] for x in lines]
  confidence = np.array([x[1] for x in lines])
  BB = np.array([x[2] for x in lines]).reshape(-1, 4)

  sorted_ind = np.argsort(-confidence)
  BB = BB[sorted_ind, :]
  image_ids = [image_ids[x] for x in sorted_ind]

  nd = len(image_ids)
  tp = np.zeros(nd)
  fp = np.zeros(nd)
  for d in range(nd):
    R = class_recs[image_ids[d]]
    bb = BB[d, :].astype(float)
    ovmax = -np.inf
    BBGT = R['bbox'].astype(float)
    if BBGT.size > 0:
      ixmin = np.maximum(BBGT[:, 0], bb[0])
      iymin = np.maximum(BBGT[:, 1], bb[1])
      ixmax = np.minimum(BBGT[:, 2], bb[2])
      iymax = np.minimum(BBGT[:, 3], bb[3])
      iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
      ih = np.maximum(iymax - iymin + 1.0, 0.0)
      inters = iw * ih
      uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
             + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
      overlaps = inters / uni
      ovmax = np.max(overlaps)
      jmax = np.argmax(overlaps)
    if ovmax > ovthresh:
      if not R['difficult'][jmax]:
        if not R['det'][jmax]:
          tp[d] = 1.0
          R['det'][jmax] = 1
        else:
          fp[d] = 1.0
    else:
      fp[d] = 1.0

  fp = np.cumsum(fp)
  tp = np.cumsum(tp)
  rec = tp / float(npos)
  prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  return _reference_voc_ap(rec, prec, use_07_metric)


def _random_dataset(num_images: int, num_classes: int, seed: int = 0):
  """VOC-like images: jittered (and duplicated, mislabelled) detections of ground truths,
  plus background boxes; the last class never has ground truth; half the images in
  integer pixels as the reference's evaluator writes them."""
  rng = np.random.default_rng(seed)
  detections, ground_truths = [], []
  for image in range(num_images):
    m = rng.integers(0, 6)
    xy = rng.uniform(0, 400, (m, 2))
    wh = rng.uniform(5, 150, (m, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    classes = rng.integers(0, num_classes - 1, m)
    difficult = rng.random(m) < 0.15
    rows = []
    for box, cls in zip(boxes, classes):
      for _ in range(rng.choice(3, p=[0.3, 0.5, 0.2])):
        jitter = rng.normal(0, 0.12, 4) * np.tile(box[2:] - box[:2], 2)
        label = cls if rng.random() < 0.85 else rng.integers(0, num_classes)
        rows.append([*(box + jitter), rng.random(), label])
    for _ in range(rng.integers(0, 4)):
      xy = rng.uniform(0, 400, 2)
      rows.append([*xy, *(xy + rng.uniform(5, 150, 2)), rng.random(),
                   rng.integers(0, num_classes)])
    dets = np.array(rows, np.float64).reshape(-1, 6)
    if image % 2:
      boxes, dets[:, :4] = np.round(boxes), np.round(dets[:, :4])
    detections.append(dets)
    ground_truths.append({'boxes': boxes, 'classes': classes, 'difficult': difficult})
  return detections, ground_truths


def test_voc_map_matches_literal_voc_eval_on_random_images():
  num_classes = 8
  detections, ground_truths = _random_dataset(300, num_classes)
  for use_07_metric in (True, False):
    for threshold in (0.3, 0.5, 0.75):
      got = voc_map(detections, ground_truths, num_classes, threshold, use_07_metric)
      expected = [_reference_voc_eval(detections, ground_truths, c, threshold, use_07_metric)
                  for c in range(num_classes - 1)]
      np.testing.assert_allclose(got['ap'][:-1], expected, rtol=0, atol=1e-12)
      assert np.isnan(got['ap'][-1])
      assert got['map'] == pytest.approx(np.mean(expected), abs=1e-12)
    # The range is the mean of single-threshold runs, not a second code path's result.
    ranged = voc_map_range(detections, ground_truths, num_classes,
                           use_07_metric=use_07_metric)
    single = [voc_map(detections, ground_truths, num_classes, t, use_07_metric)['map']
              for t in COCO_THRESHOLDS]
    np.testing.assert_allclose(ranged['map_per_threshold'], single, rtol=0, atol=1e-15)
    assert ranged['map'] == pytest.approx(np.mean(single), abs=1e-15)
