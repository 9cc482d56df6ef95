"""Flax (Linen) ResNets that are architecturally identical to torchvision's.

Module names mirror torchvision's state-dict keys so that the PyTorch key map is
mechanical (see `lth_jax.interop.torch_names`):

    conv1, bn1, layer{1..4}_{i}/{conv1,bn1,conv2,bn2,conv3,bn3,downsample_conv,downsample_bn}, fc

Every convolution uses explicit symmetric padding (dilation * (k // 2) on each side), as
PyTorch does: Flax's 'SAME' pads stride-2 convolutions asymmetrically, which keeps shapes
but changes values. BatchNorm uses PyTorch's defaults (momentum 0.1 -> Flax 0.9,
epsilon 1e-5). Strides sit on the 3x3 convolution of a bottleneck (torchvision v1.5).

`ResNet.features` (the stem and the four stages) is a plain method so that dense-prediction
models can subclass `ResNet`, call it from their own compact `__call__` and keep the
backbone's parameters at the root of their tree, named exactly as here (see
`lth_jax.models.deeplab`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    'resnet18': ('basic', (2, 2, 2, 2)),
    'resnet34': ('basic', (3, 4, 6, 3)),
    'resnet50': ('bottleneck', (3, 4, 6, 3)),
    'resnet101': ('bottleneck', (3, 4, 23, 3)),
    'resnet152': ('bottleneck', (3, 8, 36, 3)),
}
STEMS = ('imagenet', 'cifar')
HEADS = ('linear', 'mlp', 'none', 'features')
STAGES = ('layer1', 'layer2', 'layer3', 'layer4')
NO_DILATION = (False, False, False)
_EXPANSION = {'basic': 1, 'bottleneck': 4}

# The root modules of a backbone: the stem and the residual blocks. Everything else at the
# root of a model's tree (fc, a DeepLab's classifier, a detector's neck and heads) is
# its task's head.
_BACKBONE_MODULE = re.compile(r'conv1|bn1|layer\d+_\d+')


def is_backbone(name: str) -> bool:
  """Whether a root module of a model (`conv1`, `layer2_0`, ...) is part of the backbone.

  Args:
    name: a top-level key of a model's params.

  Returns:
    True for the stem and the residual blocks.
  """
  return _BACKBONE_MODULE.fullmatch(name) is not None


def is_head(name: str) -> bool:
  """Whether a root module of a model belongs to its task's head (not `is_backbone`).

  Args:
    name: a top-level key of a model's params.

  Returns:
    True for `fc`, `fc_0`, `classifier`, a detector's `neck` and `head`, ...
  """
  return not is_backbone(name)


# torchvision initialises convolutions with kaiming_normal_(mode='fan_out', relu).
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any,
          dilation: int = 1) -> nn.Conv:
  pad = dilation * (kernel // 2)
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=[(pad, pad), (pad, pad)], kernel_dilation=(dilation, dilation), use_bias=False,
      kernel_init=_conv_init, dtype=dtype, name=name)


def _bn(train: bool, name: str, dtype: Any, momentum: float) -> nn.BatchNorm:
  return nn.BatchNorm(
      use_running_average=not train, momentum=momentum, epsilon=1e-5,
      dtype=dtype, name=name)


def _check_dilation(replace_stride_with_dilation: Sequence[bool]) -> tuple[bool, bool, bool]:
  """The three flags of torchvision's `replace_stride_with_dilation`, as a tuple."""
  flags = tuple(replace_stride_with_dilation)
  if len(flags) != 3 or not all(isinstance(f, bool) for f in flags):
    raise ValueError(
        'replace_stride_with_dilation must be 3 bools, one for each of layer2, layer3 and '
        f'layer4 (e.g. (False, False, True) for output stride 16), got '
        f'{replace_stride_with_dilation!r}.')
  return flags


class _Block(nn.Module):
  """What both residual blocks are built from (torchvision's block arguments)."""
  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  dilation: int = 1
  bn_momentum: float = 0.9

  def bn(self, train: bool, name: str) -> nn.BatchNorm:
    """A BatchNorm of this block."""
    return _bn(train, name, self.dtype, self.bn_momentum)

  def shortcut(self, x: jax.Array, features: int, train: bool) -> jax.Array:
    """The identity, or the strided 1x1 conv + BN when shapes change."""
    if not self.downsample:
      return x
    x = _conv(features, 1, self.stride, 'downsample_conv', self.dtype)(x)
    return self.bn(train, 'downsample_bn')(x)


