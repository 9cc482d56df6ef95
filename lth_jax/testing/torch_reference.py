"""PyTorch ResNets and DeepLabV3+ with the reference's module structure and state-dict keys.

torchvision is not a dependency (and not installed in CI), yet parity tests and
benchmarks need the PyTorch side of the reference models. This module rebuilds
torchvision's ResNet (v1.5: the stride on a bottleneck's 3x3 conv) with the same
attribute names, so `state_dict()` keys match torchvision's exactly, plus the
variants the paper uses: MoCo v2's MLP head (`fc = Sequential(Linear, ReLU, Linear)`),
the reference's CIFAR stem (3x3 stride-1 `conv1`, `maxpool = Identity`), torchvision's
`replace_stride_with_dilation`, and the segmentation model: the reference's (VainF's)
DeepLabV3+ with `backbone.*` and `classifier.*` keys.

torch is imported lazily, inside the builders, so importing this module costs nothing
when torch is absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lth_jax.models.deeplab import create_deeplab
from lth_jax.models.resnet import NO_DILATION, STAGES, create_model


def _import_torch() -> tuple[Any, Any]:
  """torch and torch.nn, or an ImportError that says how to install them."""
  try:
    import torch
    from torch import nn
  except ImportError as e:
    raise ImportError(
        'lth_jax.testing.torch_reference needs PyTorch: install a CPU build, e.g. '
        '`pip install torch==2.13.0`, then `pip install lth_jax[torch]`.') from e
  return torch, nn


def _conv(nn: Any, cin: int, cout: int, kernel: int, stride: int, dilation: int = 1) -> Any:
  return nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2),
                   dilation=dilation, bias=False)


def _block_classes(nn: Any) -> dict[str, type]:
  """torchvision's BasicBlock and Bottleneck, built against the lazily imported torch.nn.

  Dilation: torchvision's Bottleneck dilates its 3x3 conv2; the BasicBlock, which
  torchvision refuses to dilate, dilates conv1 as mmsegmentation's does.
  """

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: Any,
                 dilation: int):
      super().__init__()
      self.conv1 = _conv(nn, inplanes, planes, 3, stride, dilation)
      self.bn1 = nn.BatchNorm2d(planes)
      self.relu = nn.ReLU(inplace=True)
      self.conv2 = _conv(nn, planes, planes, 3, 1)
      self.bn2 = nn.BatchNorm2d(planes)
      self.downsample = downsample
      self.stride = stride

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      return self.relu(out + identity)

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: Any,
                 dilation: int):
      super().__init__()
      self.conv1 = _conv(nn, inplanes, planes, 1, 1)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = _conv(nn, planes, planes, 3, stride, dilation)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = _conv(nn, planes, planes * 4, 1, 1)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.relu = nn.ReLU(inplace=True)
      self.downsample = downsample
      self.stride = stride

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      return self.relu(out + identity)

  return {'basic': BasicBlock, 'bottleneck': Bottleneck}


def _make_layers(nn: Any, block_cls: type, width: int, stage_sizes: Sequence[int],
                 replace_stride_with_dilation: Sequence[bool]) -> tuple[list[Any], int]:
  """torchvision's `ResNet._make_layer` for every stage, built in order.

  Returns:
    (layer1 ... layer4 as `nn.Sequential`s, the channels layer4 outputs).
  """
  layers, inplanes, dilation = [], width, 1
  expansion = block_cls.expansion
  for stage, num_blocks in enumerate(stage_sizes):
    planes = width * 2**stage
    stride, previous_dilation = (2 if stage > 0 else 1), dilation
    if stage > 0 and replace_stride_with_dilation[stage - 1]:
      dilation, stride = dilation * stride, 1
    downsample = None
    if stride != 1 or inplanes != planes * expansion:
      downsample = nn.Sequential(
          _conv(nn, inplanes, planes * expansion, 1, stride),
          nn.BatchNorm2d(planes * expansion))
    blocks = [block_cls(inplanes, planes, stride, downsample, previous_dilation)]
    inplanes = planes * expansion
    blocks += [block_cls(inplanes, planes, 1, None, dilation) for _ in range(1, num_blocks)]
    layers.append(nn.Sequential(*blocks))
  return layers, inplanes


def build_torch_resnet(arch: str, *, num_classes: int, stem: str = 'imagenet',
                       in_channels: int = 3, width_multiplier: float = 1.0,
                       head: str = 'linear',
                       replace_stride_with_dilation: Sequence[bool] = NO_DILATION) -> Any:
  """Builds a PyTorch ResNet whose `state_dict()` keys are torchvision's.

  The arguments mean the same as in `lth_jax.models.create_model`, so a model built
  here and one built there with the same arguments have the same variables.

  Args:
    arch: one of resnet18, resnet34, resnet50, resnet101, resnet152.
    num_classes: output size of the head (ignored when head='none').
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool) or 'cifar' (3x3/1 conv,
      `maxpool` is an Identity).
    in_channels: input channels of `conv1`.
    width_multiplier: scales every stage's width (64, 128, 256, 512 planes).
    head: 'linear' (`fc = Linear`), 'mlp' (MoCo v2's
      `fc = Sequential(Linear(d, d), ReLU, Linear(d, num_classes))`), 'none'
      (`fc = Identity`, pooled features) or 'features' (`fc = Identity`; the forward
      returns {'layer1': ..., 'layer4': ...}, the reference's IntermediateLayerGetter).
    replace_stride_with_dilation: torchvision's flags for layer2, layer3, layer4.

  Returns:
    A `torch.nn.Module` in train mode (call `.eval()` for inference), taking NCHW input.
  """
  # The Flax factory validates the arguments and fixes the block type and depths, so
  # both frameworks read one specification.
  spec = create_model(arch, num_classes=num_classes, stem=stem, in_channels=in_channels,
                      width_multiplier=width_multiplier, head=head,
                      replace_stride_with_dilation=replace_stride_with_dilation)
  torch, nn = _import_torch()
  block_cls = _block_classes(nn)[spec.block]
  width = int(64 * width_multiplier)

  class ResNet(nn.Module):
    """torchvision.models.ResNet, same attribute names and forward."""

    def __init__(self):
      super().__init__()
      kernel, stride = (7, 2) if stem == 'imagenet' else (3, 1)
      self.conv1 = _conv(nn, in_channels, width, kernel, stride)
      self.bn1 = nn.BatchNorm2d(width)
      self.relu = nn.ReLU(inplace=True)
      self.maxpool = (nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == 'imagenet'
                      else nn.Identity())
      layers, inplanes = _make_layers(nn, block_cls, width, spec.stage_sizes,
                                      spec.replace_stride_with_dilation)
      for name, layer in zip(STAGES, layers):
        setattr(self, name, layer)
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      if head == 'linear':
        self.fc = nn.Linear(inplanes, num_classes)
      elif head == 'mlp':
        self.fc = nn.Sequential(nn.Linear(inplanes, inplanes), nn.ReLU(),
                                nn.Linear(inplanes, num_classes))
      else:
        self.fc = nn.Identity()
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      features = {}
      for stage in STAGES:
        x = features[stage] = getattr(self, stage)(x)
      if head == 'features':
        return features
      return self.fc(torch.flatten(self.avgpool(x), 1))

  return ResNet()


def _deeplab_head_class(torch: Any, nn: Any) -> type:
  """The reference's DeepLabHeadV3Plus (with ASPP), widths as arguments."""
  functional = torch.nn.functional

  def conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> list:
    return [_conv(nn, cin, cout, kernel, 1, dilation), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

  class ASPPPooling(nn.Sequential):

    def __init__(self, cin: int, cout: int):
      super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(cin, cout, 1))

    def forward(self, x):
      size = x.shape[-2:]
      return functional.interpolate(super().forward(x), size=size, mode='bilinear',
                                    align_corners=False)

  class ASPP(nn.Module):

    def __init__(self, cin: int, cout: int, rates: Sequence[int]):
      super().__init__()
      self.convs = nn.ModuleList(
          [nn.Sequential(*conv_bn_relu(cin, cout, 1))]
          + [nn.Sequential(*conv_bn_relu(cin, cout, 3, rate)) for rate in rates]
          + [ASPPPooling(cin, cout)])
      self.project = nn.Sequential(*conv_bn_relu(5 * cout, cout, 1), nn.Dropout(0.1))

    def forward(self, x):
      return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))

  class DeepLabHeadV3Plus(nn.Module):

    def __init__(self, in_channels: int, low_level_in: int, num_classes: int,
                 rates: Sequence[int], channels: int, low_level_channels: int):
      super().__init__()
      self.project = nn.Sequential(*conv_bn_relu(low_level_in, low_level_channels, 1))
      self.aspp = ASPP(in_channels, channels, rates)
      self.classifier = nn.Sequential(
          *conv_bn_relu(low_level_channels + channels, channels, 3),
          nn.Conv2d(channels, num_classes, 1))
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
          nn.init.constant_(m.weight, 1)
          nn.init.constant_(m.bias, 0)

    def forward(self, features):
      low_level = self.project(features['layer1'])
      out = self.aspp(features['layer4'])
      out = functional.interpolate(out, size=low_level.shape[2:], mode='bilinear',
                                   align_corners=False)
      return self.classifier(torch.cat([low_level, out], dim=1))

  return DeepLabHeadV3Plus


