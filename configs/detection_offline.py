r"""Detection transfer in miniature, offline: YOLOv4 heads on digit canvases.

    python -m lth_jax.main --config=configs/detection_offline.py --workdir=/tmp/lth_det

The paper's detection study (YOLOv4 with a ResNet-50 on VOC) on the shipped data,
within 15 minutes on a 2-core CPU, the same study as configs/segmentation_offline.py:

1. θ_p: a ResNet-18 (width 1/8, CIFAR stem) pre-trained on Animal-MNIST's classes 0-4
   supervised, with SimCLR and with MoCo v2, and their upstream tickets found by IMP there
   (20% one-shot from θ_p, then 36%).
2. Detection of the digits on 56 x 56 canvases (`digit_canvas_det`: the segmentation
   canvases' tight boxes, 10 classes, boxes under 12 px high 'difficult'; training skips
   the 100 of the 2,000 training canvases whose boxes are all difficult) with the
   YOLOv4 neck and heads (SPP, PANet, three scales of three anchors; the neck at 1/32 of
   the reference's ResNet-50 width, matching the backbone): each pre-training's dense
   θ_p and its 36% ticket, training from scratch, random global pruning of θ_Sup at 36%,
   and task-specific tickets found by IMP on the canvases from θ_Sup (20% and 36%), with 2
   seeds each. The reference's recipe scaled down: SGD momentum 0.9, wd 5e-4, cosine
   schedule to 1% of the learning rate, CIoU + focal objectness + BCE classes, VOC07
   11-point mAP at IoU 0.5 (headline) and over 0.50:0.05:0.95.
3. results_digit_canvas_det.csv/.json (mAP@0.5 and mAP@[.5:.95] mean ± std per ticket,
   matching on mAP@0.5), map_vs_sparsity_digit_canvas_det.png, extreme_sparsity.csv and
   verdict.txt.

`:tiny` is the smoke run of the tests: supervised pre-training only, one ticket, two
rounds of task-specific IMP, one seed, 3 epochs, θ_p from the scikit-learn digits and 243
training canvases (`digit_canvas_det_small`: the first 256 less the 13 whose boxes are
all difficult).
"""

from lth_jax.experiments.presets import canvas_study


def get_config(variant: str = ''):
  c = canvas_study('digit_canvas_det', variant)
  c.model.neck_width = 1 / 32           # (16, 32, 64) channels: the backbone's widths
  c.data.batch_size = 8
  c.optim.update(optimizer='sgd', learning_rate=0.01, momentum=0.9, weight_decay=5e-4,
                 schedule='cosine', final_learning_rate=1e-4, warmup_epochs=0, num_epochs=1)
  if variant == 'tiny':
    c.paper.pretrainings = 'supervised'
    c.optim.num_epochs = 3
  return c
