"""The one place a config becomes a task, a model, θ_p, data and a fine-tuning callable.

    task, info = wiring.task_and_data(config, 'mnist5k')
    model = wiring.build_model(config, task, info)
    theta_p = wiring.theta_p(config, model, task, info, workdir, mesh)   # seed -> variables
    finetune = wiring.make_finetune(config, model, task, info, mesh)

Every mode builds what it runs through these functions; the library below them
(`lth_jax.lottery`, `lth_jax.training`, `lth_jax.tasks`) never reads a config.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from lth_jax import data, errors, tasks
from lth_jax.data import on_device
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import sources
from lth_jax.lottery import Finetune
from lth_jax.models import init_variables
from lth_jax.runtime import console, paths, sharding, tree_io
from lth_jax.runtime.scheduler import Scheduler
from lth_jax.training import Evaluator, Objective, StatefulObjective, compute_dtype, fit, reporting
from lth_jax.training import gradients
from lth_jax.training.optim import Recipe

TrainBatches = Callable[[int, int, int], Iterator[Any]]  # (epoch, seed, start_step)


def mesh_for(config: ml_collections.ConfigDict, *, fit_batch_sizes: bool = False) -> Mesh:
  """The device mesh of an experiment.

  Args:
    config: the config (`num_devices`, the batch sizes).
    fit_batch_sizes: with `num_devices` 0, take as many devices as divide both batch
      sizes (a later job on another machine, e.g. the analysis of a workdir) instead
      of refusing batch sizes that do not divide over all devices.

  Returns:
    A one-axis ('data') mesh.

  Raises:
    ConfigError: more devices asked for than exist, or a batch size that does not
      divide over the devices.
  """
  devices = jax.devices()
  count = config.num_devices or (math.gcd(len(devices), config.data.batch_size,
                                          config.data.eval_batch_size)
                                 if fit_batch_sizes else len(devices))
  if count > len(devices):
    raise errors.ConfigError(f'config.num_devices={config.num_devices}, but only '
                             f'{len(devices)} devices exist.')
  mesh = sharding.make_mesh(devices[:count])
  for field in ('batch_size', 'eval_batch_size'):
    if config.data[field] % mesh.size:
      raise errors.ConfigError(
          f'config.data.{field}={config.data[field]} must be a multiple of the {mesh.size} '
          'devices; change it or set config.num_devices.')
  return mesh


def resolve_pipeline(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Makes `config.data.pipeline`'s 'auto' the choice it stands for, so it is recorded.

  'auto' is 'device' on accelerators (training sets that fit are kept on the devices,
  `lth_jax.data.on_device`) and 'host' on CPU (the tf.data pipeline, whose batches the
  numbers of the README were measured with), or 'device' there too where TensorFlow is
  not installed. Recording the choice makes a workdir refuse to resume with the other
  pipeline, whose random stream differs.

  Args:
    config: the config; `data.pipeline` is set in place.
    mesh: the experiment's mesh (its platform decides 'auto').

  Raises:
    ConfigError: an unknown value, or 'host' where TensorFlow is not installed.
  """
  choice = config.data.pipeline
  if choice not in ('auto', 'device', 'host'):
    config_lib.fail('data.pipeline', choice, "one of 'auto', 'device', 'host'")
  has_tf = data.arrays.tf_available()
  if choice == 'host' and not has_tf:
    raise errors.ConfigError(
        "config.data.pipeline='host' reads through tf.data, and tensorflow or "
        'tensorflow-datasets is not installed: pip install tensorflow tensorflow-datasets, '
        'or set --config.data.pipeline=device.')
  if choice == 'auto':
    on_cpu = mesh.devices.flat[0].platform == 'cpu'
    config.data.pipeline = 'host' if on_cpu and has_tf else 'device'


