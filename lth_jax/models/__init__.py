"""Flax ResNets with torchvision names."""

from lth_jax.models.resnet import ARCHS, ResNet, create_model, init_variables

__all__ = ['ARCHS', 'ResNet', 'create_model', 'init_variables']
