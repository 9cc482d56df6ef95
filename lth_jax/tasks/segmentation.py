"""Semantic segmentation: DeepLabV3+ on the (dilated) ResNet, pixel cross-entropy, mIoU.

The reference's `Segmentation/` recipe (a fork of VainF/DeepLabV3Plus-Pytorch): the
backbone's weights at the root of the tree (so tickets, masks and PyTorch names are a
classifier's), the ASPP + decoder head under `classifier` (never pruned), per-pixel
cross-entropy that skips the ignore label, one confusion matrix over every pixel of the
evaluation split and mIoU = the nanmean of the per-class IoUs (`lth_jax.metrics`).

Model options (`ModelSpec.options`, the experiment's extra `config.model` fields):
  output_stride       16 (layer4 dilated) or 8 (layer3 and layer4); default 16
  aspp_rates          the three atrous rates; default the reference's scaled to the crop
                      (`lth_jax.models.deeplab.aspp_rates_for`; a CIFAR stem's features
                      are 4x finer, so it counts as a 4x larger crop)
  head_channels       ASPP and decoder width (256)
  low_level_channels  the projected layer1 width (48)
  bn_momentum         the backbone's BatchNorm momentum, Flax convention (0.99: the
                      reference's PyTorch 0.01); the head keeps 0.9 (PyTorch 0.1)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lth_jax import data, metrics
from lth_jax.data import DatasetInfo
from lth_jax.metrics.headline import Metric
from lth_jax.models import create_deeplab
from lth_jax.models.deeplab import aspp_rates_for
from lth_jax.tasks.task import Batch, ModelSpec, Task
from lth_jax.training import Evaluator, next_keys
from lth_jax.training.evaluators import summed_over_batches

MIOU = Metric('miou', 'mIoU', 'miou')
# The reference sets the backbone's BatchNorm momentum to 0.01 (PyTorch convention).
BACKBONE_BN_MOMENTUM = 0.99
# How much finer a CIFAR stem's feature maps are than an ImageNet stem's (no stride-2
# conv, no max-pool).
_CIFAR_STEM_FACTOR = 4


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array,
                        ignore_label: int) -> tuple[jax.Array, jax.Array]:
  """Softmax cross-entropy summed over the pixels that count, and their number.

  Args:
    logits: [..., C] per-pixel logits.
    labels: [...] integer labels; `ignore_label` and labels >= C do not count.
    ignore_label: the label of unlabelled pixels (255).

  Returns:
    (summed loss, int32 number of counted pixels); their ratio is PyTorch's
    CrossEntropyLoss(ignore_index=255) with reduction 'mean'.
  """
  counted = (labels != ignore_label) & (labels >= 0) & (labels < logits.shape[-1])
  loss = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(counted, labels, 0))
  return jnp.sum(jnp.where(counted, loss, 0.0)), jnp.sum(counted, dtype=jnp.int32)


@dataclasses.dataclass(frozen=True)
class PixelCrossEntropy:
  """The training loss: pixel cross-entropy with the ignore label, a dropout key a step.

  A `lth_jax.training.StatefulObjective` whose state is the dropout PRNG key chain (the
  head's Dropout(0.1)), so a resumed run draws the same dropout masks.

  Attributes:
    ignore_label: the label no loss counts.
  """
  ignore_label: int = 255

  def init_extra(self, model: nn.Module, params: Any, batch_stats: Any, rng: jax.Array,
                 carry: Any | None = None) -> dict[str, jax.Array]:
    """{'rng': raw key data} of this run's dropout keys (nothing carried over)."""
    del model, params, batch_stats, carry
    return {'rng': jax.random.key_data(rng)}

  def __call__(self, model: nn.Module, params: Any, batch_stats: Any, batch: Batch,
               extra: dict[str, jax.Array]) -> tuple[jax.Array, tuple[Any, Any, dict]]:
    """Mean pixel cross-entropy of {'image', 'label'}; see `StatefulObjective`."""
    key, following = next_keys(extra)
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                                  batch['image'], train=True, mutable=['batch_stats'],
                                  rngs={'dropout': key})
    total, counted = pixel_cross_entropy(logits, batch['label'], self.ignore_label)
    counted = jnp.maximum(counted, 1)
    loss = total / counted
    correct = jnp.sum((jnp.argmax(logits, -1) == batch['label'])
                      & (batch['label'] != self.ignore_label))
    return loss, (updates['batch_stats'], {'rng': following},
                  {'loss': loss, 'pixel_accuracy': correct / counted})

  def update_extra(self, extra: Any, params: Any, masks: Any | None) -> Any:
    """Nothing changes after the optimizer step."""
    del params, masks
    return extra


