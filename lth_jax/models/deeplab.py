"""DeepLabV3+ on the torchvision-named ResNets, equal to the reference's (VainF) PyTorch model.

`DeepLabV3Plus` subclasses `ResNet`, so the backbone's parameters sit at the root of the
tree with torchvision's names (`conv1`, `layer3_0/conv2`, ...) and `lth_jax.interop.checkpoints`,
`lth_jax.masks` and tickets treat them exactly as a classifier's. The head lives under
`classifier`; its module names are the reference's state-dict keys with each
`Sequential`/`ModuleList` index joined to the name before it by '_':

    classifier/project_0, project_1         layer1 -> 1x1 conv to 48, BN (+ ReLU)
    classifier/aspp/convs_0_0, convs_0_1    ASPP 1x1 branch: conv, BN (+ ReLU)
    classifier/aspp/convs_{1,2,3}_{0,1}     ASPP 3x3 atrous branches: conv, BN (+ ReLU)
    classifier/aspp/convs_4_1, convs_4_2    ASPP image pooling branch (mean, conv, BN, ReLU)
    classifier/aspp/project_0, project_1    1x1 projection of the five branches, BN
                                            (+ ReLU, Dropout(0.1) `project_3`)
    classifier/classifier_0, classifier_1   3x3 conv of the concatenation, BN (+ ReLU)
    classifier/classifier_3                 1x1 conv (with bias) to the classes

No head leaf matches `lth_jax.masks.DEFAULT_POLICY`, so a DeepLab has exactly the prunable
convolutions of its backbone. `lth_jax.interop.checkpoints.load_pytorch` reads the
reference's whole state dict (`backbone.*`, `classifier.*`) and `to_pytorch(variables,
backbone_prefix='backbone.')` writes it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lth_jax.models.resnet import ResNet, create_model

# The head's root module (the reference's `classifier.*` keys).
HEAD = 'classifier'
# Output stride -> (replace_stride_with_dilation, ASPP rates), as the reference's
# `network/modeling.py` sets them for an ImageNet-stem ResNet.
OUTPUT_STRIDES: dict[int, tuple[tuple[bool, bool, bool], tuple[int, int, int]]] = {
    16: ((False, False, True), (6, 12, 18)),
    8: ((False, True, True), (12, 24, 36)),
}
# The crop size the reference's ASPP rates were chosen for (VOC, `--crop_size 513`).
REFERENCE_CROP_SIZE = 513
DROPOUT_RATE = 0.1

# The reference's `_init_weight`: kaiming_normal_ (fan_in, gain sqrt(2)) for every head conv.
_head_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def _torch_bias_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32, *,
                     fan_in: int) -> jax.Array:
  # PyTorch's default Conv2d bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  bound = 1 / np.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _check_output_stride(output_stride: int) -> tuple[tuple[bool, bool, bool], tuple[int, ...]]:
  if output_stride not in OUTPUT_STRIDES:
    raise ValueError(f'output_stride must be one of {sorted(OUTPUT_STRIDES)} (the stride of '
                     f'layer4 w.r.t. the input), got {output_stride!r}.')
  return OUTPUT_STRIDES[output_stride]


def aspp_rates_for(output_stride: int, crop_size: int) -> tuple[int, int, int]:
  """The reference's ASPP rates scaled to another crop size.

  The rates (6, 12, 18) at output stride 16 were chosen for 513-pixel crops, where layer4
  is 33x33. A 3x3 atrous tap that lands farther than the feature map's size from every
  position reads only zero padding, so on small inputs the reference rates turn the
  branches into 1x1 convolutions. The rule here keeps rate / feature size constant:
  round(rate * crop_size / 513), at least 1.

  Args:
    output_stride: 8 or 16.
    crop_size: side of the (square) training crops.

  Returns:
    Three rates; the reference's own for crop_size=513.
  """
  _, rates = _check_output_stride(output_stride)
  if crop_size < 1:
    raise ValueError(f'crop_size must be >= 1, got {crop_size}.')
  return tuple(max(1, round(r * crop_size / REFERENCE_CROP_SIZE)) for r in rates)


def _resize_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
  in_size = x.shape[axis]
  if in_size == size:
    return x  # PyTorch samples exactly the input pixels then
  # PyTorch's area_pixel_compute_source_index (align_corners=False), in float32 as it does.
  scale = np.float32(in_size) / np.float32(size)
  src = np.maximum((np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale
                   - np.float32(0.5), np.float32(0))
  lo = src.astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  shape = [1] * x.ndim
  shape[axis] = size
  weight = jnp.asarray((src - lo).reshape(shape), x.dtype)
  return (1 - weight) * jnp.take(x, lo, axis=axis) + weight * jnp.take(x, hi, axis=axis)


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """PyTorch's `F.interpolate(mode='bilinear', align_corners=False)` for NHWC arrays.

  Half-pixel centres, source coordinates clamped at 0, two taps per axis, no
  antialiasing when shrinking. `jax.image.resize(..., 'bilinear')` agrees when
  upsampling (up to float32 rounding) but antialiases when shrinking, and it contracts
  with a dense [out, in] weight matrix per axis where two gathered taps suffice.

  Args:
    x: [batch, height, width, channels].
    size: (height, width) of the output.

  Returns:
    [batch, size[0], size[1], channels] in the dtype of `x`.
  """
  return _resize_axis(_resize_axis(x, 1, size[0]), 2, size[1])


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling, the reference's `ASPP` (names: its state-dict keys)."""
  channels: int
  rates: Sequence[int]
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, self.channels, use_bias=False, kernel_init=_head_init,
                             dtype=self.dtype)
    bn = functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype)
    branches = [nn.relu(bn(name='convs_0_1')(conv((1, 1), name='convs_0_0')(x)))]
    for i, rate in enumerate(self.rates, start=1):
      out = conv((3, 3), padding=[(rate, rate)] * 2, kernel_dilation=(rate, rate),
                 name=f'convs_{i}_0')(x)
      branches.append(nn.relu(bn(name=f'convs_{i}_1')(out)))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = nn.relu(bn(name='convs_4_2')(conv((1, 1), name='convs_4_1')(pooled)))
    # Bilinear upsampling of a 1x1 map is a broadcast.
    branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], self.channels)))
    out = conv((1, 1), name='project_0')(jnp.concatenate(branches, axis=-1))
    out = nn.relu(bn(name='project_1')(out))
    return nn.Dropout(DROPOUT_RATE, deterministic=not train, name='project_3')(out)


