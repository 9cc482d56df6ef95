"""The YOLOv4 neck and heads of the reference's Resnet50-YOLOv4, and their decoding.

The reference (`Detection/model/YOLOv4.py`, `model/build_model.py`, `model/head/yolo_head.py`)
puts three pieces on the ResNet stages layer2/3/4 (strides 8, 16, 32):

- SPP on layer4: 1x1, 3x3, 1x1 convolutions, then max-pools 5, 9, 13 (stride 1, same
  padding) concatenated after the input: [x, pool5, pool9, pool13].
- PANet: a top-down path (1x1 conv + nearest 2x upsampling, concat, five convolutions)
  and a bottom-up path (3x3 stride-2 conv, concat, five convolutions).
- Three prediction convolutions (3x3 conv-BN-act, then a 1x1 conv with bias) with
  3 anchors x (4 box + 1 objectness + num_classes) channels each.

Every conv-BN-activation block is the reference's `YOLOv4.Conv`: bias-free convolution
with symmetric k // 2 padding, BatchNorm, `nn.LeakyReLU()` -- PyTorch's default slope
0.01, not the 0.1 of `layers/conv_module.Convolutional`, which this model does not use.
Convolutions start from N(0, 0.01) and BatchNorm from (1, 0), as the reference's
`__initialize_weights`.

Channel counts follow the reference's `feature_channels = [512, 1024, 2048]` for its
ResNet-50 backbone, scaled by `width` so that tiny offline models can shrink the neck.
Parameters live under `neck/...` and `head/...`, outside the backbone pruning policy.
`YoloDetector` is the whole network: a ResNet whose stages feed the neck (or the heads),
the backbone's parameters at the root of the tree with torchvision names, as in a
classifier. Its `neck='none'` (not the reference's) leaves SPP and PANet out: the heads
read the backbone's layer2/3/4 directly, so that between the backbone and the outputs
there are two layers, not some 30 that start from random weights (the few-shot
miniature's detection recipe: with a hundred training canvases the deep neck learns
little, and what the backbone brings from pre-training does not reach the heads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lth_jax.models.resnet import ResNet, create_model

# Detection/config/yolov4_config.py MODEL["ANCHORS"]: the VOC anchors per scale (small,
# medium, large objects), as (w, h) in units of that scale's stride. In pixels they are
# (10, 13), (16, 30), (33, 23) / (30, 61), (62, 45), (59, 119) / (116, 90), (156, 198),
# (373, 326).
ANCHORS = np.array([
    [(1.25, 1.625), (2.0, 3.75), (4.125, 2.875)],
    [(1.875, 3.8125), (3.875, 2.8125), (3.6875, 7.4375)],
    [(3.625, 2.8125), (4.875, 6.1875), (11.65625, 10.1875)],
], dtype=np.float32)
# Same file, MODEL["STRIDES"]: the strides of the layer2/3/4 features the heads read.
STRIDES = (8, 16, 32)
ANCHORS_PER_SCALE = 3
# YOLOv4.py: feature_channels for "Resnet50-YOLOv4" (layer2/3/4 widths of ResNet-50).
NECK_CHANNELS = (512, 1024, 2048)
FEATURE_KEYS = ('layer2', 'layer3', 'layer4')
SPP_POOL_SIZES = (5, 9, 13)
LEAKY_SLOPE = 0.01
# YoloDetector.neck: the reference's SPP + PANet, or the heads on the backbone's stages.
NECKS = ('panet', 'none')

_init = nn.initializers.normal(0.01)


def neck_channels(width: float) -> tuple[int, int, int]:
  """The neck's three channel counts (reference 512, 1024, 2048) scaled by `width`.

  Args:
    width: > 0; 1.0 is the reference's ResNet-50 neck.

  Returns:
    (c3, c4, c5); the neck halves each, so each is at least 2.

  Raises:
    ValueError: the width leaves fewer than 2 channels.
  """
  channels = tuple(int(c * width) for c in NECK_CHANNELS)
  if width <= 0 or min(channels) < 2:
    raise ValueError(
        f'neck width {width} gives channels {channels}; use a width >= {2 / NECK_CHANNELS[0]} '
        'so that every neck layer keeps at least one channel.')
  return channels


def check_neck(neck: str) -> None:
  """Fails unless `neck` is one of `NECKS`.

  Args:
    neck: a `YoloDetector.neck`.

  Raises:
    ValueError: naming the choices.
  """
  if neck not in NECKS:
    raise ValueError(f'Unknown detector neck {neck!r}; use one of {NECKS} '
                     "('panet', the reference's SPP + PANet; 'none', the heads on the "
                     "backbone's layer2/3/4).")


class ConvBNLeaky(nn.Module):
  """The reference's `YOLOv4.Conv`: conv (no bias, k // 2 padding), BatchNorm, leaky 0.01."""
  features: int
  kernel: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Applies the block.

    Args:
      x: NHWC input.
      train: batch statistics (and their running-average update) when True.

    Returns:
      NHWC output with `features` channels.
    """
    pad = self.kernel // 2
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                padding=[(pad, pad), (pad, pad)], use_bias=False, kernel_init=_init,
                dtype=self.dtype, name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name='bn')(x)
    return nn.leaky_relu(x, LEAKY_SLOPE)


def _upsample2(x: jax.Array) -> jax.Array:
  # nn.Upsample(scale_factor=2) defaults to nearest neighbour.
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _spp_pools(x: jax.Array) -> jax.Array:
  pools = [nn.max_pool(x, (k, k), strides=(1, 1), padding=((k // 2, k // 2),) * 2)
           for k in SPP_POOL_SIZES]
  return jnp.concatenate([x, *pools], axis=-1)


class YoloNeck(nn.Module):
  """SPP on the stride-32 features, then the reference's PANet.

  Attributes:
    channels: the reference's feature_channels (c3, c4, c5) = (512, 1024, 2048) at full
      width; see `neck_channels`. The backbone's own widths may differ: the first
      convolution of every path adapts them.
    dtype: computation dtype.
  """
  channels: Sequence[int] = NECK_CHANNELS
  dtype: Any = jnp.float32

  def _block(self, x: jax.Array, out: int, kernel: int, name: str, train: bool,
             stride: int = 1) -> jax.Array:
    return ConvBNLeaky(out, kernel, stride, dtype=self.dtype, name=name)(x, train)

  def _stack(self, x: jax.Array, out: int, n: int, name: str, train: bool) -> jax.Array:
    """n alternating 1x1 (out) and 3x3 (2 * out) blocks, named name_0 .. name_{n-1}."""
    for i in range(n):
      x = self._block(x, out * (1 + i % 2), 1 + 2 * (i % 2), f'{name}_{i}', train)
    return x

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], train: bool
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Fuses the three backbone stages.

    Args:
      features: {'layer2', 'layer3', 'layer4'} NHWC maps of strides 8, 16, 32 (other
        keys, e.g. 'layer1', are ignored).
      train: batch statistics when True.

    Returns:
      Maps of strides 8, 16, 32 with c3 / 2, c4 / 2, c5 / 2 channels.
    """
    missing = [k for k in FEATURE_KEYS if k not in features]
    if missing:
      raise ValueError(f'YoloNeck needs backbone features {FEATURE_KEYS}, missing {missing}; '
                       "build the ResNet with head='features'.")
    c3, c4, c5 = (c // 2 for c in self.channels)
    f3, f4, f5 = (features[k].astype(self.dtype) for k in FEATURE_KEYS)

    f5 = _spp_pools(self._stack(f5, c5, 3, 'spp_head_conv', train))
    f3 = self._block(f3, c3, 1, 'feature_transform3', train)
    f4 = self._block(f4, c4, 1, 'feature_transform4', train)

    # Top-down (the reference's "downstream"), then bottom-up ("upstream"); the concat
    # orders are the reference's, which fixes the kernels' input-channel layout.
    down5 = self._stack(f5, c5, 3, 'downstream_conv5', train)
    up = _upsample2(self._block(down5, c4, 1, 'resample5_4', train))
    down4 = self._stack(jnp.concatenate([f4, up], -1), c4, 5, 'downstream_conv4', train)
    up = _upsample2(self._block(down4, c3, 1, 'resample4_3', train))
    down3 = self._stack(jnp.concatenate([f3, up], -1), c3, 5, 'downstream_conv3', train)

    down = self._block(down3, c4, 3, 'resample3_4', train, stride=2)
    up4 = self._stack(jnp.concatenate([down, down4], -1), c4, 5, 'upstream_conv4', train)
    down = self._block(up4, c5, 3, 'resample4_5', train, stride=2)
    up5 = self._stack(jnp.concatenate([down, down5], -1), c5, 5, 'upstream_conv5', train)
    return down3, up4, up5


class YoloHead(nn.Module):
  """The reference's PredictNet: per scale a 3x3 block and a 1x1 conv with bias.

  Attributes:
    channels: the neck's (c3, c4, c5); scale i's 3x3 block maps its input (the neck's
      c_i / 2 channels, or a backbone stage's) to c_i.
    num_classes: object classes (20 for VOC).
    dtype: computation dtype.
  """
  channels: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps: Sequence[jax.Array], train: bool) -> tuple[jax.Array, ...]:
    """Predicts raw (undecoded) outputs.

    Args:
      maps: the neck's three outputs (or the backbone's layer2/3/4), strides 8, 16, 32.
      train: batch statistics when True.

    Returns:
      Per scale, float32 [batch, grid_h, grid_w, 3, 5 + num_classes] with channels
      (tx, ty, tw, th, objectness logit, class logits...). The anchor-major split of the
      conv's channels is the reference's `view(bs, 3, 5 + nC, nG, nG)`.
    """
    outputs = []
    for i, (x, c) in enumerate(zip(maps, self.channels)):
      x = ConvBNLeaky(c, 3, dtype=self.dtype, name=f'predict_conv{i}_0')(x, train)
      x = nn.Conv(ANCHORS_PER_SCALE * (5 + self.num_classes), (1, 1), kernel_init=_init,
                  dtype=self.dtype, name=f'predict_conv{i}_1')(x)
      outputs.append(x.reshape(*x.shape[:-1], ANCHORS_PER_SCALE, 5 + self.num_classes)
                     .astype(jnp.float32))
    return tuple(outputs)