def scheduler(config: ml_collections.ConfigDict, mesh: Mesh,
              total_runs: int | None = None) -> Scheduler | None:
  """The scheduler of independent runs (`config.devices_per_run`), or None for one at a time.

  Args:
    config: the config.
    mesh: the experiment's mesh, split into groups of `devices_per_run` devices.
    total_runs: the experiment's runs, for its ETA.

  Raises:
    ConfigError: `devices_per_run` does not divide the devices or the batch sizes.
  """
  per_run = config.devices_per_run
  if not per_run or per_run == mesh.size:
    return None
  for field in ('batch_size', 'eval_batch_size'):
    if config.data[field] % per_run:
      config_lib.fail('devices_per_run', per_run,
                      f'must divide config.data.{field}={config.data[field]}.')
  try:
    return Scheduler(list(mesh.devices.flat), per_run, total_runs=total_runs)
  except ValueError as e:
    raise errors.ConfigError(f'config.devices_per_run={per_run}: {e}') from None


def dataset_info(config: ml_collections.ConfigDict, name: str) -> data.DatasetInfo:
  """A dataset with its validation split and segmentation protocol as the config asks.

  Args:
    config: the experiment config (`data.val_from_train`, and `data.seg_eval` and
      `data.seg_train_pad` where set, for segmentation datasets).
    name: a dataset name.

  Returns:
    Its DatasetInfo.
  """
  info = data.get_info(name, val_from_train=config.data.val_from_train)
  if info.task != 'segmentation':
    return info
  protocol = {field: config.data[field] for field in ('seg_eval', 'seg_train_pad')
              if config.data[field] is not None}
  return dataclasses.replace(info, **protocol)


def task_and_data(config: ml_collections.ConfigDict,
                  dataset: str) -> tuple[tasks.Task, data.DatasetInfo]:
  """The registered task a dataset's labels are for, and the dataset.

  Args:
    config: the experiment config.
    dataset: a dataset name.

  Returns:
    (task, DatasetInfo).
  """
  info = dataset_info(config, dataset)
  return tasks.get(info.task), info


def model_spec(config: ml_collections.ConfigDict) -> tasks.ModelSpec:
  """The backbone of `config.model` (tasks add their heads)."""
  m = config.model
  options = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in m.items()
                         if k not in config_lib.MODEL_FIELDS))
  return tasks.ModelSpec(arch=m.arch, stem=m.stem, width_multiplier=m.width_multiplier,
                         dtype=compute_dtype(m.half_precision), options=options)


def build_model(config: ml_collections.ConfigDict, task: tasks.Task,
                dataset: data.DatasetInfo) -> Any:
  """The task's model on the configured backbone, sized for the dataset."""
  return task.build_model(model_spec(config), dataset)


def pretrain_once(workdir: str, like: Mapping[str, Any], finetune: Finetune, *, seed: int,
                  description: str) -> dict[str, Any]:
  """θ_p trained densely by `finetune` inside the workdir, or its cached copy.

  The training itself checkpoints every epoch, so a killed pre-training resumes.

  Args:
    workdir: the experiment's workdir (θ_p lives in pretrain/variables).
    like: variables of the right structure (the random init training starts from).
    finetune: the dense pre-training run.
    seed: its seed.
    description: what is trained on what, for the progress line.

  Returns:
    {'params', 'batch_stats'} as numpy trees.
  """
  path = paths.pretrain_variables(workdir)
  like = jax.device_get(dict(like))
  if not os.path.exists(path):
    console.say(f'Pre-training θ_p: {description} (cached in {path}).')
    try:
      result = finetune(like, None, seed=seed,
                        checkpoint_dir=paths.pretrain_checkpoints(workdir))
    except errors.DivergenceError as e:
      raise e.within(f'pre-training θ_p ({description})') from None
    console.say(f'Pre-training done: test {result.metric} {result.test:.4f}.')
    tree_io.save(path, result.variables)
  return tree_io.load(path, like)


