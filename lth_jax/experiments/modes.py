"""The registry of experiment modes: what `config.mode` may name and what each one is.

A mode is one module of `lth_jax.experiments` that registers a `Mode`: its config section
(and the shared sections it reads), its checks, the datasets it reads and the recipes it
trains them with, the inputs it loads before the workdir is claimed, and its `run`. A new
mode is one module plus its import in `lth_jax.experiments`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from lth_jax.registry import Registry


# (recipe section, dataset): one kind of training run, e.g. ('optim', 'cifar10').
Training = tuple[str, str]


def _no_inputs(config: ml_collections.ConfigDict) -> None:
  del config


def pretraining(config: ml_collections.ConfigDict) -> list[Training]:
  """θ_p's pre-training where the config trains it (`pretrained.source='pretrain'`).

  Args:
    config: the experiment config.

  Returns:
    [('pretrain.optim', config.pretrain.dataset)], or [] for a θ_p that is read or drawn.
  """
  return [('pretrain.optim', config.pretrain.dataset)] if (
      config.pretrained.source == 'pretrain') else []


@dataclasses.dataclass(frozen=True)
class Mode:
  """One experiment mode.

  Attributes:
    name: the registry key (`config.mode`) and the name of its config section.
    run: (config, workdir, mesh) -> the mode's results.
    validate: raises `ConfigError` for a bad value of the mode's fields.
    datasets: config -> every dataset the mode reads (checked to exist first).
    section: the defaults of the mode's own config section, or None.
    reads: further sections of other modes it reads (recorded in experiment.json).
    load_inputs: loads inputs besides datasets and θ_p (e.g. tickets) before the
      workdir is claimed, raising if one is missing or bad.
    trained: glob patterns (in the workdir) of the training runs that used `optim`;
      a recipe change after a divergence is refused while one exists.
    training: config -> every kind of training run the mode runs (checked before the
      workdir is claimed); None: `optim` on each of `datasets`, and θ_p's pre-training.
  """
  name: str
  run: Callable[[ml_collections.ConfigDict, str, Any], dict[str, Any]]
  validate: Callable[[ml_collections.ConfigDict], None]
  datasets: Callable[[ml_collections.ConfigDict], list[str]]
  section: Callable[[], ml_collections.ConfigDict] | None = None
  reads: tuple[str, ...] = ()
  load_inputs: Callable[[ml_collections.ConfigDict], None] = _no_inputs
  trained: tuple[str, ...] = ('*/round_*/seed_*',)
  training: Callable[[ml_collections.ConfigDict], list[Training]] | None = None

  def trainings(self, config: ml_collections.ConfigDict) -> list[Training]:
    """Every (recipe section, dataset) the mode trains with, for `config`."""
    if self.training is not None:
      return self.training(config)
    return [('optim', name) for name in self.datasets(config)] + pretraining(config)

  def sections(self, common: Sequence[str]) -> tuple[str, ...]:
    """The top-level config fields the mode reads: the shared ones and its own."""
    own = (self.name,) if self.section is not None else ()
    return (*common, *own, *self.reads)

  def recipe_work(self) -> Mapping[str, Sequence[str]]:
    """Recipe field prefix -> the training folders (globs) that used it."""
    pretrain = ('**/pretrain/train', '**/pretrain/variables')
    return {'optim.': self.trained, 'pretrain.optim.': pretrain,
            'model.half_precision': ('**/seed_*', *pretrain)}


MODES: Registry[Mode] = Registry('mode')


def register(mode: Mode) -> Mode:
  """Adds a mode under `mode.name` (`config.mode`)."""
  return MODES.register(mode.name, mode)


get = MODES.get
