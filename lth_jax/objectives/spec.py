"""A pre-training objective as one spec: its head, views, evaluator and checkpoint source.

The upstream experiments (IMP on the pre-training task) read everything they need of an
objective from its `ObjectiveSpec`, so a new objective (BYOL, DINO, ...) is one module
with its loss and one `lth_jax.objectives.register` call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lth_jax.objectives import views as view_lib


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
  """
  temperature: float = 0.2
  momentum: float = 0.999
  queue_size: int = 65536
  views: view_lib.ViewConfig = view_lib.SIMCLR
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """One pre-training objective.

  Attributes:
    name: the registry key (`config.upstream.objective`).
    head: the pre-training model's head: 'linear' (`fc` over the labels) or 'mlp' (a
      projection head, `fc_0` -> relu -> `fc_2`).
    checkpoint_source: how its released checkpoints are read
      (`lth_jax.interop.checkpoints.load_pytorch(source=...)`).
    evaluator: the per-round metric: 'accuracy' (top-1 of the head on the labels) or
      'knn' (weighted kNN top-1 of the backbone's features).
    views: the `lth_jax.objectives.views` preset of its two views ('' for none: the
      dataset's own augmented pipeline feeds it).
    build: Settings -> the loss (`lth_jax.training.Objective` or `StatefulObjective`).
  """
  name: str
  head: str
  checkpoint_source: str
  evaluator: str
  views: str
  build: Callable[[Settings], Any]

  @property
  def raw_images(self) -> bool:
    """Whether it takes raw [0, 1] images and draws its views on the device."""
    return bool(self.views)
