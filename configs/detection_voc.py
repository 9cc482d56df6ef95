r"""The paper's detection recipe: YOLOv4 heads on a ResNet-50, Pascal VOC 07+12.

    python -m lth_jax.main --config=configs/detection_voc.py:moco --workdir=/tmp/lth_det_voc \
        --config.pretrained.path=/ckpt/moco_v2_800ep_pretrain.pth.tar \
        --config.data.data_dir=/data   # the folder holding VOCdevkit/VOC2007 and VOC2012

Task-specific IMP (the reference's Detection/ IMP scripts): each round trains the
detector from θ_p (the backbone from the `source` checkpoint: torchvision, moco or
simclr; SPP, PANet and heads freshly initialised), prunes 20% of the backbone's 52
prunable convolutions by global magnitude, and rewinds the backbone to θ_p and the rest
to its initial weights (`--config.imp.rewind_scope=prunable` keeps the reference's
behaviour instead: only the pruned convolutions go back to θ_p, the stem, BatchNorm,
neck and heads continue from the round before). The reference's training: VOC07+12
trainval (here less the last 500 images, held out for validation), tested on VOC07
test; 416 letterbox, batch 8 with gradient accumulation 2, SGD momentum 0.9, wd 5e-4,
lr 1e-4 with 2 warm-up epochs then cosine to 1e-6, 120 epochs, flip + crop + translation
(mixup not done), [0, 1] pixels. Metrics: VOC07 11-point mAP at IoU 0.5 (headline, the
matching metric) and over 0.50:0.05:0.95.

Upstream tickets are fine-tuned the same way with `--config.mode=transfer
--config.transfer.masks=a.pth,b.pth` (the datasets are set to voc0712_det here).
"""

from lth_jax.experiments.config import base_config

SOURCES = ('torchvision', 'moco', 'simclr')


def get_config(source: str = 'torchvision'):
  if source not in SOURCES:
    raise ValueError(f'Unknown source {source!r}: use configs/detection_voc.py:'
                     f'{"|".join(SOURCES)}.')
  c = base_config()
  c.mode = 'imp'
  c.pretrained.source = source
  c.data.dataset = c.transfer.datasets = 'voc0712_det'
  c.model.arch = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.neck_width = 1.0
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  # counter_divisor: the reference's cfg BATCH_SIZE (it does not follow data.batch_size).
  c.optim.update(optimizer='sgd', learning_rate=1e-4, momentum=0.9, weight_decay=5e-4,
                 schedule='yolov4_reference', final_learning_rate=1e-6, warmup_epochs=2,
                 num_epochs=120, accumulate_steps=2, counter_divisor=8)
  c.imp.num_rounds = 19                 # the reference's TicketSH/imp_*.sh: rounds 0..18
  c.num_seeds = 1
  return c
