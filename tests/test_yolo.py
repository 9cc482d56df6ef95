"""YOLOv4 pieces: boxes, NMS, target assignment, decoding, loss, the detector network.

The `_ref_*` functions are direct numpy transcriptions of the reference
(`Detection/utils/tools.py`, `utils/datasets.py::__creat_label`,
`model/loss/yolo_loss.py`), written as loops where the reference loops.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import masks
from lth_jax.models import create_model
from lth_jax.models.yolo import (ANCHORS, STRIDES, YoloHead, YoloNeck, create_detector, decode,
                                 neck_channels)
from lth_jax.tasks.yolo import (build_targets, ciou, giou, grid_sizes, iou, nms, postprocess,
                          xywh_to_xyxy, xyxy_to_xywh, yolo_loss)

IMAGE = 64
NUM_CLASSES = 3
MAX_BOXES = 8
GRIDS = grid_sizes(IMAGE)


# --------------------------------------------------------------- reference transcriptions


def _ref_iou_xywh(boxes1, boxes2):
  area1 = boxes1[..., 2] * boxes1[..., 3]
  area2 = boxes2[..., 2] * boxes2[..., 3]
  b1 = np.concatenate([boxes1[..., :2] - boxes1[..., 2:] * 0.5,
                       boxes1[..., :2] + boxes1[..., 2:] * 0.5], axis=-1)
  b2 = np.concatenate([boxes2[..., :2] - boxes2[..., 2:] * 0.5,
                       boxes2[..., :2] + boxes2[..., 2:] * 0.5], axis=-1)
  inter = np.maximum(np.minimum(b1[..., 2:], b2[..., 2:]) - np.maximum(b1[..., :2], b2[..., :2]),
                     0.0)
  inter_area = inter[..., 0] * inter[..., 1]
  return inter_area / (area1 + area2 - inter_area)


def _ref_giou_xyxy(boxes1, boxes2):
  area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
  area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
  inter = np.maximum(np.minimum(boxes1[..., 2:], boxes2[..., 2:])
                     - np.maximum(boxes1[..., :2], boxes2[..., :2]), 0.0)
  inter_area = inter[..., 0] * inter[..., 1]
  union = area1 + area2 - inter_area
  enclose = np.maximum(np.maximum(boxes1[..., 2:], boxes2[..., 2:])
                       - np.minimum(boxes1[..., :2], boxes2[..., :2]), 0.0)
  enclose_area = enclose[..., 0] * enclose[..., 1]
  return inter_area / union - (enclose_area - union) / enclose_area


def _ref_ciou_xywh(boxes1, boxes2):
  """CIOU_xywh_torch, corner re-sorting and clamp included."""
  b1 = np.concatenate([boxes1[..., :2] - boxes1[..., 2:] * 0.5,
                       boxes1[..., :2] + boxes1[..., 2:] * 0.5], axis=-1)
  b2 = np.concatenate([boxes2[..., :2] - boxes2[..., 2:] * 0.5,
                       boxes2[..., :2] + boxes2[..., 2:] * 0.5], axis=-1)
  b1 = np.concatenate([np.minimum(b1[..., :2], b1[..., 2:]), np.maximum(b1[..., :2], b1[..., 2:])],
                      axis=-1)
  b2 = np.concatenate([np.minimum(b2[..., :2], b2[..., 2:]), np.maximum(b2[..., :2], b2[..., 2:])],
                      axis=-1)
  area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
  area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
  inter = np.maximum(np.minimum(b1[..., 2:], b2[..., 2:]) - np.maximum(b1[..., :2], b2[..., :2]),
                     0.0)
  inter_area = inter[..., 0] * inter[..., 1]
  ious = inter_area / (area1 + area2 - inter_area)
  outer = np.maximum(np.maximum(b1[..., 2:], b2[..., 2:]) - np.minimum(b1[..., :2], b2[..., :2]),
                     0.0)
  outer_diagonal = outer[..., 0] ** 2 + outer[..., 1] ** 2
  c1 = (b1[..., :2] + b1[..., 2:]) * 0.5
  c2 = (b2[..., :2] + b2[..., 2:]) * 0.5
  center_dis = (c1[..., 0] - c2[..., 0]) ** 2 + (c1[..., 1] - c2[..., 1]) ** 2
  s1 = np.maximum(b1[..., 2:] - b1[..., :2], 0.0)
  s2 = np.maximum(b2[..., 2:] - b2[..., :2], 0.0)
  v = (4 / math.pi ** 2) * (np.arctan(s1[..., 0] / np.maximum(s1[..., 1], 1e-6))
                            - np.arctan(s2[..., 0] / np.maximum(s2[..., 1], 1e-6))) ** 2
  alpha = v / (1 - ious + v)
  return ious - (center_dis / outer_diagonal + alpha * v)


def _ref_nms(bboxes, score_threshold, iou_threshold):
  """tools.nms(method='nms') on [N, 6] rows (x1, y1, x2, y2, score, class)."""
  best_bboxes = []
  for cls in set(bboxes[:, 5].astype(np.int32)):
    cls_bboxes = bboxes[bboxes[:, 5].astype(np.int32) == cls]
    while len(cls_bboxes) > 0:
      max_ind = np.argmax(cls_bboxes[:, 4])
      best = cls_bboxes[max_ind]
      best_bboxes.append(best)
      cls_bboxes = np.concatenate([cls_bboxes[:max_ind], cls_bboxes[max_ind + 1:]])
      overlap = _ref_giou_xyxy(best[np.newaxis, :4], cls_bboxes[:, :4])
      weight = np.ones(len(overlap))
      weight[overlap > iou_threshold] = 0.0
      cls_bboxes[:, 4] = cls_bboxes[:, 4] * weight
      cls_bboxes = cls_bboxes[cls_bboxes[:, 4] > score_threshold]
  return np.array(best_bboxes).reshape(-1, 6)


def _ref_create_label(bboxes, img_size, num_classes):
  """__creat_label on [N, 6] rows (x1, y1, x2, y2, class, mix)."""
  anchors, strides = ANCHORS.astype(np.float64), np.array(STRIDES)
  sizes = img_size / strides
  label = [np.zeros((int(sizes[i]), int(sizes[i]), 3, 6 + num_classes)) for i in range(3)]
  for i in range(3):
    label[i][..., 5] = 1.0
  bboxes_xywh = [np.zeros((150, 4)) for _ in range(3)]
  bbox_count = np.zeros((3,))
  for bbox in bboxes:
    coor, cls, mix = bbox[:4], int(bbox[4]), bbox[5]
    one_hot = np.zeros(num_classes)
    one_hot[cls] = 1.0
    smooth = one_hot * (1 - 0.01) + 0.01 / num_classes
    xywh = np.concatenate([(coor[2:] + coor[:2]) * 0.5, coor[2:] - coor[:2]])
    scaled = xywh[np.newaxis, :] / strides[:, np.newaxis]
    ious, positive_somewhere = [], False
    for i in range(3):
      anchors_xywh = np.zeros((3, 4))
      anchors_xywh[:, 0:2] = np.floor(scaled[i, 0:2]).astype(np.int32) + 0.5
      anchors_xywh[:, 2:4] = anchors[i]
      iou_scale = _ref_iou_xywh(scaled[i][np.newaxis, :], anchors_xywh)
      ious.append(iou_scale)
      mask = iou_scale > 0.3
      if np.any(mask):
        x, y = np.floor(scaled[i, 0:2]).astype(np.int32)
        label[i][y, x, mask, 0:4] = xywh
        label[i][y, x, mask, 4:5] = 1.0
        label[i][y, x, mask, 5:6] = mix
        label[i][y, x, mask, 6:] = smooth
        bboxes_xywh[i][int(bbox_count[i] % 150), :4] = xywh
        bbox_count[i] += 1
        positive_somewhere = True
    if not positive_somewhere:
      best = np.argmax(np.array(ious).reshape(-1), axis=-1)
      scale, anchor = int(best / 3), int(best % 3)
      x, y = np.floor(scaled[scale, 0:2]).astype(np.int32)
      label[scale][y, x, anchor, 0:4] = xywh
      label[scale][y, x, anchor, 4:5] = 1.0
      label[scale][y, x, anchor, 5:6] = mix
      label[scale][y, x, anchor, 6:] = smooth
      bboxes_xywh[scale][int(bbox_count[scale] % 150), :4] = xywh
      bbox_count[scale] += 1
  return label, bboxes_xywh


def _bce(logits, targets):
  return np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _ref_loss(raws, labels, bboxes_lists):
  """YoloV4Loss.forward; p_d from Yolo_head.__decode; batch dim first everywhere."""
  totals = np.zeros(3)
  for p, label, bboxes, anchors, stride in zip(raws, labels, bboxes_lists, ANCHORS, STRIDES):
    batch, grid = p.shape[:2]
    y, x = np.meshgrid(np.arange(grid), np.arange(grid), indexing='ij')
    grid_xy = np.stack([x, y], axis=-1)[None, :, :, None, :]
    p_d_xywh = np.concatenate([(_sigmoid(p[..., 0:2]) + grid_xy) * stride,
                               np.exp(p[..., 2:4]) * anchors * stride], axis=-1)
    img_size = stride * grid
    obj, mix, cls = label[..., 4:5], label[..., 5:6], label[..., 6:]
    box_ciou = _ref_ciou_xywh(p_d_xywh, label[..., :4])[..., None]
    scale = 2.0 - label[..., 2:3] * label[..., 3:4] / img_size ** 2
    loss_ciou = obj * scale * (1.0 - box_ciou) * mix
    overlaps = _ref_ciou_xywh(p_d_xywh[..., None, :], bboxes[:, None, None, None, :, :])
    noobj = (1.0 - obj) * (overlaps.max(-1, keepdims=True) < 0.5)
    focal = _bce(p[..., 4:5], obj) * np.abs(obj - _sigmoid(p[..., 4:5])) ** 2
    loss_conf = (obj * focal + noobj * focal) * mix
    loss_cls = obj * _bce(p[..., 5:], cls) * mix
    totals += [loss_ciou.sum() / batch, loss_conf.sum() / batch, loss_cls.sum() / batch]
  return totals


# ----------------------------------------------------------------------------- helpers


def _random_boxes(rng, n, image=IMAGE, min_size=2.0):
  """[n, 4] random xyxy boxes clipped to the image (random floats: no centre on a cell edge)."""
  centre = rng.uniform(0.5, image - 0.5, (n, 2))
  size = rng.uniform(min_size, image, (n, 2))
  return np.clip(np.concatenate([centre - size / 2, centre + size / 2], axis=1), 0, image)


def _pad(images, rng=None):
  """Lists of (box xyxy, class, mix) per image -> padded boxes, classes, valid, mix.

  With an rng, each image's GTs keep their order but sit at random rows among the padding.
  """
  shape = (len(images), MAX_BOXES)
  boxes, classes = np.zeros(shape + (4,), np.float32), np.full(shape, -1, np.int32)
  valid, mix = np.zeros(shape, bool), np.ones(shape, np.float32)
  for b, gts in enumerate(images):
    rows = (np.arange(len(gts)) if rng is None
            else np.sort(rng.choice(MAX_BOXES, len(gts), replace=False)))
    for i, (box, cls, weight) in zip(rows, gts):
      boxes[b, i], classes[b, i], valid[b, i], mix[b, i] = box, cls, True, weight
  return boxes, classes, valid, mix


_targets = jax.jit(lambda b, c, v, m: build_targets(b, c, v, m, image_size=IMAGE,
                                                    num_classes=NUM_CLASSES))
_loss_and_grad = jax.jit(jax.value_and_grad(yolo_loss, has_aux=True))


def _encode(targets, obj_logit=10.0):
  """Raw outputs that decode to every labelled box at its slot (decode inverted)."""
  raws = []
  for t, anchors, stride, (gh, gw) in zip(targets, ANCHORS, STRIDES, GRIDS):
    labels = np.asarray(t.labels, np.float64)
    gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing='ij')
    cell = np.stack([gx, gy], axis=-1)[None, :, :, None, :]
    offset = np.clip(labels[..., 0:2] / stride - cell, 1e-6, 1 - 1e-6)
    obj = labels[..., 4:5] > 0
    probs = np.where(obj, labels[..., 6:], 0.5)
    raw = np.concatenate([
        np.where(obj, np.log(offset / (1 - offset)), 0.0),
        np.where(obj, np.log(np.maximum(labels[..., 2:4], 1e-9) / (anchors * stride)), 0.0),
        np.where(obj, obj_logit, -obj_logit),
        np.where(obj, np.log(probs / (1 - probs)), 0.0)], axis=-1)
    raws.append(jnp.asarray(raw, jnp.float32))
  return raws


# ------------------------------------------------------------------------------- boxes


def test_box_conversions_round_trip_and_hand_values():
  xyxy = np.array([[2.0, 4.0, 10.0, 8.0]], np.float32)
  np.testing.assert_array_equal(xyxy_to_xywh(xyxy), [[6.0, 6.0, 8.0, 4.0]])
  np.testing.assert_array_equal(xywh_to_xyxy(xyxy_to_xywh(xyxy)), xyxy)
  assert isinstance(xyxy_to_xywh(xyxy), np.ndarray)
  assert isinstance(xyxy_to_xywh(jnp.asarray(xyxy)), jax.Array)


@pytest.mark.parametrize('kind', ['numpy', 'jax'])
def test_overlaps_hand_computed(kind):
  wrap = np.asarray if kind == 'numpy' else jnp.asarray
  box = wrap(np.array([0.0, 0.0, 4.0, 2.0], np.float32))
  disjoint = wrap(np.array([6.0, 0.0, 10.0, 2.0], np.float32))   # same aspect, 6 px right
  inner = wrap(np.array([1.0, 0.5, 3.0, 1.5], np.float32))       # same centre and aspect
  tall = wrap(np.array([1.0, -1.0, 3.0, 3.0], np.float32))       # same centre, 2x4
  assert float(iou(box, box)) == 1.0 and float(giou(box, box)) == 1.0
  assert float(ciou(box, box)) == 1.0   # the reference gives NaN here (alpha = 0 / 0)
  assert float(iou(box, disjoint)) == 0.0
  np.testing.assert_allclose(giou(box, disjoint), -(20 - 16) / 20, rtol=1e-6)
  np.testing.assert_allclose(ciou(box, disjoint), -36 / (10**2 + 2**2), rtol=1e-6)
  np.testing.assert_allclose(iou(box, inner), 0.25, rtol=1e-6)
  np.testing.assert_allclose(giou(box, inner), 0.25, rtol=1e-6)
  np.testing.assert_allclose(ciou(box, inner), 0.25, rtol=1e-6)
  # tall vs box: inter 2x2 = 4, union 8 + 8 - 4 = 12, enclosing 4x4 (diagonal^2 32),
  # centres equal; v = 4/pi^2 (atan 2 - atan 0.5)^2, alpha = v / (1 - 1/3 + v).
  v = 4 / math.pi ** 2 * (math.atan(2.0) - math.atan(0.5)) ** 2
  np.testing.assert_allclose(giou(box, tall), 1 / 3 - (16 - 12) / 16, rtol=1e-6)
  np.testing.assert_allclose(ciou(box, tall), 1 / 3 - v * v / (2 / 3 + v), rtol=1e-6)


def test_overlaps_match_reference_formula_on_random_boxes():
  rng = np.random.default_rng(0)
  a = np.concatenate([rng.uniform(0, 50, (200, 2)), rng.uniform(0.5, 40, (200, 2))], axis=1)
  b = np.concatenate([rng.uniform(0, 50, (200, 2)), rng.uniform(0.5, 40, (200, 2))], axis=1)
  a[:20], b[:20, 2] = b[:20], 1e-8   # near-degenerate heights exercise the 1e-6 clamp
  expected_ciou = _ref_ciou_xywh(a[:, None], b[None])
  got = ciou(jnp.asarray(xywh_to_xyxy(a[:, None]), jnp.float32),
             jnp.asarray(xywh_to_xyxy(b[None]), jnp.float32))
  np.testing.assert_allclose(got, expected_ciou, atol=2e-5)
  np.testing.assert_allclose(ciou(xywh_to_xyxy(a[:, None]), xywh_to_xyxy(b[None])),
                             expected_ciou, atol=1e-12)
  np.testing.assert_allclose(giou(xywh_to_xyxy(a[:, None]), xywh_to_xyxy(b[None])),
                             _ref_giou_xyxy(xywh_to_xyxy(a[:, None]), xywh_to_xyxy(b[None])),
                             atol=1e-12)
  np.testing.assert_allclose(iou(xywh_to_xyxy(a[:, None]), xywh_to_xyxy(b[None])),
                             _ref_iou_xywh(a[:, None], b[None]), atol=1e-12)


def test_ciou_gradient_is_finite_for_identical_boxes():
  box = jnp.array([1.0, 2.0, 5.0, 4.0])
  loss = lambda p: 1.0 - ciou(p, box)  # noqa: E731
  assert float(loss(box)) == 0.0
  grad = jax.grad(loss)(box)
  assert np.isfinite(np.asarray(grad)).all()
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)


# --------------------------------------------------------------------------------- NMS


def test_nms_hand_cases():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [2, 2, 12, 12],
                    [50, 50, 60, 60]], np.float64)
  scores = np.array([0.9, 0.8, 0.7, 0.95, 0.004])
  # Class 0: boxes 0 and 1 overlap (IoU 0.68, GIoU 0.66): the better one stays; box 4
  # scores 0.004 <= 0.005: dropped. Class 1: box 2 (= box 0) and box 3 have IoU 0.47 >
  # 0.45 but GIoU 0.415 <= 0.45, so the reference (GIoU) keeps both.
  classes = np.array([0, 0, 1, 1, 0])
  assert nms(boxes, scores, classes).tolist() == [0, 3, 2]
  assert nms(boxes, scores, classes, iou_threshold=0.4).tolist() == [0, 3]
  assert nms(boxes, scores, classes, score_threshold=0.001).tolist() == [0, 4, 3, 2]
  assert nms(boxes, scores, classes, max_det=2).tolist() == [0, 3]
  assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0)).tolist() == []
  with pytest.raises(ValueError, match='as many boxes'):
    nms(boxes, scores[:3], classes)


@pytest.mark.parametrize('n, num_classes', [(300, 4), (700, 2)])  # 2: blocks of 128 and more
def test_nms_matches_reference_loop_on_random_boxes(n, num_classes):
  rng = np.random.default_rng(1)
  for trial in range(5):
    boxes = _random_boxes(rng, n, image=100, min_size=5)
    scores = rng.uniform(0, 1, n)
    scores[:20] = rng.uniform(0, 0.01, 20)
    classes = rng.integers(0, num_classes, n)
    keep = nms(boxes, scores, classes)
    rows = np.concatenate([boxes, scores[:, None], classes[:, None]], axis=1)
    expected = _ref_nms(rows[scores > 0.005], 0.005, 0.45)
    assert sorted(map(tuple, rows[keep])) == sorted(map(tuple, expected)), trial
    assert (np.diff(classes[keep]) >= 0).all()


def test_postprocess_undoes_the_letterbox_and_filters():
  # A 100-wide, 50-high image letterboxed into 100 x 100: ratio 1, 25 px of padding on top.
  def row(xywh, conf, probs):
    return [*xywh, conf, *probs]
  predictions = np.array([
      row((50, 50, 20, 10), 0.9, (0.1, 0.8)),    # -> (40, 20, 60, 30), score 0.72, class 1
      row((95, 30, 20, 20), 0.5, (0.6, 0.1)),    # x2 105 clipped to 99, y1 -5 clipped to 0
      row((50, 10, 10, 10), 0.9, (0.9, 0.1)),    # in the padding: inverted after clipping
      row((51, 50, 20, 10), 0.8, (0.1, 0.8)),    # near-duplicate of the first: suppressed
      row((20, 50, 10, 10), 0.01, (0.4, 0.1)),   # score 0.004: dropped
  ])
  out = postprocess(predictions, input_size=100, original_hw=(50, 100))
  np.testing.assert_allclose(out, [[85, 0, 99, 15, 0.3, 0], [40, 20, 60, 30, 0.72, 1]])
  with pytest.raises(ValueError, match='decoded rows'):
    postprocess(predictions[:, :5], input_size=100, original_hw=(50, 100))


# ----------------------------------------------------------------- targets and decoding


def test_assignment_of_hand_picked_boxes():
  small = ((15.0, 6.0, 25.0, 19.0), 0, 1.0)    # 10 x 13 px, centre (20, 12.5): anchor (10, 13)
  large = ((2.0, 1.0, 62.0, 63.0), 2, 0.25)    # 60 x 62 px, centre (32, 32)
  targets = _targets(*map(jnp.asarray, _pad([[small, large]])))
  where = {s: np.argwhere(np.asarray(t.labels[0, ..., 4]) > 0).tolist()
           for s, t in zip(STRIDES, targets)}
  # IoUs with the anchors at the centre's cell (datasets.py's test, > 0.3):
  # small, stride 8 cell (x 2, y 1): 0.93, 0.27, 0.17; strides 16 and 32: all < 0.08.
  # large, stride 8: 0.03, 0.13, 0.20; stride 16 cell (2, 2): 0.41, 0.58, 0.42;
  # stride 32 cell (1, 1): 0.34, 0.12, 0.03.
  assert where == {8: [[1, 2, 0]], 16: [[2, 2, 0], [2, 2, 1], [2, 2, 2]], 32: [[1, 1, 0]]}
  label = np.asarray(targets[0].labels[0, 1, 2, 0])
  np.testing.assert_allclose(label, [20, 12.5, 10, 13, 1, 1, 0.99 + 0.01 / 3, 0.01 / 3,
                                     0.01 / 3], rtol=1e-6)
  np.testing.assert_allclose(targets[2].labels[0, 1, 1, 0, :6], [32, 32, 60, 62, 1, 0.25])
  np.testing.assert_allclose(targets[2].labels[0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0, 0])
  assert [np.asarray(t.box_mask[0, :2]).tolist() for t in targets] == [
      [True, False], [False, True], [False, True]]
  # A box matching no anchor above 0.3 anywhere goes to the single best of the nine:
  # 1 x 40 px, best IoU 0.083 with stride 8's anchor 0, cell (3, 3).
  thin = ((30.0, 10.0, 31.0, 50.0), 1, 1.0)
  targets = _targets(*map(jnp.asarray, _pad([[thin]])))
  assert sum(int((np.asarray(t.labels[..., 4]) > 0).sum()) for t in targets) == 1
  assert np.asarray(targets[0].labels[0, 3, 3, 0, 4]) == 1


def test_targets_match_reference_label_creation():
  rng = np.random.default_rng(2)
  images = []
  for n in (MAX_BOXES, 6, 0, 3):
    boxes = _random_boxes(rng, n)
    images.append([(box, int(rng.integers(NUM_CLASSES)), float(rng.choice([1.0, 0.3, 0.7])))
                   for box in boxes])
  # Padding between the GTs: only the GTs' relative order may matter.
  targets = _targets(*map(jnp.asarray, _pad(images, rng)))
  for b, gts in enumerate(images):
    rows = np.array([[*box, cls, weight] for box, cls, weight in gts]).reshape(-1, 6)
    ref_labels, ref_boxes = _ref_create_label(rows, IMAGE, NUM_CLASSES)
    for s in range(3):
      np.testing.assert_allclose(targets[s].labels[b], ref_labels[s], atol=1e-5)
      listed = np.asarray(targets[s].boxes[b])[np.asarray(targets[s].box_mask[b])]
      expected = ref_boxes[s][:len(listed)]
      assert not ref_boxes[s][len(listed):].any()
      np.testing.assert_allclose(sorted(map(tuple, listed)), sorted(map(tuple, expected)),
                                 atol=1e-5)


def test_later_ground_truth_wins_a_shared_slot():
  first = ((10.0, 10.0, 20.0, 23.0), 0, 1.0)
  second = ((10.5, 10.0, 20.5, 23.0), 2, 1.0)   # same cell and anchor, other class
  boxes, classes, valid, mix = _pad([[first, second]])
  shuffled = [a[:, [3, 0, 5, 1, 2, 4, 6, 7]] for a in (boxes, classes, valid, mix)]
  for arrays in ((boxes, classes, valid, mix), shuffled):
    labels = np.asarray(_targets(*map(jnp.asarray, arrays))[0].labels[0])
    hit = labels[..., 4] > 0
    assert hit.sum() == 1
    assert labels[hit][0, 0] == 15.5 and np.argmax(labels[hit][0, 6:]) == 2


def test_decode_inverts_the_encoding_of_assigned_boxes():
  rng = np.random.default_rng(3)
  images = [[(box, int(rng.integers(NUM_CLASSES)), 1.0) for box in _random_boxes(rng, n)]
            for n in (6, 4)]
  targets = _targets(*map(jnp.asarray, _pad(images)))
  decoded = [jax.jit(decode, static_argnums=2)(raw, anchors, stride)
             for raw, anchors, stride in zip(_encode(targets), ANCHORS, STRIDES)]
  for b, gts in enumerate(images):
    recovered = []
    for t, d in zip(targets, decoded):
      hit = np.asarray(t.labels[b, ..., 4]) > 0
      np.testing.assert_allclose(np.asarray(d[b])[hit][:, :4],
                                 np.asarray(t.labels[b])[hit][:, :4], atol=1e-4)
      np.testing.assert_allclose(np.asarray(d[b])[hit][:, 5:],
                                 np.asarray(t.labels[b])[hit][:, 6:], atol=1e-5)
      assert (np.asarray(d[b, ..., 4])[hit] > 0.99).all()
      assert (np.asarray(d[b, ..., 4])[~hit] < 0.01).all()
      recovered.append(xywh_to_xyxy(np.asarray(d[b])[hit][:, :4]))
    # Every decoded positive is a GT and every GT is decoded somewhere.
    gt_boxes = np.array([box for box, _, _ in gts])
    close = np.abs(np.concatenate(recovered)[:, None] - gt_boxes[None]).max(-1) < 1e-4
    assert close.any(axis=1).all() and close.any(axis=0).all()


def test_decode_hand_values():
  raw = np.zeros((1, 2, 3, 3, 6), np.float32)   # grid 2 high, 3 wide
  raw[0, 1, 2, 1] = [0.0, 0.0, math.log(2.0), 0.0, 0.0, 100.0]
  out = np.asarray(decode(jnp.asarray(raw), ANCHORS[1], 16))
  # centre ((0.5 + 2) * 16, (0.5 + 1) * 16), size (2 * 3.875 * 16, 2.8125 * 16); raw 0 at
  # cell (0, 0) with anchor (1.875, 3.8125): centre (8, 8), size (30, 61).
  np.testing.assert_allclose(out[0, 1, 2, 1], [40, 24, 124, 45, 0.5, 1.0], rtol=1e-6)
  np.testing.assert_allclose(out[0, 0, 0, 0, :4], [8, 8, 30, 61], rtol=1e-6)


def test_target_errors_name_the_fix():
  boxes, classes, valid, mix = _pad([[]])
  with pytest.raises(ValueError, match='multiple of every stride'):
    build_targets(boxes, classes, valid, image_size=40, num_classes=3)
  with pytest.raises(ValueError, match=r'\[batch, max_boxes, 4\]'):
    build_targets(boxes[0], classes, valid, image_size=64, num_classes=3)
  with pytest.raises(ValueError, match='valid has shape'):
    build_targets(boxes, classes, valid[:, :2], image_size=64, num_classes=3)


# -------------------------------------------------------------------------------- loss


def _loss_inputs(seed):
  rng = np.random.default_rng(seed)
  images = [[(box, int(rng.integers(NUM_CLASSES)), float(rng.choice([1.0, 0.6])))
             for box in _random_boxes(rng, n)] for n in (5, 0)]
  raws = [jnp.asarray(rng.normal(0, 1, (2, gh, gw, 3, 5 + NUM_CLASSES)), jnp.float32)
          for gh, gw in GRIDS]
  return images, raws


def test_loss_matches_reference_and_all_padding_image_only_pays_no_object():
  images, raws = _loss_inputs(4)
  targets = _targets(*map(jnp.asarray, _pad(images)))
  (total, parts), grads = _loss_and_grad(raws, targets)
  ref_labels, ref_boxes = zip(*[_ref_create_label(
      np.array([[*box, cls, w] for box, cls, w in gts]).reshape(-1, 6), IMAGE, NUM_CLASSES)
      for gts in images])
  expected = _ref_loss([np.asarray(r, np.float64) for r in raws],
                       [np.stack([lab[s] for lab in ref_labels]) for s in range(3)],
                       [np.stack([bx[s] for bx in ref_boxes]) for s in range(3)])
  np.testing.assert_allclose([parts['ciou'], parts['conf'], parts['cls']], expected, rtol=2e-5)
  np.testing.assert_allclose(total, expected.sum(), rtol=2e-5)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  # Image 1 has no ground truth: its gradient is the no-object focal term's alone,
  # d/dz [softplus(z) sigmoid(z)^2] / batch, on objectness only.
  for g, r in zip(grads, raws):
    z = np.asarray(r[1, ..., 4], np.float64)
    expected_grad = (_sigmoid(z) ** 3 + 2 * np.log1p(np.exp(z)) * _sigmoid(z) ** 2
                     * (1 - _sigmoid(z))) / 2
    np.testing.assert_allclose(g[1, ..., 4], expected_grad, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(g[1, ..., :4], 0.0)
    np.testing.assert_array_equal(g[1, ..., 5:], 0.0)


def test_loss_is_minimal_when_predictions_equal_targets():
  images, _ = _loss_inputs(5)
  targets = _targets(*map(jnp.asarray, _pad(images)))
  (total, parts), grads = _loss_and_grad(_encode(targets, obj_logit=30.0), targets)
  assert float(parts['ciou']) < 1e-4 and float(parts['conf']) < 1e-9
  # Smoothed class targets t: the minimum of BCE is the binary entropy H(t), not 0.
  entropy = 0.0
  for t in targets:
    labels = np.asarray(t.labels, np.float64)
    probs = labels[labels[..., 4] > 0][:, 6:]
    entropy += (labels[labels[..., 4] > 0][:, 5:6]
                * -(probs * np.log(probs) + (1 - probs) * np.log(1 - probs))).sum() / 2
  np.testing.assert_allclose(parts['cls'], entropy, rtol=1e-5)
  # (The box term sits on CIoU's min / max kink there: its gradient is a subgradient.)
  for g in grads:
    np.testing.assert_allclose(g[..., 5:], 0.0, atol=1e-5)


def test_loss_is_invariant_to_the_order_of_the_padded_gt_list():
  images, raws = _loss_inputs(6)
  arrays = _pad(images)
  # Make sure no two of image 0's GTs share a slot, so that order cannot matter.
  claims = sum(int((np.asarray(t.labels[0, ..., 4]) > 0).sum()) for t in _targets(*arrays))
  per_box = [sum(int((np.asarray(t.labels[0, ..., 4]) > 0).sum())
                 for t in _targets(*_pad([[gt]]))) for gt in images[0]]
  assert claims == sum(per_box)
  perm = np.array([7, 3, 0, 5, 1, 6, 4, 2])
  (total, parts), _ = _loss_and_grad(raws, _targets(*arrays))
  (total_p, parts_p), _ = _loss_and_grad(raws, _targets(*(a[:, perm] for a in arrays)))
  np.testing.assert_allclose(total_p, total, rtol=1e-6)
  for key in parts:
    np.testing.assert_allclose(parts_p[key], parts[key], rtol=1e-6)


# ----------------------------------------------------------------------------- network


def test_detector_shapes_and_parameter_names():
  model = create_detector('resnet18', num_classes=NUM_CLASSES, width_multiplier=0.125,
                          neck_width=0.125)
  images = jax.random.normal(jax.random.key(0), (2, IMAGE, IMAGE, 3))
  outputs, variables = jax.jit(lambda r, x: model.init_with_output(r, x, train=False))(
      jax.random.key(1), images)
  assert [o.shape for o in outputs] == [(2, g, g, 3, 5 + NUM_CLASSES) for g in (8, 4, 2)]
  assert all(o.dtype == jnp.float32 and np.isfinite(np.asarray(o)).all() for o in outputs)
  params = variables['params']
  assert set(params) == {'conv1', 'bn1', 'neck', 'head',
                         *(f'layer{s}_{i}' for s in range(1, 5) for i in range(2))}
  prunable = masks.prunable_leaves(params)
  assert len(prunable) == 19   # resnet18's block convolutions: 16 + 3 downsample
  assert not any(n.startswith(('neck', 'head')) for n in prunable)
  c3, c4, c5 = neck_channels(0.125)
  neck = params['neck']
  assert neck['spp_head_conv_0']['conv']['kernel'].shape == (1, 1, 64, c5 // 2)
  assert neck['downstream_conv5_0']['conv']['kernel'].shape == (1, 1, 2 * c5, c5 // 2)
  assert neck['resample3_4']['conv']['kernel'].shape == (3, 3, c3 // 2, c4 // 2)
  assert neck['upstream_conv5_4']['conv']['kernel'].shape == (1, 1, c5, c5 // 2)
  assert params['head']['predict_conv2_1']['kernel'].shape == (1, 1, c5, 3 * 8)
  assert len(neck) == 3 + 2 + 3 + 5 + 5 + 5 + 5 + 4
  # The CIFAR stem does not downsample: outputs 4x finer, as `strides` says.
  cifar = create_detector('resnet18', num_classes=NUM_CLASSES, width_multiplier=0.125,
                          stem='cifar', neck_width=0.125)
  shapes = jax.eval_shape(lambda x: cifar.init_with_output(jax.random.key(0), x)[0],
                          jnp.zeros((1, 32, 32, 3)))
  assert cifar.strides == (2, 4, 8)
  assert [o.shape[1:3] for o in shapes] == list(grid_sizes(32, cifar.strides))


def test_detector_without_neck_feeds_the_backbone_stages_to_the_heads():
  model = create_detector('resnet18', num_classes=NUM_CLASSES, width_multiplier=0.125,
                          stem='cifar', neck_width=0.125, neck='none')
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  outputs, variables = jax.jit(lambda r, x: model.init_with_output(r, x, train=False))(
      jax.random.key(1), images)
  params = variables['params']
  assert 'neck' not in params and 'neck' not in variables['batch_stats']
  channels = neck_channels(0.125)
  # Each head's 3x3 block reads its stage as it is: layer2/3/4 have 16, 32, 64 channels.
  for i, width in enumerate((16, 32, 64)):
    assert params['head'][f'predict_conv{i}_0']['conv']['kernel'].shape == (
        3, 3, width, channels[i])
  # The outputs are the heads applied to the backbone's own features.
  backbone = create_model('resnet18', num_classes=NUM_CLASSES, width_multiplier=0.125,
                          stem='cifar', head='features')
  parts = {k: {n: v for n, v in tree.items() if n != 'head'} for k, tree in variables.items()}
  features = backbone.apply(parts, images, train=False)
  expected = YoloHead(channels, NUM_CLASSES).apply(
      {k: tree['head'] for k, tree in variables.items()},
      [features[k] for k in ('layer2', 'layer3', 'layer4')], False)
  for got, want in zip(outputs, expected, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="Unknown detector neck 'fpn'.*'panet'"):
    create_detector('resnet18', num_classes=NUM_CLASSES, neck='fpn')
  with pytest.raises(ValueError, match="Unknown detector neck 'fpn'"):  # built directly
    jax.eval_shape(lambda x: model.clone(neck='fpn').init(jax.random.key(0), x), images)


def test_neck_and_head_on_features_of_any_width():
  # The reference's full-width channel plan, checked on shapes only (no compile).
  features = {k: jax.ShapeDtypeStruct((1, s, s, c), jnp.float32)
              for k, s, c in (('layer2', 52, 512), ('layer3', 26, 1024), ('layer4', 13, 2048))}
  neck, head = YoloNeck(), YoloHead(neck_channels(1.0), num_classes=20)

  def run(feats):
    maps, neck_vars = neck.init_with_output(jax.random.key(0), feats, train=False)
    outs, head_vars = head.init_with_output(jax.random.key(1), maps, train=False)
    return maps, outs, neck_vars, head_vars

  maps, outs, neck_vars, _ = jax.eval_shape(run, features)
  assert [m.shape for m in maps] == [(1, 52, 52, 256), (1, 26, 26, 512), (1, 13, 13, 1024)]
  assert [o.shape for o in outs] == [(1, g, g, 3, 25) for g in (52, 26, 13)]
  # SPP concatenates [x, pool5, pool9, pool13]: 4 x 1024 channels into downstream_conv5.
  assert neck_vars['params']['downstream_conv5_0']['conv']['kernel'].shape == (1, 1, 4096, 1024)
  with pytest.raises(ValueError, match="head='features'"):
    jax.eval_shape(lambda f: neck.init(jax.random.key(0), f, train=False),
                   {'layer2': features['layer2']})
  with pytest.raises(ValueError, match='neck width'):
    neck_channels(1 / 512)
  with pytest.raises(ValueError, match='num_classes'):
    create_detector('resnet18', num_classes=0)


def _torch_reference_forward(torch, neck, head, feats):
  """SPP + PANet + PredictNet + Yolo_head's view/permute of YOLOv4.py, written in torch
  functionals on the Flax variables (eval-mode BatchNorm, nn.LeakyReLU()'s slope 0.01)."""
  F = torch.nn.functional
  t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731

  def conv(block, x, stride=1):
    kernel = block['params']['conv']['kernel']
    x = F.conv2d(x, t(kernel).permute(3, 2, 0, 1), stride=stride, padding=kernel.shape[0] // 2)
    x = F.batch_norm(x, t(block['batch_stats']['bn']['mean']), t(block['batch_stats']['bn']['var']),
                     t(block['params']['bn']['scale']), t(block['params']['bn']['bias']),
                     False, 0.0, 1e-5)
    return F.leaky_relu(x)

  def block(tree, name):
    return {c: tree[c][name] for c in tree}

  def seq(prefix, n, x):
    for i in range(n):
      x = conv(block(neck, f'{prefix}_{i}'), x)
    return x

  def up(x):
    return F.interpolate(x, scale_factor=2)   # nn.Upsample's default: nearest

  f3, f4, f5 = (t(feats[k]).permute(0, 3, 1, 2) for k in ('layer2', 'layer3', 'layer4'))
  x = seq('spp_head_conv', 3, f5)
  f5 = torch.cat([x] + [F.max_pool2d(x, k, 1, k // 2) for k in (5, 9, 13)], dim=1)
  f3 = conv(block(neck, 'feature_transform3'), f3)
  f4 = conv(block(neck, 'feature_transform4'), f4)
  d5 = seq('downstream_conv5', 3, f5)
  d4 = seq('downstream_conv4', 5, torch.cat([f4, up(conv(block(neck, 'resample5_4'), d5))], 1))
  d3 = seq('downstream_conv3', 5, torch.cat([f3, up(conv(block(neck, 'resample4_3'), d4))], 1))
  u4 = seq('upstream_conv4', 5, torch.cat([conv(block(neck, 'resample3_4'), d3, 2), d4], 1))
  u5 = seq('upstream_conv5', 5, torch.cat([conv(block(neck, 'resample4_5'), u4, 2), d5], 1))
  outputs = []
  for i, x in enumerate((d3, u4, u5)):
    x = conv(block(head, f'predict_conv{i}_0'), x)
    last = head['params'][f'predict_conv{i}_1']
    p = F.conv2d(x, t(last['kernel']).permute(3, 2, 0, 1), t(last['bias']))
    bs, grid = p.shape[0], p.shape[-1]
    outputs.append(p.view(bs, 3, p.shape[1] // 3, grid, grid).permute(0, 3, 4, 1, 2).numpy())
  return outputs


def test_neck_and_head_match_a_torch_transcription_of_the_reference():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(7)
  channels = neck_channels(1 / 64)   # (8, 16, 32)
  feats = {k: rng.normal(0, 1, (2, s, s, c)).astype(np.float32)
           for k, s, c in (('layer2', 8, 12), ('layer3', 4, 20), ('layer4', 2, 24))}
  neck, head = YoloNeck(channels), YoloHead(channels, num_classes=2)

  def randomise(shapes):
    def leaf(path, x):
      if masks.path_str(path).endswith('var'):
        return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), jnp.float32)
      return jnp.asarray(rng.normal(0, 0.4, x.shape), jnp.float32)
    return jax.tree_util.tree_map_with_path(leaf, shapes)

  maps = jax.eval_shape(lambda f: neck.apply(neck.init(jax.random.key(0), f, False), f, False),
                        feats)
  neck_vars = randomise(jax.eval_shape(lambda f: neck.init(jax.random.key(0), f, False), feats))
  head_vars = randomise(jax.eval_shape(lambda m: head.init(jax.random.key(0), m, False), maps))
  got = jax.jit(lambda nv, hv, f: head.apply(hv, neck.apply(nv, f, False), False))(
      neck_vars, head_vars, feats)
  expected = _torch_reference_forward(torch, neck_vars, head_vars, feats)
  for g, e in zip(got, expected):
    assert g.shape == e.shape
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * np.abs(e).max())
