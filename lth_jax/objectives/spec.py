"""A pre-training objective as one spec: its head, views, evaluator and checkpoint source.

The upstream experiments (IMP on the pre-training task) read everything they need of an
objective from its `ObjectiveSpec`, so a new objective (BYOL, DINO, ...) is one module
with its loss and one `lth_jax.objectives.register` call. Its head and its per-round
metric are objects too (`Head`, `RoundMetric`): a new kind of either is one more object,
used by every objective that names it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jax.sharding import Mesh

from lth_jax import data
from lth_jax.data import DatasetInfo
from lth_jax.objectives import views as view_lib
from lth_jax.tasks import Task
from lth_jax.training import Evaluator
from lth_jax.training.evaluators import knn_evaluator, linear_probe_evaluator


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the experiment sets of an objective (from `config.upstream`).

  Attributes:
    temperature: softmax temperature of contrastive losses.
    momentum: a momentum encoder's m.
    queue_size: a queue's number of keys.
    views: the augmentation of the two views (drawn on the device).
    mean: per-channel mean subtracted from the views (None: [0, 1] inputs).
    std: per-channel std the views are divided by.
    projection_dim: the output size of a projection head.
    knn_k: neighbours of the kNN metric.
    knn_temperature: the kNN metric's softmax temperature.
    knn_bank_size: train examples in the kNN memory bank (0: all).
  """
  temperature: float = 0.2
  momentum: float = 0.999
  queue_size: int = 65536
  views: view_lib.ViewConfig = view_lib.SIMCLR
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  projection_dim: int = 128
  knn_k: int = 200
  knn_temperature: float = 0.1
  knn_bank_size: int = 0


@dataclasses.dataclass(frozen=True)
class Head:
  """The head a pre-training model trains on its backbone.

  Attributes:
    kind: the ResNet's head (`lth_jax.models.create_model(head=...)`).
    outputs: (settings, the dataset's number of classes) -> its output size.
  """
  kind: str
  outputs: Callable[[Settings, int], int]


# `fc` over the labels (supervised pre-training).
LINEAR = Head('linear', lambda settings, num_classes: num_classes)
# A projection head, `fc_0` -> relu -> `fc_2` (hidden = the feature size).
PROJECTION = Head('mlp', lambda settings, num_classes: settings.projection_dim)


@dataclasses.dataclass(frozen=True)
class EvalData:
  """Where a per-round metric reads its examples.

  Attributes:
    task: the labels' task (classification).
    dataset: the pre-training dataset.
    batch_size: the global evaluation batch size.
    data_dir: where the dataset lives (None: its default).
    normalize: normalise the images with the dataset's mean and std.
    image_size: the side the images are resized to (None: the dataset's own).
  """
  task: Task
  dataset: DatasetInfo
  batch_size: int
  data_dir: str | None = None
  normalize: bool = True
  image_size: int | None = None


@dataclasses.dataclass(frozen=True)
class RoundMetric:
  """An objective's per-round metric: how good a network is at its pre-training task.

  Attributes:
    label: its name in progress lines and titles ('top-1').
    build: (model, EvalData, Settings, mesh) -> evaluator(variables, split) ->
      {'accuracy', 'loss'}.
  """
  label: str
  build: Callable[[Any, EvalData, Settings, Mesh], Evaluator]


def _head_accuracy(model: Any, source: EvalData, settings: Settings, mesh: Mesh) -> Evaluator:
  del settings
  return source.task.evaluator(model, source.dataset, batch_size=source.batch_size,
                               data_dir=source.data_dir, mesh=mesh)


def _read(source: EvalData) -> Callable[[str], Any]:
  return lambda split: data.eval_batches(
      source.dataset, split, batch_size=source.batch_size, data_dir=source.data_dir,
      normalize=source.normalize, image_size=source.image_size)


def _knn_accuracy(model: Any, source: EvalData, settings: Settings, mesh: Mesh) -> Evaluator:
  return knn_evaluator(model, _read(source), num_classes=source.dataset.num_classes, mesh=mesh,
                       k=settings.knn_k, temperature=settings.knn_temperature,
                       bank_size=settings.knn_bank_size)


def _probe_accuracy(model: Any, source: EvalData, settings: Settings, mesh: Mesh) -> Evaluator:
  del settings
  return linear_probe_evaluator(model, _read(source), num_classes=source.dataset.num_classes,
                                mesh=mesh)


# Top-1 of the model's own classifier head on the labels.
HEAD_TOP1 = RoundMetric('top-1', _head_accuracy)
# Weighted kNN top-1 of the backbone's pooled features (MoCo's kNN monitor), the train
# split as memory bank.
KNN_TOP1 = RoundMetric('kNN top-1', _knn_accuracy)
# Top-1 of a softmax classifier fitted to the frozen pooled features of the train split
# (the linear evaluation of SimCLR and MoCo), its L2 penalty chosen on val.
LINEAR_PROBE = RoundMetric('linear-probe top-1', _probe_accuracy)


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """One pre-training objective.

  Attributes:
    name: the registry key (`config.upstream.objective`).
    head: the pre-training model's head (`LINEAR`, `PROJECTION`, ...).
    checkpoint_source: how its released checkpoints are read (a source of
      `lth_jax.interop.checkpoints.load_pytorch`).
    evaluator: the per-round metric (`HEAD_TOP1`, `KNN_TOP1`, ...).
    views: the `lth_jax.objectives.views` preset of its two views ('' for none: the
      dataset's own augmented pipeline feeds it).
    build: Settings -> the loss (`lth_jax.training.Objective` or `StatefulObjective`).
    queue: the loss keeps a queue of `Settings.queue_size` keys, which must hold at
      least one global batch.
  """
  name: str
  head: Head
  checkpoint_source: str
  evaluator: RoundMetric
  views: str
  build: Callable[[Settings], Any]
  queue: bool = False

  @property
  def raw_images(self) -> bool:
    """Whether it takes raw [0, 1] images and draws its views on the device."""
    return bool(self.views)
