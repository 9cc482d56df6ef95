"""What a downstream problem is to the lottery engines: a `Task`.

A task turns a backbone (`ModelSpec`) into its model (the backbone plus the task's head,
the backbone's variables at the tree's root), gives the training loss, an evaluator
that returns named metrics with a headline `Metric` (higher is better), and its data
pipelines (the transforms that move labels with pixels, boxes with crops, ...). IMP,
transfer, matching, tables and plots are the same code for every task; they only read
its headline metric (`task.headline(dataset)`).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax.sharding import Mesh

from lth_jax import data
from lth_jax.data import DatasetInfo
from lth_jax.metrics.headline import Metric
from lth_jax.models import is_head
from lth_jax.training import Evaluator, Objective, StatefulObjective

Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The backbone an experiment asks for; the task adds its head.

  Attributes:
    arch: a ResNet of `lth_jax.models.ARCHS`.
    stem: 'imagenet' or 'cifar'.
    width_multiplier: scales every width.
    dtype: computation dtype.
    options: task-specific model settings as (name, value) pairs (e.g. a DeepLab's
      output stride), hashable so that equal specs share compiled steps.
  """
  arch: str
  stem: str = 'imagenet'
  width_multiplier: float = 1.0
  dtype: Any = jnp.float32
  options: tuple[tuple[str, Any], ...] = ()

  def option(self, name: str, default: Any) -> Any:
    """A task-specific setting, or `default`."""
    return dict(self.options).get(name, default)


class Task(abc.ABC):
  """A downstream problem: model head, loss, evaluator with a headline metric, data.

  Attributes:
    name: the registry key.
    metric: the headline metric (picks the best epoch, judges matching, names results).
    labels: the labels it reads, one of `lth_jax.data.LABELS`: 'class' (one integer class
      per example, what `lth_jax.data`'s in-memory and device pipelines serve without
      TensorFlow), 'pixels' or 'boxes'. Pipelines are chosen by it, never by its name.
    is_head: top-level parameter name -> whether it is the head's (for per-group
      learning rates); a module-level function.
    options: the `ModelSpec.options` its model reads (experiments refuse others).
  """
  name: str
  metric: Metric
  labels: str
  options: tuple[str, ...] = ()
  is_head: Callable[[str], bool] = staticmethod(is_head)

  @abc.abstractmethod
  def build_model(self, spec: ModelSpec, dataset: DatasetInfo) -> nn.Module:
    """The task's model on the backbone `spec`, sized for `dataset`."""

  @abc.abstractmethod
  def objective(self, model: nn.Module, dataset: DatasetInfo) -> Objective | StatefulObjective:
    """The training loss on `dataset` (hashable: equal objectives share a compiled step)."""

  @abc.abstractmethod
  def evaluator(self, model: nn.Module, dataset: DatasetInfo, *, batch_size: int,
                data_dir: str | None, mesh: Mesh) -> Evaluator:
    """(variables, split) -> named metrics, `metric.key` among them, on 'val'/'test'."""

  @abc.abstractmethod
  def train_batches(self, dataset: DatasetInfo, *, batch_size: int, epoch: int, seed: int,
                    data_dir: str | None, start_step: int) -> Iterator[Batch]:
    """One epoch of this host's augmented training batches (see `lth_jax.data`)."""

  def steps_per_epoch(self, dataset: DatasetInfo, batch_size: int) -> int:
    """Batches per training epoch at a global batch size (full batches of train)."""
    return data.steps_per_epoch(dataset, batch_size)

  def image_size(self, dataset: DatasetInfo) -> int:
    """The side of the images the model sees (for initialising its variables)."""
    return dataset.image_shape[0]

  def headline(self, dataset: DatasetInfo) -> Metric:
    """The headline metric on a dataset, with its chance level where the task knows it.

    Args:
      dataset: the dataset the task is trained and tested on.

    Returns:
      `metric`; a task that knows what a network that did not learn scores on
      `dataset` sets its `chance` (classification: 1 / classes).
    """
    del dataset
    return self.metric
