"""The registry of experiment modes: what `config.mode` may name and what each one is.

A mode is one module of `lth_jax.experiments` that registers a `Mode`: its config section
(and the shared sections it reads) and the spec it becomes, its checks, the datasets it
reads and the recipes it trains them with, the model θ_p is loaded into and the inputs
it loads before the workdir is claimed, what a rerun may change (`resume_rules`), and
its `run`, which takes the experiment's specs (`lth_jax.experiments.specs`). The checks
and the lists of what a mode reads take the config; everything after them, the specs.
A new mode is one module plus its import in `lth_jax.experiments`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
from jax.sharding import Mesh

from lth_jax.experiments import sources, specs, wiring
from lth_jax.registry import Registry
from lth_jax.runtime import paths
from lth_jax.runtime import workdir as workdir_lib


# (recipe section, dataset): one kind of training run, e.g. ('optim', 'cifar10').
Training = tuple[str, str]

# Fields whose value never changes a result. The device fields are among them because
# what does change results, the number of devices runs train on, is compared on its own
# (`workdir.claim(devices=...)`): `num_devices=0` and `num_devices=8` on 8 devices are
# the same.
NEUTRAL_FIELDS = ('data.data_dir', 'data.eval_batch_size', 'num_devices', 'devices_per_run',
                  'checkpoint_every_steps')


def _dense_seeds(record: Mapping[str, Any]) -> int:
  return record.get('dense_seeds') or record.get('num_seeds') or 0


# Fields whose change adds runs and keeps the recorded ones: more rounds extend a run
# (fewer report fewer); more seeds add runs, and the dense round's seeds may only grow.
GROWING_FIELDS: Mapping[str, workdir_lib.Growth] = {
    'imp.num_rounds': lambda old, new: True,
    'num_seeds': lambda old, new: (new['num_seeds'] >= (old.get('num_seeds') or 0)
                                   and _dense_seeds(new) >= _dense_seeds(old)),
    'dense_seeds': lambda old, new: _dense_seeds(new) >= _dense_seeds(old),
}


def _no_inputs(experiment: specs.Experiment) -> None:
  del experiment


def flag(setting: str) -> str:
  """A setting as the command line sets it: 'imp.fraction=0.3' -> '--config.imp.fraction=0.3'."""
  return f'--config.{setting}'


def _device_flags(devices: Mapping[str, int]) -> str:
  """The flags that train on the recorded device counts again."""
  return flag(f'num_devices={devices["mesh"]}') + (
      ' ' + flag(f'devices_per_run={devices["per_run"]}')
      if devices['per_run'] != devices['mesh'] else '')


@dataclasses.dataclass(frozen=True)
class Mode:
  """One experiment mode.

  Attributes:
    name: the registry key (`config.mode`) and the name of its config section.
    run: (experiment, workdir, mesh) -> the mode's results.
    validate: raises `ConfigError` for a bad value of the mode's fields.
    datasets: config -> every dataset the mode reads (checked to exist first).
    section: the defaults of the mode's own config section, or None.
    spec: config -> the spec of the mode's section (`specs.Experiment.section`), built
      once by `specs.build` after the checks; None: the mode has no section.
    reads: further sections of other modes it reads (recorded in experiment.json).
    load_inputs: experiment -> fingerprints ({name: SHA-256}) or None: loads inputs
      besides datasets and θ_p (e.g. tickets) before the workdir is claimed, raising
      if one is missing or bad.
    own_theta_p: its runs start from the experiment's θ_p (`pretrained`), which is
      checked and loaded before the claim; False: from its sub-experiments' (paper
      mode: each pre-training's), which the mode checks and loads itself.
    trained: glob patterns (in the workdir) of the training runs that used `optim`;
      a recipe change after a divergence is refused while one exists.
    training: config -> every kind of training run the mode runs (checked before the
      workdir is claimed); None: `optim` on each of `datasets`, and θ_p's pre-training.
    model: experiment -> the model θ_p is for (a checkpoint is loaded into it before
      the workdir is claimed); None: the task model of the last of `datasets`.
    growing: fields a rerun may change because the change adds runs and keeps the
      recorded ones (see `lth_jax.runtime.workdir.ResumeRules`).
    unstarted: field prefix -> the runs that depend on a field under it
      (`lth_jax.runtime.workdir.Footprint`); it may change while none exists (paper
      mode's tasks and their recipes).
    perturbable: its workdir holds IMP rounds on one task whose tickets and recipe the
      perturbation runs of `python -m lth_jax.analyze --sensitivity` train again.
  """
  name: str
  run: Callable[[specs.Experiment, str, Mesh], dict[str, Any]]
  validate: Callable[[ml_collections.ConfigDict], None]
  datasets: Callable[[ml_collections.ConfigDict], list[str]]
  section: Callable[[], ml_collections.ConfigDict] | None = None
  spec: Callable[[ml_collections.ConfigDict], Any] | None = None
  reads: tuple[str, ...] = ()
  load_inputs: Callable[[specs.Experiment], Mapping[str, str] | None] = _no_inputs
  trained: tuple[str, ...] = (paths.imp_runs_glob(),)
  training: Callable[[ml_collections.ConfigDict], list[Training]] | None = None
  model: Callable[[specs.Experiment], Any] | None = None
  growing: Mapping[str, workdir_lib.Growth] = dataclasses.field(
      default_factory=lambda: dict(GROWING_FIELDS))
  unstarted: Mapping[str, workdir_lib.Footprint] = dataclasses.field(default_factory=dict)
  perturbable: bool = False
  own_theta_p: bool = True

  def trainings(self, config: ml_collections.ConfigDict) -> list[Training]:
    """Every (recipe section, dataset) the mode trains with, for `config`."""
    if self.training is not None:
      return self.training(config)
    return ([('optim', name) for name in self.datasets(config)]
            + sources.get(config.pretrained.source).trainings(config))

  def start_model(self, experiment: specs.Experiment) -> Any:
    """The model θ_p is for, e.g. to load a checkpoint into it before the claim."""
    if self.model is not None:
      return self.model(experiment)
    task, info = wiring.task_and_data(experiment.data, experiment.datasets[-1])
    return task.build_model(experiment.model, info)

  def sections(self, common: Sequence[str]) -> tuple[str, ...]:
    """The top-level config fields the mode reads: the shared ones and its own."""
    own = (self.name,) if self.section is not None else ()
    return (*common, *own, *self.reads)

  def recipe_work(self) -> Mapping[str, Sequence[str]]:
    """Recipe field prefix -> the training folders (globs) that used it."""
    pretrain = paths.pretrain_globs()
    return {'optim.': self.trained, 'pretrain.optim.': pretrain,
            'model.half_precision': (paths.any_runs_glob(), *pretrain)}

  def resume_rules(self) -> workdir_lib.ResumeRules:
    """What a rerun of the mode's experiments may change (`workdir.claim`'s rules)."""
    return workdir_lib.ResumeRules(
        neutral=NEUTRAL_FIELDS, growing=self.growing, unstarted=self.unstarted,
        recipe_work=self.recipe_work(),
        devices_fix=_device_flags, rerun_fix=lambda path: f'--config={path}')


MODES: Registry[Mode] = Registry('mode')


def register(mode: Mode) -> Mode:
  """Adds a mode under `mode.name` (`config.mode`)."""
  return MODES.register(mode.name, mode)


get = MODES.get
