"""PyTorch ResNets with torchvision's module structure and state-dict keys.

torchvision is not a dependency (and not installed in CI), yet parity tests and
benchmarks need the PyTorch side of the reference models. This module rebuilds
torchvision's ResNet (v1.5: the stride on a bottleneck's 3x3 conv) with the same
attribute names, so `state_dict()` keys match torchvision's exactly, plus the two
variants the paper uses: MoCo v2's MLP head (`fc = Sequential(Linear, ReLU, Linear)`)
and the reference's CIFAR stem (3x3 stride-1 `conv1`, `maxpool = Identity`).

torch is imported lazily, inside `build_torch_resnet`, so importing this module
costs nothing when torch is absent.
"""

from __future__ import annotations

from typing import Any

from lth_jax.models.resnet import create_model


def _conv(nn: Any, cin: int, cout: int, kernel: int, stride: int) -> Any:
  return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


def _block_classes(nn: Any) -> dict[str, type]:
  """torchvision's BasicBlock and Bottleneck, built against the lazily imported torch.nn."""

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: Any):
      super().__init__()
      self.conv1 = _conv(nn, inplanes, planes, 3, stride)
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

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: Any):
      super().__init__()
      self.conv1 = _conv(nn, inplanes, planes, 1, 1)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = _conv(nn, planes, planes, 3, stride)
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


def build_torch_resnet(arch: str, *, num_classes: int, stem: str = 'imagenet',
                       in_channels: int = 3, width_multiplier: float = 1.0,
                       head: str = 'linear') -> Any:
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
      `fc = Sequential(Linear(d, d), ReLU, Linear(d, num_classes))`) or 'none'
      (`fc = Identity`, pooled features).

  Returns:
    A `torch.nn.Module` in train mode (call `.eval()` for inference), taking NCHW input.
  """
  # The Flax factory validates the arguments and fixes the block type and depths, so
  # both frameworks read one specification.
  spec = create_model(arch, num_classes=num_classes, stem=stem, in_channels=in_channels,
                      width_multiplier=width_multiplier, head=head)
  try:
    import torch
    from torch import nn
  except ImportError as e:
    raise ImportError(
        'build_torch_resnet needs PyTorch: install a CPU build, e.g. '
        '`pip install torch==2.13.0`, then `pip install lth_jax[torch]`.') from e
  block_cls = _block_classes(nn)[spec.block]
  expansion = block_cls.expansion
  stage_sizes = spec.stage_sizes
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
      inplanes = width
      for stage, num_blocks in enumerate(stage_sizes):
        planes = width * 2**stage
        blocks = []
        for i in range(num_blocks):
          stride = 2 if stage > 0 and i == 0 else 1
          downsample = None
          if stride != 1 or inplanes != planes * expansion:
            downsample = nn.Sequential(
                _conv(nn, inplanes, planes * expansion, 1, stride),
                nn.BatchNorm2d(planes * expansion))
          blocks.append(block_cls(inplanes, planes, stride, downsample))
          inplanes = planes * expansion
        setattr(self, f'layer{stage + 1}', nn.Sequential(*blocks))
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
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(torch.flatten(self.avgpool(x), 1))

  return ResNet()