class BasicBlock(_Block):
  """torchvision's BasicBlock (two 3x3 convolutions).

  torchvision refuses dilation in a BasicBlock; here it follows mmsegmentation's
  BasicBlock: `conv1` (which carries the stride) is dilated with padding = dilation,
  `conv2` stays a plain 3x3 convolution.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = _conv(self.planes, 3, self.stride, 'conv1', self.dtype, self.dilation)(x)
    out = nn.relu(self.bn(train, 'bn1')(out))
    out = _conv(self.planes, 3, 1, 'conv2', self.dtype)(out)
    out = self.bn(train, 'bn2')(out)
    return nn.relu(out + self.shortcut(x, self.planes, train))


class Bottleneck(_Block):
  """torchvision's Bottleneck (1x1, 3x3 with the stride and dilation, 1x1 expanding by 4)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = _conv(self.planes, 1, 1, 'conv1', self.dtype)(x)
    out = nn.relu(self.bn(train, 'bn1')(out))
    out = _conv(self.planes, 3, self.stride, 'conv2', self.dtype, self.dilation)(out)
    out = nn.relu(self.bn(train, 'bn2')(out))
    out = _conv(self.planes * 4, 1, 1, 'conv3', self.dtype)(out)
    out = self.bn(train, 'bn3')(out)
    return nn.relu(out + self.shortcut(x, self.planes * 4, train))