def _sums(model: nn.Module, num_classes: int, ignore_label: int, variables: Any,
          batch: Batch) -> dict[str, jax.Array]:
  logits = model.apply(variables, batch['image'], train=False)
  weight = batch['mask']
  labels = jnp.where(weight[:, None, None] > 0, batch['label'], ignore_label)
  total, pixels = pixel_cross_entropy(logits, labels, ignore_label)
  confusion = metrics.confusion_matrix_jax(labels, jnp.argmax(logits, -1), num_classes,
                                           ignore_label)
  return {'confusion': confusion, 'loss': total, 'pixels': pixels, 'count': jnp.sum(weight)}


@functools.lru_cache(maxsize=None)
def _sums_step(model: nn.Module, num_classes: int, ignore_label: int) -> Any:
  # One function object per (model, classes), so that its jitted step is cached.
  return functools.partial(_sums, model, num_classes, ignore_label)


def evaluate(model: nn.Module, variables: Any, batches: Any, *, num_classes: int,
             ignore_label: int, mesh: Mesh) -> dict[str, float]:
  """mIoU, pixel accuracy and mean pixel loss over every pixel of padded batches.

  One confusion matrix is summed exactly (int64) over all batches; images with 'mask' 0
  (padding) and pixels labelled `ignore_label` or >= num_classes do not count.

  Args:
    model: the segmentation model.
    variables: {'params', 'batch_stats'}.
    batches: host-local numpy batches {'image', 'label' [B, H, W], 'mask' [B]}.
    num_classes: C.
    ignore_label: the label of unlabelled pixels.
    mesh: the device mesh.

  Returns:
    {'miou', 'pixel_accuracy', 'loss'}.
  """
  sums = summed_over_batches(_sums_step(model, num_classes, ignore_label), variables,
                             batches, mesh)
  miou, _ = metrics.mean_iou(sums['confusion'])
  return {'miou': miou, 'pixel_accuracy': metrics.pixel_accuracy(sums['confusion']),
          'loss': sums['loss'] / max(int(sums['pixels']), 1)}


class Segmentation(Task):
  """Semantic segmentation with DeepLabV3+ (see the module docstring)."""
  name = 'segmentation'
  metric = MIOU
  labels = data.PIXEL_LABELS
  options = ('output_stride', 'aspp_rates', 'head_channels', 'low_level_channels',
             'bn_momentum')

  def build_model(self, spec: ModelSpec, dataset: DatasetInfo) -> nn.Module:
    output_stride = spec.option('output_stride', 16)
    rates = spec.option('aspp_rates', None) or aspp_rates_for(
        output_stride,
        dataset.image_shape[0] * (_CIFAR_STEM_FACTOR if spec.stem == 'cifar' else 1))
    return create_deeplab(
        spec.arch, num_classes=dataset.num_classes, output_stride=output_stride,
        in_channels=dataset.image_shape[-1], stem=spec.stem,
        width_multiplier=spec.width_multiplier,
        head_channels=spec.option('head_channels', 256),
        low_level_channels=spec.option('low_level_channels', 48), aspp_rates=rates,
        bn_momentum=spec.option('bn_momentum', BACKBONE_BN_MOMENTUM), dtype=spec.dtype)

  def objective(self, model: nn.Module, dataset: DatasetInfo) -> PixelCrossEntropy:
    del model
    return PixelCrossEntropy(dataset.ignore_label)

  def evaluator(self, model: nn.Module, dataset: DatasetInfo, *, batch_size: int,
                data_dir: str | None, mesh: Mesh) -> Evaluator:
    return lambda variables, split: evaluate(
        model, variables, data.segmentation.eval_batches(
            dataset, split, batch_size=batch_size, data_dir=data_dir),
        num_classes=dataset.num_classes, ignore_label=dataset.ignore_label, mesh=mesh)

  def train_batches(self, dataset: DatasetInfo, *, batch_size: int, epoch: int, seed: int,
                    data_dir: str | None, start_step: int) -> Iterator[Batch]:
    return data.segmentation.train_batches(dataset, batch_size=batch_size, epoch=epoch,
                                           seed=seed, data_dir=data_dir, start_step=start_step)