def decode(raw: jax.Array, anchors: Any, stride: int) -> jax.Array:
  """Turns one scale's raw outputs into boxes in input pixels, as the reference's Yolo_head.

  x = (sigmoid(tx) + cell_x) * stride, w = exp(tw) * anchor_w * stride (no scale_xy
  tweak); objectness and classes are sigmoids (multi-label, no softmax).

  Args:
    raw: [..., grid_h, grid_w, A, 5 + num_classes] from `YoloHead`.
    anchors: [A, 2] anchor (w, h) in units of `stride`, e.g. ANCHORS[i].
    stride: the scale's stride in pixels.

  Returns:
    [..., grid_h, grid_w, A, 5 + num_classes] float32: (cx, cy, w, h) in input pixels,
    objectness probability, class probabilities.
  """
  raw = raw.astype(jnp.float32)
  grid_h, grid_w = raw.shape[-4], raw.shape[-3]
  gx, gy = jnp.meshgrid(jnp.arange(grid_w, dtype=jnp.float32),
                        jnp.arange(grid_h, dtype=jnp.float32))
  grid = jnp.stack([gx, gy], axis=-1)[:, :, None, :]
  xy = (jax.nn.sigmoid(raw[..., 0:2]) + grid) * stride
  wh = jnp.exp(raw[..., 2:4]) * jnp.asarray(anchors, jnp.float32) * stride
  return jnp.concatenate([xy, wh, jax.nn.sigmoid(raw[..., 4:])], axis=-1)


