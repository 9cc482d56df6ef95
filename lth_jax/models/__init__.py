"""Flax ResNets with torchvision names, and DeepLabV3+ on them."""

from lth_jax.models.deeplab import (DeepLabV3Plus, aspp_rates_for, create_deeplab,
                                    load_pytorch_deeplab, to_pytorch_deeplab)
from lth_jax.models.resnet import ARCHS, ResNet, create_model, init_variables

__all__ = ['ARCHS', 'DeepLabV3Plus', 'ResNet', 'aspp_rates_for', 'create_deeplab',
           'create_model', 'init_variables', 'load_pytorch_deeplab', 'to_pytorch_deeplab']
