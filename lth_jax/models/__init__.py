"""Flax models with torchvision's names: ResNets, DeepLabV3+ and a YOLO detector on them.

Backbones are `ResNet`s whose variables sit at the root of every model's tree (so masks,
the PyTorch key map and checkpoints treat a classifier, a DeepLab and a detector alike);
heads live under names outside the pruning policy. Imports only flax, jax and numpy.
"""

from lth_jax.models.deeplab import DeepLabV3Plus, aspp_rates_for, create_deeplab
from lth_jax.models.resnet import (ARCHS, ResNet, create_model, init_variables, is_backbone,
                                   is_head)
from lth_jax.models.yolo import YoloDetector, create_detector

__all__ = ['ARCHS', 'DeepLabV3Plus', 'ResNet', 'YoloDetector', 'aspp_rates_for',
           'create_deeplab', 'create_detector', 'create_model', 'init_variables', 'is_backbone',
           'is_head']
