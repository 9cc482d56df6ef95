"""YOLOv4 detection pieces: box geometry and NMS, target assignment, the loss.

Modules: `boxes` (IoU, GIoU, CIoU, the reference's NMS, post-processing and rounding),
`targets` (static-shape label grids of `__creat_label`), `loss` (CIoU + focal objectness
+ BCE classes). Pure jnp/numpy functions; may import `lth_jax.models.yolo` (anchors,
strides, decoding).
"""

from lth_jax.tasks.yolo.boxes import (ciou, giou, iou, nms, postprocess, round_like_reference,
                                xywh_to_xyxy, xyxy_to_xywh)
from lth_jax.tasks.yolo.loss import yolo_loss
from lth_jax.tasks.yolo.targets import ScaleTargets, build_targets, grid_sizes

__all__ = ['ScaleTargets', 'build_targets', 'ciou', 'giou', 'grid_sizes', 'iou', 'nms',
           'postprocess', 'round_like_reference', 'xywh_to_xyxy', 'xyxy_to_xywh', 'yolo_loss']
