"""Image classification: a linear head, softmax cross-entropy, top-1 accuracy.

The reference's downstream task (CIFAR-10/100, SVHN, Fashion-MNIST; the offline digits
and animals): the ResNet's `fc` sized for the dataset's classes, its images augmented
by `lth_jax.data` (pad-and-crop, flips), accuracy counted exactly over padded batches.
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

from lth_jax import data
from lth_jax.metrics.headline import Metric
from lth_jax.models import create_model
from lth_jax.runtime import sharding
from lth_jax.tasks.task import Batch, ModelSpec, Task
from lth_jax.training import Evaluator
from lth_jax.training.evaluators import summed_over_batches

ACCURACY = Metric('accuracy', 'accuracy', 'accuracy')


def cross_entropy(model: nn.Module, params: Any, batch_stats: Any,
                  batch: Batch) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
  """Softmax cross-entropy on {'image', 'label'} (a `lth_jax.training.Objective`)."""
  logits, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                                batch['image'], train=True, mutable=['batch_stats'])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
  accuracy = (jnp.argmax(logits, -1) == batch['label']).mean()
  return loss, (updates['batch_stats'], {'loss': loss, 'accuracy': accuracy})


def _sums(model: nn.Module, variables: Any, batch: Batch) -> dict[str, jax.Array]:
  logits = model.apply(variables, batch['image'], train=False)
  weight = batch['mask'].astype(jnp.float32) if 'mask' in batch else jnp.ones(
      batch['label'].shape, jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  return {'correct': jnp.sum(weight * correct), 'loss': jnp.sum(weight * loss),
          'count': jnp.sum(weight)}


def evaluate(model: nn.Module, variables: Any, batches: Any,
             mesh: Mesh | None = None) -> dict[str, float]:
  """Exact top-1 accuracy and mean loss over batches whose padding has 'mask' 0.

  Args:
    model: the classifier.
    variables: {'params', 'batch_stats'}.
    batches: host-local numpy batches {'image', 'label'} and, padded, 'mask'.
    mesh: the device mesh; all devices by default.

  Returns:
    {'accuracy', 'loss'} over the real examples.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  sums = summed_over_batches(_sums_step(model), variables, batches, mesh)
  return {'accuracy': sums['correct'] / sums['count'], 'loss': sums['loss'] / sums['count']}


@functools.lru_cache(maxsize=None)
def _sums_step(model: nn.Module) -> Any:
  # One function object per model, so that its jitted step is cached.
  return functools.partial(_sums, model)


class Classification(Task):
  """Image classification (see the module docstring)."""
  name = 'classification'
  metric = ACCURACY
  labels = data.CLASS_LABELS

  def build_model(self, spec: ModelSpec, dataset: data.DatasetInfo) -> nn.Module:
    return create_model(spec.arch, num_classes=dataset.num_classes, stem=spec.stem,
                        in_channels=dataset.image_shape[-1],
                        width_multiplier=spec.width_multiplier, dtype=spec.dtype)

  def objective(self, model: nn.Module, dataset: data.DatasetInfo) -> Any:
    del model, dataset
    return cross_entropy

  def headline(self, dataset: data.DatasetInfo) -> Metric:
    # Uniform guessing scores 1 / classes: dense runs near it did not train.
    return dataclasses.replace(self.metric, chance=1 / dataset.num_classes)

  def evaluator(self, model: nn.Module, dataset: data.DatasetInfo, *, batch_size: int,
                data_dir: str | None, mesh: Mesh) -> Evaluator:
    return lambda variables, split: evaluate(
        model, variables, data.eval_batches(dataset, split, batch_size=batch_size,
                                            data_dir=data_dir), mesh)

  def train_batches(self, dataset: data.DatasetInfo, *, batch_size: int, epoch: int,
                    seed: int, data_dir: str | None, start_step: int) -> Iterator[Batch]:
    return data.train_batches(dataset, batch_size=batch_size, epoch=epoch, seed=seed,
                              data_dir=data_dir, start_step=start_step)