class YoloDetector(ResNet):
  """A ResNet backbone, the YOLOv4 neck and the three heads (the reference's Resnet50-YOLOv4).

  The backbone's variables keep a classifier's names at the root (conv1, layer1_0, ...),
  so checkpoints, masks and pruning policies carry over; the rest sits under neck/ (none
  with neck='none') and head/.

  Attributes (besides `ResNet`'s; `head` is unused, `num_classes` is the number of
  object classes):
    neck_width: scales the neck's and the heads' channels, see `neck_channels`.
    neck: one of `NECKS`: 'panet' (the reference's SPP + PANet) or 'none' (the heads read
      the backbone's layer2/3/4 as they are; no parameters under neck/).
  """
  head: str = 'features'
  neck_width: float = 1.0
  neck: str = 'panet'

  @property
  def strides(self) -> tuple[int, int, int]:
    """Strides of the three outputs, in input pixels.

    STRIDES with the ImageNet stem; 4x finer with the CIFAR stem (no stem downsampling),
    where ANCHORS, in stride units, then stand for 4x smaller boxes.
    """
    return STRIDES if self.stem == 'imagenet' else tuple(s // 4 for s in STRIDES)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
    """Applies the detector to NHWC images.

    Args:
      x: images [batch, height, width, in_channels], sides multiples of strides[-1].
      train: batch statistics (and their running-average update) when True.

    Returns:
      Per scale (strides ascending), raw float32 outputs
      [batch, height / stride, width / stride, 3, 5 + num_classes]; see `decode`.
    """
    channels = neck_channels(self.neck_width)
    features = self.features(x, train)
    check_neck(self.neck)
    if self.neck == 'panet':
      maps = YoloNeck(channels, dtype=self.dtype, name='neck')(features, train)
    else:
      maps = tuple(features[k].astype(self.dtype) for k in FEATURE_KEYS)
    return YoloHead(channels, self.num_classes, dtype=self.dtype, name='head')(maps, train)


def create_detector(arch: str, *, num_classes: int, width_multiplier: float = 1.0,
                    stem: str = 'imagenet', in_channels: int = 3, neck_width: float = 1.0,
                    neck: str = 'panet', dtype: Any = jnp.float32) -> YoloDetector:
  """Builds a YOLOv4 detector on a torchvision-compatible ResNet.

  The reference's model is create_detector('resnet50', num_classes=20). Initialise it
  with `lth_jax.models.init_variables` at a size that is a multiple of strides[-1].

  Args:
    arch: one of resnet18, resnet34, resnet50, resnet101, resnet152.
    num_classes: object classes (20 for VOC).
    width_multiplier: > 0, scales the backbone's widths.
    stem: 'imagenet' (strides 8, 16, 32) or 'cifar' (2, 4, 8).
    in_channels: input channels.
    neck_width: > 0, scales the neck's (512, 1024, 2048) channels, which are also the
      heads' (with neck='none' too, where the heads read the backbone's stages).
    neck: one of `NECKS`; 'panet' is the reference's.
    dtype: computation dtype.

  Returns:
    An unbound `YoloDetector`.

  Raises:
    ValueError: no object classes, a neck width that leaves no channels, or a neck not
      in `NECKS`.
  """
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1 object classes, got {num_classes}.')
  check_neck(neck)
  neck_channels(neck_width)
  # create_model validates the backbone's arguments.
  backbone = create_model(arch, num_classes=num_classes, stem=stem, in_channels=in_channels,
                          width_multiplier=width_multiplier, head='features', dtype=dtype)
  return YoloDetector(block=backbone.block, stage_sizes=backbone.stage_sizes,
                      num_classes=num_classes, stem=stem, in_channels=in_channels,
                      width_multiplier=width_multiplier, head='features', dtype=dtype,
                      neck_width=neck_width, neck=neck)
