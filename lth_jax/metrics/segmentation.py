"""Semantic segmentation metrics: confusion matrix, per-class IoU, mIoU, pixel accuracy.

Semantics follow the reference's `Segmentation/metrics/stream_metrics.py` (VainF's
DeepLabV3Plus `StreamSegMetrics`): a (C, C) confusion matrix with rows = true class and
columns = predicted class, built from every pixel whose label lies in [0, C) (the ignore
label 255 and any other out-of-range label are skipped); IoU_c = TP / (TP + FP + FN) and
mIoU = the mean over classes that occur in labels or predictions.

`confusion_matrix` runs on the host (int64, exact at any size); `confusion_matrix_jax`
is the same count as a jittable function for accumulation inside a jitted eval step.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _check_shapes(labels_shape: tuple[int, ...], predictions_shape: tuple[int, ...]) -> None:
  if labels_shape != predictions_shape:
    raise ValueError(
        f'labels {labels_shape} and predictions {predictions_shape} must have the same shape; '
        'pass one predicted class per labelled pixel (argmax the logits over the class axis).')


def _check_num_classes(num_classes: int) -> None:
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}.')


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                     ignore_label: int = 255) -> np.ndarray:
  """Counts (true class, predicted class) pairs over all labelled pixels.

  Args:
    labels: integer class ids of any shape, e.g. [N, H, W]. Pixels whose label equals
      `ignore_label`, is negative or is >= num_classes are skipped.
    predictions: integer predicted class ids, the same shape as `labels`.
    num_classes: C.
    ignore_label: the label of unlabelled pixels (VOC: 255).

  Returns:
    int64 [C, C]; entry [t, p] is the number of counted pixels of true class t
    predicted as p.

  Raises:
    ValueError: shapes differ, an input is not integer, or a counted pixel has a
      prediction outside [0, C).
  """
  _check_num_classes(num_classes)
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  _check_shapes(labels.shape, predictions.shape)
  for name, x in (('labels', labels), ('predictions', predictions)):
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
      raise ValueError(f'{name} must hold integer class ids, got dtype {x.dtype}; '
                       'argmax logits and cast labels to an integer type first.')
  # int64 before multiplying: uint8 labels times C would wrap around.
  labels = labels.astype(np.int64).ravel()
  predictions = predictions.astype(np.int64).ravel()
  counted = (labels >= 0) & (labels < num_classes) & (labels != ignore_label)
  labels, predictions = labels[counted], predictions[counted]
  if predictions.size and (predictions.min() < 0 or predictions.max() >= num_classes):
    raise ValueError(
        f'predictions at labelled pixels must lie in [0, {num_classes}), got values in '
        f'[{predictions.min()}, {predictions.max()}]; check num_classes against the model head.')
  counts = np.bincount(num_classes * labels + predictions, minlength=num_classes**2)
  return counts.reshape(num_classes, num_classes).astype(np.int64)


def confusion_matrix_jax(labels: jnp.ndarray, predictions: jnp.ndarray, num_classes: int,
                         ignore_label: int = 255,
                         weights: jnp.ndarray | None = None) -> jnp.ndarray:
  """`confusion_matrix` as a jittable function, for accumulation inside an eval step.

  The counts are an integer scatter-add, hence exact. They are int32, which is exact
  for fewer than 2^31 counted pixels per call (about 8,000 images of 512 x 512); sum
  the per-batch results on the host in int64.

  Args:
    labels: integer class ids of any shape, e.g. [N, H, W]; skipped like in
      `confusion_matrix` (== ignore_label, < 0 or >= num_classes).
    predictions: integer predicted class ids, the same shape. A prediction outside
      [0, C) cannot come from an argmax; such a pixel is dropped, not counted (the
      host version raises instead, since it cannot happen inside a jitted step).
    num_classes: C (static).
    ignore_label: the label of unlabelled pixels (static).
    weights: optional 0/1 weights aligned on the LEADING axes of `labels` and
      broadcast over the rest: [N] weighs whole images (0 for the padding of an
      evaluation batch), [N, H, W] single pixels. Pixels of weight 0 are not counted.

  Returns:
    int32 [C, C], rows = true class, columns = predicted class.

  Raises:
    ValueError: shapes differ or `weights` does not align with `labels`.
  """
  _check_num_classes(num_classes)
  _check_shapes(jnp.shape(labels), jnp.shape(predictions))
  labels = jnp.asarray(labels).astype(jnp.int32)
  predictions = jnp.asarray(predictions).astype(jnp.int32)
  counted = ((labels >= 0) & (labels < num_classes) & (labels != ignore_label)
             & (predictions >= 0) & (predictions < num_classes))
  if weights is not None:
    weights = jnp.asarray(weights)
    if (weights.ndim > labels.ndim
        or any(w not in (1, n) for w, n in zip(weights.shape, labels.shape))):
      raise ValueError(
          f'weights {weights.shape} must align with the leading axes of labels '
          f'{labels.shape}, e.g. [N] per image or [N, H, W] per pixel.')
    weights = weights.reshape(weights.shape + (1,) * (labels.ndim - weights.ndim))
    counted = counted & (weights != 0)
  # Skipped pixels get index C*C, one past the end, which the scatter drops.
  index = jnp.where(counted, num_classes * labels + predictions, num_classes**2)
  counts = jnp.zeros(num_classes**2, jnp.int32).at[index.ravel()].add(1, mode='drop')
  return counts.reshape(num_classes, num_classes)


def _check_confusion(confusion: np.ndarray) -> np.ndarray:
  confusion = np.asarray(confusion)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f'confusion must be a square [C, C] matrix, got shape {confusion.shape}; '
                     'build it with confusion_matrix.')
  return confusion.astype(np.float64)


def mean_iou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
  """Per-class intersection over union and its mean.

  Args:
    confusion: [C, C] counts, rows = true class, columns = predicted class.

  Returns:
    (miou, iou): iou is float64 [C], TP / (TP + FP + FN) per class, NaN for a class
    that occurs neither in the labels nor in the predictions (0 / 0); miou is the mean
    of the non-NaN entries (NaN when all are NaN), as np.nanmean in stream_metrics.

  Raises:
    ValueError: confusion is not square.
  """
  confusion = _check_confusion(confusion)
  tp = np.diag(confusion)
  union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
  present = union > 0
  iou = np.full(tp.shape, np.nan)
  iou[present] = tp[present] / union[present]
  miou = float(iou[present].mean()) if present.any() else float('nan')
  return miou, iou


def pixel_accuracy(confusion: np.ndarray) -> float:
  """Fraction of counted pixels predicted correctly ('Overall Acc' of stream_metrics).

  Args:
    confusion: [C, C] counts, rows = true class, columns = predicted class.

  Returns:
    trace / total, NaN for an empty matrix.

  Raises:
    ValueError: confusion is not square.
  """
  confusion = _check_confusion(confusion)
  total = confusion.sum()
  return float(np.trace(confusion) / total) if total > 0 else float('nan')