def _pretrained_backbone(config: ml_collections.ConfigDict, workdir: str,
                         mesh: Mesh) -> dict[str, Any]:
  """Supervised pre-training on `config.pretrain.dataset`, cached in the workdir."""
  task, info = task_and_data(config, config.pretrain.dataset)
  model = build_model(config, task, info)
  like = init_variables(model, jax.random.key(config.seed), task.image_size(info))
  return pretrain_once(
      workdir, like, make_finetune(config, model, task, info, mesh,
                                   recipe=config_lib.recipe(config.pretrain.optim)),
      seed=config.seed, description=f'{config.model.arch} on {info.name} for '
      f'{config.pretrain.optim.num_epochs} epochs')


def theta_p(config: ml_collections.ConfigDict, model: Any, image_size: int, workdir: str,
            mesh: Mesh, *, pretrained: Callable[[], Mapping[str, Any]] | None = None,
            keep_head: bool = False) -> Callable[[int], dict[str, Any]]:
  """θ_p on a model as a function of the fine-tuning seed (each seed's made once).

  The pre-trained parts are the same for every seed; the parts the source does not
  provide (the task's head; the stem conv of a CIFAR-stem model loading an ImageNet
  checkpoint) are drawn from the seed, so that runs with different seeds are
  independent runs from θ_p. A random init (source 'random', the classic LTH θ_0) is
  itself the rewind point and does not depend on the seed.

  Args:
    config: the experiment config (`pretrained`, `pretrain`, `seed`).
    model: the model θ_p is for.
    image_size: the side of its inputs (for a random init).
    workdir: the experiment's workdir (the 'pretrain' source's cache).
    mesh: the device mesh.
    pretrained: for source 'pretrain', () -> the pre-trained variables (default:
      supervised pre-training on `config.pretrain.dataset`); they are transplanted
      onto `model` with a fresh head per seed (see `lth_jax.experiments.sources`).
    keep_head: `pretrained` gives variables of `model` itself, head included (upstream
      IMP continues the pre-training objective), used as they are for every seed.

  Returns:
    seed -> {'params', 'batch_stats'} as numpy trees.
  """
  origin = sources.Origin(
      model, image_size, config.seed, config.pretrained.path, keep_head=keep_head,
      pretrained=pretrained or (lambda: _pretrained_backbone(config, workdir, mesh)))
  return sources.get(config.pretrained.source).start(origin)


def _host_batches(config: ml_collections.ConfigDict, task: tasks.Task,
                  dataset: data.DatasetInfo, raw_images: bool,
                  raw_size: int | None) -> TrainBatches:
  """The host pipeline's training batches: the task's, or raw [0, 1] images for views."""
  batch_size, data_dir = config.data.batch_size, config.data.data_dir
  if raw_images:
    return lambda epoch, seed, start: data.train_batches(
        dataset, batch_size=batch_size, epoch=epoch, seed=seed, data_dir=data_dir,
        start_step=start, augment=False, normalize=False, image_size=raw_size)
  return lambda epoch, seed, start: task.train_batches(
      dataset, batch_size=batch_size, epoch=epoch, seed=seed, data_dir=data_dir,
      start_step=start)


