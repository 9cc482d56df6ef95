"""Evaluation metrics of the transfer tasks, on host numpy arrays.

Segmentation (`segmentation.py`, the reference's StreamSegMetrics):
    cm = sum(confusion_matrix(labels, preds, 21) for labels, preds in batches)  # int64 [C, C]
    miou, iou = mean_iou(cm)          # iou NaN for a class absent from labels and predictions
  `confusion_matrix_jax` counts the same inside a jitted eval step (int32, 0/1 image weights).

Detection (`detection.py`, py-faster-rcnn's voc_eval):
    voc_map(dets, gts, 20)            # {'map', 'ap'} at IoU 0.5, VOC07 11-point AP
    voc_map_range(dets, gts, 20)      # averaged over IoU 0.50:0.05:0.95
    error_breakdown(dets, gts, 20)    # objects located, and named right once located

The headline metric a task names and results read (`headline.Metric`) lives here too.

Imports only numpy and jax; the tasks' evaluators call it.
"""

from lth_jax.metrics.detection import COCO_THRESHOLDS, error_breakdown, voc_map, voc_map_range
from lth_jax.metrics.segmentation import (confusion_matrix, confusion_matrix_jax, mean_iou,
                                          pixel_accuracy)

__all__ = [
    'COCO_THRESHOLDS',
    'confusion_matrix',
    'confusion_matrix_jax',
    'error_breakdown',
    'mean_iou',
    'pixel_accuracy',
    'voc_map',
    'voc_map_range',
]
