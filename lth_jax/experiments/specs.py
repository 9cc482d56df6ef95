"""The experiment as typed specs: the config read once, into what modes and the wiring take.

    config_lib.validate(config)        # every check, each naming the config field
    experiment = specs.build(config)   # then nothing below reads the config
    experiment.data.batch_size, experiment.imp.spec, experiment.section  # the mode's own

`build` reads every field a run uses, after `config_lib.validate` has checked them: it
checks nothing itself, so each check is made once, where it names the field to change.
Modes, `lth_jax.experiments.wiring` and the library below take these specs. A mode's
own section becomes the spec its module builds (`modes.Mode.spec`). What a workdir
records is still the config (`lth_jax.experiments.claim`), so workdirs resume as before.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import ml_collections

from lth_jax import tasks
from lth_jax.experiments import config as config_lib
from lth_jax.lottery import ImpSpec
from lth_jax.training import compute_dtype
from lth_jax.training.optim import Recipe

T = TypeVar('T')


@dataclasses.dataclass(frozen=True)
class Data:
  """How datasets are read (`config.data`).

  Attributes:
    dataset: the dataset modes 'imp' and 'upstream' train on.
    data_dir: tfds' data_dir (None: its default).
    batch_size: the global training batch, over all devices and hosts.
    eval_batch_size: the global evaluation batch.
    val_from_train: train images held out as 'val' where a dataset has no val split.
    pipeline: 'device' (training sets that fit kept on the devices) or 'host'
      (tf.data); 'auto' where nothing resolved it (`wiring.resolve_pipeline`), which
      reads as 'host'.
    seg_eval: the segmentation evaluation protocol (None: the dataset's own).
    seg_train_pad: how segmentation crops are padded (None: the dataset's own).
  """
  dataset: str
  data_dir: str | None
  batch_size: int
  eval_batch_size: int
  val_from_train: int
  pipeline: str
  seg_eval: str | None
  seg_train_pad: str | None


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """Where θ_p comes from (`config.pretrained`, and `config.pretrain`).

  Attributes:
    source: a source of `lth_jax.experiments.sources`.
    path: the checkpoint file ('' for a source that reads none; a shipped θ_p's file for
      source 'released').
    dataset: the dataset source 'pretrain' trains θ_p on.
    recipe: the recipe it trains θ_p with.
    datasets: the datasets the source reads.
  """
  source: str
  path: str
  dataset: str
  recipe: Recipe
  datasets: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Imp:
  """The ticket search (`config.imp` and the seeds).

  Attributes:
    spec: the IMP run, its criterion under its current name (`config_lib.criterion`).
    pruning: the criterion as `config.imp.pruning` gives it: the IMP branch's folder and
      label (an old name keeps the folder a workdir was started with).
    score_batches: the training batches a gradient-based criterion (SNIP) scores by.
    random_baseline: also run the random-pruning branch (mode 'imp').
  """
  spec: ImpSpec
  pruning: str
  score_batches: int
  random_baseline: bool

  @property
  def policy(self) -> str | None:
    """Which leaves are prunable (None: every conv kernel but the stem)."""
    return self.spec.policy


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a run of an experiment reads.

  Attributes:
    mode: the mode that runs it (`lth_jax.experiments.modes`).
    seed: the experiment's seed (a random θ_0, heads θ_p lacks, baselines' masks).
    seeds: the fine-tuning seeds of every ticket: seed, seed + 1, ... (`num_seeds`);
      the dense networks may have more (`dense_seeds`, `imp.spec.dense_seeds`).
    data: how datasets are read.
    model: the backbone (`config.model`; its other fields are tasks' settings).
    recipe: the fine-tuning recipe (`config.optim`).
    pretrained: θ_p's source.
    imp: the ticket search (read by every mode that prunes).
    datasets: the datasets the mode reads, in order (`modes.Mode.datasets`).
    num_devices: the devices of the mesh (0: all).
    devices_per_run: the devices of each of the runs side by side (0: one run at a time).
    checkpoint_every_steps: extra mid-epoch checkpoints (0: each epoch only).
    section: the spec of the mode's own config section (`modes.Mode.spec`), or None.
  """
  mode: str
  seed: int
  seeds: tuple[int, ...]
  data: Data
  model: tasks.ModelSpec
  recipe: Recipe
  pretrained: Pretrained
  imp: Imp
  datasets: tuple[str, ...]
  num_devices: int
  devices_per_run: int
  checkpoint_every_steps: int
  section: Any = None

  @property
  def dense_seeds(self) -> tuple[int, ...]:
    """The seeds of the dense networks' runs: `dense_seeds` of them, or `seeds`."""
    return self.imp.spec.dense_seeds or self.seeds


def from_section(cls: type[T], section: ml_collections.ConfigDict, **computed: Any) -> T:
  """A spec dataclass whose fields are a config section's fields of the same names.

  Args:
    cls: the spec's class.
    section: the config section, e.g. `config.data`.
    **computed: the fields that are not copied as they are (parsed or built).

  Returns:
    The spec.
  """
  copied = {f.name: section[f.name] for f in dataclasses.fields(cls) if f.name not in computed}
  return cls(**copied, **computed)


def data_spec(config: ml_collections.ConfigDict) -> Data:
  """The `Data` of `config.data` (also what the checks build their tasks from)."""
  return from_section(Data, config.data)


def model_spec(config: ml_collections.ConfigDict) -> tasks.ModelSpec:
  """The backbone of `config.model`; its other fields are the tasks' options.

  Args:
    config: the experiment config.

  Returns:
    The model spec (tasks add their heads).
  """
  m = config.model
  options = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in m.items()
                         if k not in config_lib.MODEL_FIELDS))
  return tasks.ModelSpec(arch=m.arch, stem=m.stem, width_multiplier=m.width_multiplier,
                         dtype=compute_dtype(m.half_precision), options=options)


