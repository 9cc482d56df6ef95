r"""The paper's segmentation recipe: DeepLabV3+ (ResNet-50) on Pascal VOC 2012.

    python -m lth_jax.main --config=configs/segmentation_voc.py:moco --workdir=/tmp/lth_voc \
        --config.pretrained.path=/ckpt/moco_v2_800ep_pretrain.pth.tar \
        --config.data.data_dir=/data   # the folder holding VOCdevkit/VOC2012

Task-specific IMP (the reference's Segmentation/main_imp_{imagenet,simclr,moco}.py, 19
rounds in its sh/imp_*.sh): each round fine-tunes DeepLabV3+ from θ_p (the backbone from
the `source` checkpoint: torchvision, moco or simclr; the ASPP + decoder head freshly
initialised and rewound to that init every round), prunes 20% of the backbone's 52
prunable convolutions by global magnitude and rewinds. The reference's training: VOC
2012 `train`, 30k iterations of batch 4 (here 91 epochs of the 1,318 images left after
holding out 146 for validation), SGD momentum 0.9, wd 1e-4, lr 0.01 for the head and
0.001 for the backbone with the poly schedule (power 0.9), 513 crops with random scale
0.5-2 and flips, backbone BN momentum 0.01 (PyTorch convention), output stride 16 (ASPP
rates 6, 12, 18); `--config.model.output_stride=8` gives rates 12, 24, 36.

Images and labels go through the reference's transforms (voc2012_seg's defaults): crops
smaller than 513 are padded on every side with image and labels 0, so the padding is
trained as background (`--config.data.seg_train_pad=ignore` pads at the bottom and right
with ignored labels instead), and evaluation is the reference's `--crop_val`: the short
side scaled to 513, the centre 513 x 513 scored (`--config.data.seg_eval=pad` scores whole
images, padded with ignored labels, instead).

Upstream tickets (e.g. from configs/moco_imp.py, or the reference's mask files) are
fine-tuned the same way with `--config.mode=transfer --config.transfer.masks=a.pth,b.pth`
(the datasets are set to voc2012_seg here).
"""

from lth_jax.experiments.config import base_config

SOURCES = ('torchvision', 'moco', 'simclr')


def get_config(source: str = 'torchvision'):
  if source not in SOURCES:
    raise ValueError(f'Unknown source {source!r}: use configs/segmentation_voc.py:'
                     f'{"|".join(SOURCES)}.')
  c = base_config()
  c.mode = 'imp'
  c.pretrained.source = source
  c.data.dataset = c.transfer.datasets = 'voc2012_seg'
  c.model.arch = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.output_stride = 16
  c.data.batch_size = 4
  c.data.eval_batch_size = 4
  c.optim.update(optimizer='sgd', learning_rate=0.001, head_lr_scale=10.0, momentum=0.9,
                 weight_decay=1e-4, schedule='poly', power=0.9, warmup_epochs=0,
                 num_epochs=91)
  c.imp.num_rounds = 19
  c.num_seeds = 1
  return c
