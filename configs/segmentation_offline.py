r"""Segmentation transfer in miniature, offline: DeepLabV3+ on digit canvases.

    python -m lth_jax.main --config=configs/segmentation_offline.py --workdir=/tmp/lth_seg

The paper's segmentation study (its Table 3 / Figure 5: DeepLabV3+ on VOC 2012) on the
shipped data, within 15 minutes on a 2-core CPU:

1. θ_p: a ResNet-18 (width 1/8, CIFAR stem) pre-trained on Animal-MNIST's classes 0-4
   three ways, supervised, SimCLR and MoCo v2 (3 epochs), and their upstream tickets
   found by IMP there (as configs/paper_offline.py, smaller: 20% one-shot from θ_p,
   then 36%, one epoch a round).
2. Segmentation of 56 x 56 digit canvases (`digit_canvas_seg`: background + 10 digit
   classes, 255 on anti-aliased edges; canvases of disjoint MNIST-5k digits per split)
   with DeepLabV3+ on that backbone (head 32 channels wide, low-level projection 8):
   each pre-training's dense θ_p and its 36% ticket, training from scratch, random
   global pruning of θ_Sup at 36%, and task-specific tickets found by IMP on the
   canvases from θ_Sup (20%, 36%), with 2 seeds each, 2 epochs of batch 16. The
   reference's recipe otherwise: SGD momentum 0.9, wd 1e-4, poly schedule (power 0.9),
   the head at 10x the backbone's learning rate (0.1 and 0.01 here: 0.01 and 0.001 in
   the reference's 30k iterations), backbone BN momentum 0.01 (PyTorch convention),
   pixel cross-entropy ignoring 255, output stride 16 with the ASPP rates scaled to the
   feature map. Random scale 0.75-1.25 and crops, no flips (digits).
3. results_digit_canvas_seg.csv/.json (mIoU mean ± std per ticket, matching),
   miou_vs_sparsity_digit_canvas_seg.png, extreme_sparsity.csv and verdict.txt
   ("upstream tickets match to X% ..., task-specific to Y%").

`:tiny` is the smoke run of the tests: supervised pre-training only, one ticket, two
rounds of task-specific IMP, one seed, 3 epochs, θ_p from the scikit-learn digits and 256
training canvases (`digit_canvas_seg_small`).
"""

from lth_jax.experiments.presets import canvas_study


def get_config(variant: str = ''):
  c = canvas_study('digit_canvas_seg', variant)
  # DeepLabV3+ (lth_jax.tasks.segmentation): a head as narrow as the backbone.
  c.model.output_stride = 16
  c.model.head_channels = 32
  c.model.low_level_channels = 8
  c.data.batch_size = 16
  # The reference's segmentation recipe: `learning_rate` is the backbone's.
  c.optim.update(optimizer='sgd', learning_rate=0.01, head_lr_scale=10.0, momentum=0.9,
                 weight_decay=1e-4, schedule='poly', power=0.9, warmup_epochs=0,
                 num_epochs=2)
  if variant == 'tiny':
    c.paper.pretrainings = 'supervised'
    c.data.batch_size = 8
    c.optim.num_epochs = 3
  return c