def imp_spec(config: ml_collections.ConfigDict) -> Imp:
  """The ticket search of `config.imp` and the seeds.

  Args:
    config: the experiment config.

  Returns:
    Its IMP spec.

  Raises:
    ValueError: `ImpSpec`'s own checks (`config_lib.check_imp` names the field).
  """
  c, seed = config.imp, config.seed
  run = ImpSpec(num_rounds=c.num_rounds, fraction=c.fraction,
                pruning=config_lib.criterion(config), rewind=c.rewind,
                rewind_step=c.rewind_step, prune_first=c.prune_first,
                seeds=tuple(range(seed, seed + config.num_seeds)), policy=c.policy,
                pruning_seed=seed, rewind_scope=c.rewind_scope,
                dense_seeds=tuple(range(seed, seed + config.dense_seeds)) or None)
  return Imp(spec=run, pruning=c.pruning, score_batches=c.score_batches,
             random_baseline=c.random_baseline)


def build(config: ml_collections.ConfigDict) -> Experiment:
  """The specs of a config that `config_lib.validate` has checked.

  Args:
    config: the experiment config (its `data.pipeline` resolved where it runs, see
      `wiring.resolve_pipeline`).

  Returns:
    The experiment, its mode's section built by the mode.
  """
  # Imported here: both registries build on this module.
  from lth_jax.experiments import modes, sources

  mode, source = modes.get(config.mode), sources.get(config.pretrained.source)
  pretrained = Pretrained(
      source=config.pretrained.source, path=source.path(config),
      dataset=config.pretrain.dataset, recipe=config_lib.recipe(config.pretrain.optim),
      datasets=tuple(source.datasets(config)))
  return Experiment(
      mode=config.mode, seed=config.seed,
      seeds=tuple(range(config.seed, config.seed + config.num_seeds)),
      data=data_spec(config), model=model_spec(config),
      recipe=config_lib.recipe(config.optim), pretrained=pretrained, imp=imp_spec(config),
      datasets=tuple(mode.datasets(config)), num_devices=config.num_devices,
      devices_per_run=config.devices_per_run,
      checkpoint_every_steps=config.checkpoint_every_steps,
      section=mode.spec(config) if mode.spec is not None else None)