class ResNet(nn.Module):
  """A torchvision-compatible ResNet.

  Attributes:
    block: 'basic' or 'bottleneck'.
    stage_sizes: number of blocks in each of the four stages.
    num_classes: output size of the head (ignored when head is 'none' or 'features').
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool) or 'cifar' (3x3/1 conv, no pool).
    in_channels: number of input channels the model is built for.
    width_multiplier: scales every stage's width (64, 128, 256, 512 planes).
    head: 'linear' (torchvision `fc`), 'mlp' (MoCo v2 / SimCLR projection head
      `fc_0` -> relu -> `fc_2`, hidden size = feature size), 'none' (pooled features)
      or 'features' (the four stages' feature maps, no pooling and no head).
    dtype: computation dtype (parameters stay float32).
    replace_stride_with_dilation: torchvision's flags for layer2, layer3, layer4: a
      flagged stage keeps its resolution (stride 1) and multiplies the dilation of the
      following 3x3 convolutions by 2 instead; see `features`.
    bn_momentum: every BatchNorm's running-average momentum, Flax convention
      (0.9 = PyTorch's 0.1; the reference's segmentation backbone uses 0.99 = PyTorch 0.01).
  """
  block: str
  stage_sizes: Sequence[int]
  num_classes: int = 1000
  stem: str = 'imagenet'
  in_channels: int = 3
  width_multiplier: float = 1.0
  head: str = 'linear'
  dtype: Any = jnp.float32
  replace_stride_with_dilation: tuple[bool, bool, bool] = NO_DILATION
  bn_momentum: float = 0.9

  @property
  def num_features(self) -> int:
    """Size of the pooled feature vector that feeds the head."""
    return int(64 * self.width_multiplier) * 8 * _EXPANSION[self.block]

  def features(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    """The stem and the four stages; call it from a compact method (`__call__`).

    Dilation follows torchvision's `ResNet._make_layer`: a stage flagged in
    `replace_stride_with_dilation` gets stride 1 and multiplies the running dilation by
    the stride it drops; its first block uses the previous dilation (and the replaced
    stride, as does its downsample 1x1 conv), the other blocks the new one.

    Args:
      x: images, shape [batch, height, width, in_channels].
      train: batch statistics (and their running-average update) when True.

    Returns:
      {'layer1': ..., 'layer4': ...}, NHWC feature maps in the computation dtype.
    """
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(
          f'ResNet expects NHWC images with {self.in_channels} channels, got shape '
          f'{x.shape}; transpose NCHW inputs with x.transpose(0, 2, 3, 1) or build '
          f'the model with in_channels={x.shape[-1]}.')
    dilate = (False, *_check_dilation(self.replace_stride_with_dilation))
    block_cls = BasicBlock if self.block == 'basic' else Bottleneck
    width = int(64 * self.width_multiplier)
    x = x.astype(self.dtype)
    if self.stem == 'imagenet':
      x = _conv(width, 7, 2, 'conv1', self.dtype)(x)
      x = nn.relu(_bn(train, 'bn1', self.dtype, self.bn_momentum)(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = _conv(width, 3, 1, 'conv1', self.dtype)(x)
      x = nn.relu(_bn(train, 'bn1', self.dtype, self.bn_momentum)(x))
    in_width, dilation, out = width, 1, {}
    for stage, num_blocks in enumerate(self.stage_sizes):
      planes = width * 2**stage
      stride, previous_dilation = (2 if stage > 0 else 1), dilation
      if dilate[stage]:
        dilation, stride = dilation * stride, 1
      for i in range(num_blocks):
        block_stride = stride if i == 0 else 1
        out_width = planes * _EXPANSION[self.block]
        x = block_cls(
            planes, stride=block_stride,
            downsample=(block_stride != 1 or in_width != out_width), dtype=self.dtype,
            dilation=previous_dilation if i == 0 else dilation, bn_momentum=self.bn_momentum,
            name=f'layer{stage + 1}_{i}')(x, train)
        in_width = out_width
      out[STAGES[stage]] = x
    return out

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[str, jax.Array]:
    """Applies the network to NHWC images.

    Args:
      x: images, shape [batch, height, width, in_channels].
      train: batch statistics (and their running-average update) when True.

    Returns:
      Logits [batch, num_classes], pooled features when head='none', or the float32
      feature maps {'layer1': ..., 'layer4': ...} when head='features'.
    """
    features = self.features(x, train)
    if self.head == 'features':
      return {k: v.astype(jnp.float32) for k, v in features.items()}
    x = jnp.mean(features['layer4'], axis=(1, 2))
    if self.head == 'linear':
      x = nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)
    elif self.head == 'mlp':
      x = nn.relu(nn.Dense(self.num_features, dtype=self.dtype, name='fc_0')(x))
      x = nn.Dense(self.num_classes, dtype=self.dtype, name='fc_2')(x)
    return x.astype(jnp.float32)


def create_model(arch: str, *, num_classes: int, stem: str = 'imagenet',
                 in_channels: int = 3, width_multiplier: float = 1.0,
                 head: str = 'linear', dtype: Any = jnp.float32,
                 replace_stride_with_dilation: Sequence[bool] = NO_DILATION,
                 bn_momentum: float = 0.9) -> ResNet:
  """Builds a torchvision-compatible ResNet.

  Args:
    arch: one of resnet18, resnet34, resnet50, resnet101, resnet152.
    num_classes: size of the output layer.
    stem: 'imagenet' or 'cifar'.
    in_channels: input channels (1 for Fashion-MNIST / MNIST).
    width_multiplier: > 0, scales all widths (0.25 gives a 16-wide ResNet).
    head: 'linear', 'mlp', 'none' or 'features' (a dict of the four stages' maps).
    dtype: computation dtype, e.g. jnp.bfloat16 on TPU/GPU.
    replace_stride_with_dilation: 3 bools (layer2, layer3, layer4), torchvision's
      semantics; (False, False, True) gives output stride 16, (False, True, True) 8.
    bn_momentum: BatchNorm running-average momentum, Flax convention (0.9 = PyTorch 0.1).

  Returns:
    An unbound `ResNet`; apply it with {'params', 'batch_stats'} and `train=`.
  """
  if arch not in ARCHS:
    raise ValueError(f'Unknown arch {arch!r}; choose one of {sorted(ARCHS)}.')
  if stem not in STEMS:
    raise ValueError(f'Unknown stem {stem!r}; choose one of {STEMS}.')
  if head not in HEADS:
    raise ValueError(f'Unknown head {head!r}; choose one of {HEADS}.')
  if width_multiplier <= 0 or int(64 * width_multiplier) < 1:
    raise ValueError(f'width_multiplier must give at least 1 channel, got {width_multiplier}.')
  if in_channels < 1 or (head in ('linear', 'mlp') and num_classes < 1):
    raise ValueError(f'in_channels ({in_channels}) and num_classes ({num_classes}) must be >= 1.')
  block, stages = ARCHS[arch]
  return ResNet(block=block, stage_sizes=stages, num_classes=num_classes, stem=stem,
                in_channels=in_channels, width_multiplier=width_multiplier, head=head,
                dtype=dtype,
                replace_stride_with_dilation=_check_dilation(replace_stride_with_dilation),
                bn_momentum=bn_momentum)


def init_variables(model: ResNet, rng: jax.Array, image_size: int) -> dict[str, Any]:
  """Initialises {'params', 'batch_stats'} for square inputs of `image_size`.

  Args:
    model: a module from `create_model` (or `lth_jax.models.create_deeplab`).
    rng: PRNG key.
    image_size: height and width of the inputs used for initialisation.

  Returns:
    The variables as plain nested dicts.
  """
  shape = (1, image_size, image_size, model.in_channels)
  try:
    hash(model)
  except TypeError:  # a module built with list fields (stage_sizes=[2, 2, 2, 2]): no cache
    return dict(jax.jit(functools.partial(_init.__wrapped__, model, shape=shape))(rng))
  return dict(_init(model, rng, shape))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(model: ResNet, rng: jax.Array, shape: tuple[int, ...]) -> Any:
  # One program per (model, input shape), compiled on the first call and reused by every
  # later one: a study initialises the same model many times (θ_p, scratch, each
  # pre-training), and the compile, not the init, is what takes seconds.
  return model.init(rng, jnp.zeros(shape, jnp.float32), train=False)