def build_torch_deeplab(arch: str, *, num_classes: int, output_stride: int = 16,
                        in_channels: int = 3, stem: str = 'imagenet',
                        width_multiplier: float = 1.0, head_channels: int = 256,
                        low_level_channels: int = 48,
                        aspp_rates: Sequence[int] | None = None) -> Any:
  """Builds the reference's DeepLabV3+ (`network.deeplabv3plus_resnet50` and siblings).

  The arguments mean the same as in `lth_jax.models.create_deeplab`; the defaults give
  the reference's model, whose `state_dict()` keys (`backbone.*`, `classifier.*`) this
  one shares.

  Args:
    arch: a ResNet of `lth_jax.models.ARCHS`.
    num_classes: segmentation classes.
    output_stride: 16 or 8.
    in_channels: input channels.
    stem: 'imagenet' or 'cifar'.
    width_multiplier: scales the backbone's widths.
    head_channels: ASPP and decoder width.
    low_level_channels: width of the projected layer1 features.
    aspp_rates: overrides the output stride's ASPP rates.

  Returns:
    A `torch.nn.Module` in train mode, NCHW images -> NCHW logits of the input's size.
  """
  spec = create_deeplab(arch, num_classes=num_classes, output_stride=output_stride,
                        in_channels=in_channels, stem=stem, width_multiplier=width_multiplier,
                        head_channels=head_channels, low_level_channels=low_level_channels,
                        aspp_rates=aspp_rates)
  torch, nn = _import_torch()
  layer1_width = int(64 * width_multiplier) * _block_classes(nn)[spec.block].expansion
  head_cls = _deeplab_head_class(torch, nn)

  class DeepLabV3(nn.Module):
    """The reference's `_SimpleSegmentationModel`: backbone, classifier, upsampling."""

    def __init__(self):
      super().__init__()
      self.backbone = build_torch_resnet(
          arch, num_classes=num_classes, stem=stem, in_channels=in_channels,
          width_multiplier=width_multiplier, head='features',
          replace_stride_with_dilation=spec.replace_stride_with_dilation)
      self.classifier = head_cls(layer1_width * 8, layer1_width, num_classes, spec.aspp_rates,
                                 head_channels, low_level_channels)

    def forward(self, x):
      out = self.classifier(self.backbone(x))
      return torch.nn.functional.interpolate(out, size=x.shape[-2:], mode='bilinear',
                                             align_corners=False)

  return DeepLabV3()