class DeepLabHeadV3Plus(nn.Module):
  """The reference's `DeepLabHeadV3Plus`: ASPP on layer4, fused with projected layer1."""
  num_classes: int
  rates: Sequence[int]
  channels: int = 256
  low_level_channels: int = 48
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, low_level: jax.Array, out: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_head_init, dtype=self.dtype)
    bn = functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype)
    low_level = conv(self.low_level_channels, (1, 1), name='project_0')(low_level)
    low_level = nn.relu(bn(name='project_1')(low_level))
    out = ASPP(self.channels, self.rates, self.bn_momentum, self.dtype, name='aspp')(out, train)
    out = resize_bilinear(out, low_level.shape[1:3])
    out = conv(self.channels, (3, 3), padding=[(1, 1), (1, 1)], name='classifier_0')(
        jnp.concatenate([low_level, out], axis=-1))
    out = nn.relu(bn(name='classifier_1')(out))
    return nn.Conv(self.num_classes, (1, 1), kernel_init=_head_init,
                   bias_init=functools.partial(_torch_bias_init, fan_in=self.channels),
                   dtype=self.dtype, name='classifier_3')(out)


class DeepLabV3Plus(ResNet):
  """DeepLabV3+ with a (dilated) ResNet backbone whose variables sit at the tree's root.

  Attributes (besides `ResNet`'s; `head` is unused, `num_classes` is the number of
  segmentation classes and `bn_momentum` applies to the backbone only):
    aspp_rates: dilation rates of the three atrous ASPP branches.
    head_channels: width of ASPP and of the decoder (256 in the reference).
    low_level_channels: width layer1 is projected to (48 in the reference).
    head_bn_momentum: the head's BatchNorm momentum, Flax convention (the reference keeps
      PyTorch's 0.1 = Flax 0.9 there while its backbone uses 0.01 = Flax 0.99).
  """
  head: str = 'features'
  aspp_rates: Sequence[int] = OUTPUT_STRIDES[16][1]
  head_channels: int = 256
  low_level_channels: int = 48
  head_bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Segments NHWC images.

    Args:
      x: images, shape [batch, height, width, in_channels].
      train: batch statistics (and their update) and dropout when True; then `apply`
        needs rngs={'dropout': key}.

    Returns:
      float32 logits [batch, height, width, num_classes].
    """
    maps = self.features(x, train)
    logits = DeepLabHeadV3Plus(
        self.num_classes, tuple(self.aspp_rates), self.head_channels, self.low_level_channels,
        self.head_bn_momentum, self.dtype, name=HEAD)(
            maps['layer1'], maps['layer4'], train)
    return resize_bilinear(logits.astype(jnp.float32), x.shape[1:3])


def create_deeplab(arch: str, *, num_classes: int, output_stride: int = 16,
                   in_channels: int = 3, stem: str = 'imagenet', width_multiplier: float = 1.0,
                   head_channels: int = 256, low_level_channels: int = 48,
                   aspp_rates: Sequence[int] | None = None, bn_momentum: float = 0.9,
                   head_bn_momentum: float = 0.9, dtype: Any = jnp.float32) -> DeepLabV3Plus:
  """Builds the reference's DeepLabV3+ (`deeplabv3plus_resnet50` and siblings).

  Args:
    arch: a ResNet of `lth_jax.models.ARCHS`; the reference uses resnet50.
    num_classes: segmentation classes (21 for VOC).
    output_stride: 16 (layer4 dilated, rates (6, 12, 18); the reference's default) or 8
      (layer3 and layer4 dilated, rates (12, 24, 36)). It counts for the ImageNet stem;
      the CIFAR stem does not downsample, so its feature maps are 4x finer.
    in_channels: input channels.
    stem: 'imagenet' or 'cifar'.
    width_multiplier: scales the backbone's widths (tiny offline models).
    head_channels: ASPP and decoder width (256); shrink it with the backbone.
    low_level_channels: width of the projected layer1 features (48).
    aspp_rates: overrides the output stride's rates; for inputs far smaller than the
      reference's 513-pixel crops pass `aspp_rates_for(output_stride, crop_size)`.
    bn_momentum: the backbone's BatchNorm momentum, Flax convention (0.99 = the
      reference's PyTorch 0.01); the default keeps the classifier models' 0.9.
    head_bn_momentum: the head's BatchNorm momentum, Flax convention.
    dtype: computation dtype.

  Returns:
    An unbound `DeepLabV3Plus`; initialise it with `lth_jax.models.init_variables`.
  """
  dilation, rates = _check_output_stride(output_stride)
  rates = rates if aspp_rates is None else tuple(aspp_rates)
  if len(rates) != 3 or not all(isinstance(r, int) and r >= 1 for r in rates):
    raise ValueError(f'aspp_rates must be 3 positive ints, got {aspp_rates!r}.')
  if min(num_classes, head_channels, low_level_channels) < 1:
    raise ValueError(f'num_classes ({num_classes}), head_channels ({head_channels}) and '
                     f'low_level_channels ({low_level_channels}) must be >= 1.')
  # The ResNet factory validates the backbone's arguments and fixes its block and depths.
  backbone = create_model(arch, num_classes=num_classes, stem=stem, in_channels=in_channels,
                          width_multiplier=width_multiplier, head='features', dtype=dtype,
                          replace_stride_with_dilation=dilation, bn_momentum=bn_momentum)
  return DeepLabV3Plus(
      block=backbone.block, stage_sizes=backbone.stage_sizes, num_classes=num_classes,
      stem=stem, in_channels=in_channels, width_multiplier=width_multiplier, dtype=dtype,
      replace_stride_with_dilation=dilation, bn_momentum=bn_momentum, aspp_rates=rates,
      head_channels=head_channels, low_level_channels=low_level_channels,
      head_bn_momentum=head_bn_momentum)