def make_finetune(config: ml_collections.ConfigDict, model: Any, task: tasks.Task,
                  dataset: data.DatasetInfo, mesh: Mesh, *, recipe: Recipe | None = None,
                  objective: Objective | StatefulObjective | None = None,
                  evaluator: Evaluator | None = None, metric: str | None = None,
                  raw_images: bool = False, raw_size: int | None = None,
                  carry_state: bool = False) -> Finetune:
  """`lth_jax.training.fit` bound to a task's data, loss and evaluator (a `Finetune`).

  Args:
    config: the experiment config (`data`, `checkpoint_every_steps`, `optim`).
    model: the task's model.
    task: the task (its loss, evaluator, data pipeline and headline metric).
    dataset: the dataset to train and evaluate on.
    mesh: the device mesh.
    recipe: the optimizer recipe (default `config.optim`).
    objective: replaces the task's loss (pre-training objectives).
    evaluator: replaces the task's evaluator (e.g. kNN of features).
    metric: the evaluator's headline metric (default the task's).
    raw_images: train on the images as stored, in [0, 1] (not augmented or normalised),
      for objectives that draw their views on the device.
    raw_size: the side the raw images are resized to (None: the dataset's own).
    carry_state: start each IMP round from the final optimizer (and objective) state
      of the run it continues (`continue_from`, the same seed's previous round) instead
      of a fresh one, as the reference does upstream.

  Returns:
    finetune(variables, masks, *, seed, checkpoint_dir, rewind_step=None,
    continue_from=None, mesh=mesh) -> FitResult; a `scheduler` passes each run's own
    device group as `mesh`.
  """
  recipe = recipe or config_lib.recipe(config.optim)
  batch_size = config.data.batch_size
  data_dir = config.data.data_dir
  objective = objective or task.objective(model, dataset)
  steps = task.steps_per_epoch(dataset, batch_size)

  # What is bound to devices is made once per mesh a run is given (a scheduler's groups).
  @functools.cache
  def evaluator_on(run_mesh: Mesh) -> Evaluator:
    if evaluator is not None:
      if run_mesh is not mesh:
        raise ValueError('A fine-tune with its own evaluator runs on its own mesh only.')
      return evaluator
    return task.evaluator(model, dataset, batch_size=config.data.eval_batch_size,
                          data_dir=data_dir, mesh=run_mesh)

  @functools.cache
  def batches_on(run_mesh: Mesh) -> TrainBatches:
    native = raw_size in (None, dataset.image_shape[0])
    if config.data.pipeline == 'device' and on_device.fits(dataset) and native:
      return on_device.DeviceData(dataset, run_mesh, batch_size=batch_size, data_dir=data_dir,
                                  augment=not raw_images, normalize=not raw_images)
    return _host_batches(config, task, dataset, raw_images, raw_size)

  def finetune(variables, masks, *, seed, checkpoint_dir, rewind_step=None,
               continue_from=None, mesh=mesh):
    writer = reporting.metric_writer(paths.tensorboard_dir(checkpoint_dir),
                                     just_logging=not sharding.is_chief())
    batches = batches_on(mesh)
    try:
      return fit(
          model, variables, masks, recipe,
          train_batches=lambda epoch, start: batches(epoch, seed, start),
          steps_per_epoch=steps, checkpoint_dir=checkpoint_dir, evaluator=evaluator_on(mesh),
          metric=metric or task.metric.key, objective=objective, mesh=mesh,
          is_head=task.is_head, writer=writer,
          checkpoint_every_steps=config.checkpoint_every_steps or None,
          rewind_step=rewind_step, rng=jax.random.key(seed),
          carry_from=continue_from if carry_state else None)
    finally:
      writer.close()

  return finetune


def loss_gradient(config: ml_collections.ConfigDict, model: Any, task: tasks.Task,
                  dataset: data.DatasetInfo, mesh: Mesh, batch_stats: Any, *,
                  objective: Objective | StatefulObjective | None = None,
                  raw_images: bool = False,
                  raw_size: int | None = None) -> Callable[[Any], Any]:
  """params -> the training loss's gradient summed over `config.imp.score_batches` batches.

  What gradient-based pruning criteria (SNIP) score by: the first training batches of
  seed `config.seed`'s epoch 0 as the host pipeline reads them, in train mode
  (`lth_jax.training.gradients`).

  Args:
    config: the experiment config.
    model: the task's model.
    task: the task.
    dataset: its dataset.
    mesh: the device mesh.
    batch_stats: BatchNorm statistics of the model (their structure; train mode does
      not read their values).
    objective, raw_images, raw_size: the loss and its inputs, as for `make_finetune`
      (a stateful objective's state starts from `config.seed`).

  Returns:
    The gradient function (params tree in, host params tree out).
  """
  read = _host_batches(config, task, dataset, raw_images, raw_size)
  return gradients.summed_gradient(
      model, objective or task.objective(model, dataset), lambda: read(0, config.seed, 0),
      mesh, batch_stats, num_batches=config.imp.score_batches, rng=jax.random.key(config.seed))
