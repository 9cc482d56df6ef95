"""The one place an experiment's specs become a task, θ_p, data and a fine-tuning callable.

    experiment = specs.build(config)
    task, info = wiring.task_and_data(experiment.data, 'mnist5k')
    model = task.build_model(experiment.model, info)
    theta_p = wiring.theta_p(experiment, model, task.image_size(info), workdir, mesh)
    finetune = wiring.make_finetune(experiment, model, task, info, mesh)

Every mode builds what it runs through these functions, from the specs
(`lth_jax.experiments.specs`); the library below them (`lth_jax.lottery`,
`lth_jax.training`, `lth_jax.tasks`) never sees a config.
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
from lth_jax.experiments import sources, specs
from lth_jax.lottery import Finetune
from lth_jax.models import init_variables
from lth_jax.runtime import console, paths, sharding, tree_io
from lth_jax.runtime.scheduler import Scheduler
from lth_jax.training import Evaluator, Objective, StatefulObjective, fit, reporting
from lth_jax.training import gradients
from lth_jax.training.optim import Recipe

TrainBatches = Callable[[int, int, int], Iterator[Any]]  # (epoch, seed, start_step)


def mesh_for(experiment: specs.Experiment, *, fit_batch_sizes: bool = False) -> Mesh:
  """The device mesh of an experiment.

  Args:
    experiment: the experiment (`num_devices`, the batch sizes).
    fit_batch_sizes: with `num_devices` 0, take as many devices as divide both batch
      sizes (a later job on another machine, e.g. the analysis of a workdir) instead
      of refusing batch sizes that do not divide over all devices.

  Returns:
    A one-axis ('data') mesh.

  Raises:
    ConfigError: more devices asked for than exist, or a batch size that does not
      divide over the devices.
  """
  devices, d = jax.devices(), experiment.data
  count = experiment.num_devices or (math.gcd(len(devices), d.batch_size, d.eval_batch_size)
                                     if fit_batch_sizes else len(devices))
  if count > len(devices):
    raise errors.ConfigError(f'config.num_devices={experiment.num_devices}, but only '
                             f'{len(devices)} devices exist.')
  mesh = sharding.make_mesh(devices[:count])
  for field, size in (('batch_size', d.batch_size), ('eval_batch_size', d.eval_batch_size)):
    if size % mesh.size:
      raise errors.ConfigError(
          f'config.data.{field}={size} must be a multiple of the {mesh.size} '
          'devices; change it or set config.num_devices.')
  return mesh


def resolve_pipeline(config: ml_collections.ConfigDict) -> None:
  """Makes `config.data.pipeline`'s 'auto' the choice it stands for, so it is recorded.

  'auto' is 'device' on accelerators (training sets that fit are kept on the devices,
  `lth_jax.data.on_device`) and 'host' on CPU (the tf.data pipeline, whose batches the
  numbers of the README were measured with), or 'device' there too where TensorFlow is
  not installed. Recording the choice makes a workdir refuse to resume with the other
  pipeline, whose random stream differs. It runs before the specs are built
  (`specs.build`), so that they hold the choice too, as do paper mode's upstream
  experiments, whose configs copy it.

  Args:
    config: the config; `data.pipeline` is set in place ('auto' by the platform of the
      devices, which every mesh is made of).

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
    on_cpu = jax.devices()[0].platform == 'cpu'
    config.data.pipeline = 'host' if on_cpu and has_tf else 'device'


def check_pipeline(experiment: specs.Experiment, names: list[str]) -> None:
  """Refuses, before the workdir is claimed, a dataset that no installed pipeline serves.

  Where TensorFlow is absent the pipeline is 'device' (`resolve_pipeline`): it trains and
  evaluates a dataset only where its task reads one class per example (`Task.labels`)
  and its source holds it in memory, as the devices can keep it. Any other dataset would
  stop at its first epoch, in a claimed workdir.

  Args:
    experiment: the experiment.
    names: every dataset it reads.

  Raises:
    ConfigError: naming the dataset and what makes it need tf.data.
  """
  if data.arrays.tf_available():
    return
  for name in names:
    task, info = task_and_data(experiment.data, name)
    reason = _needs_tf_data(task, info)
    if reason:
      raise errors.ConfigError(
          f'Dataset {name!r} needs tf.data ({reason}), and tensorflow or tensorflow-datasets '
          'is not installed: pip install tensorflow tensorflow-datasets.')


def _class_batches(task: tasks.Task, info: data.DatasetInfo) -> bool:
  """Whether the device pipeline's batches (one class per example) train `task` on `info`."""
  return task.labels == data.CLASS_LABELS and on_device.fits(info)


def _needs_tf_data(task: tasks.Task, info: data.DatasetInfo) -> str:
  """Why only tf.data serves a dataset to its task ('' where the device pipeline does)."""
  if task.labels != data.CLASS_LABELS:
    return (f'its task {task.name!r} reads {task.labels} labels; '
            '--config.data.pipeline=device serves one class per example')
  if not data.arrays.in_memory(info):
    return f'its source {info.source!r} is read through tf.data'
  if not _class_batches(task, info):
    return f'{info.augmentation} augmentation or its size keeps it off the devices'
  return ''


def scheduler(experiment: specs.Experiment, mesh: Mesh, total_runs: int | None = None,
              finished_runs: int | None = None) -> Scheduler:
  """The scheduler of independent runs: side by side on groups of `devices_per_run`
  devices, or one at a time on the caller's mesh (a scheduler of one group).

  Args:
    experiment: the experiment.
    mesh: the experiment's mesh, split into groups of `devices_per_run` devices.
    total_runs: the experiment's runs, for its progress and ETA after each run.
    finished_runs: how many its workdir holds already, if counted up front (`Scheduler`).

  Raises:
    ConfigError: `devices_per_run` does not divide the devices or the batch sizes.
  """
  per_run, d = experiment.devices_per_run, experiment.data
  if not per_run or per_run == mesh.size:
    return Scheduler(None, total_runs=total_runs, finished_runs=finished_runs)
  for field, size in (('batch_size', d.batch_size), ('eval_batch_size', d.eval_batch_size)):
    if size % per_run:
      config_lib.fail('devices_per_run', per_run, f'must divide config.data.{field}={size}.')
  try:
    return Scheduler(list(mesh.devices.flat), per_run, total_runs=total_runs,
                     finished_runs=finished_runs)
  except ValueError as e:
    raise errors.ConfigError(f'config.devices_per_run={per_run}: {e}') from None


def dataset_info(spec: specs.Data, name: str) -> data.DatasetInfo:
  """A dataset with its validation split and segmentation protocol as the experiment asks.

  Args:
    spec: how the experiment reads data (`val_from_train`, and `seg_eval` and
      `seg_train_pad` where set, for segmentation datasets).
    name: a dataset name.

  Returns:
    Its DatasetInfo.
  """
  info = data.get_info(name, val_from_train=spec.val_from_train)
  if tasks.get(info.task).labels != data.PIXEL_LABELS:
    return info
  protocol = {field: getattr(spec, field) for field in ('seg_eval', 'seg_train_pad')
              if getattr(spec, field) is not None}
  return dataclasses.replace(info, **protocol)


def task_and_data(spec: specs.Data, dataset: str) -> tuple[tasks.Task, data.DatasetInfo]:
  """The registered task a dataset's labels are for, and the dataset.

  Args:
    spec: how the experiment reads data.
    dataset: a dataset name.

  Returns:
    (task, DatasetInfo); `task.build_model(experiment.model, info)` is its model.
  """
  info = dataset_info(spec, dataset)
  return tasks.get(info.task), info


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


def _pretrained_backbone(experiment: specs.Experiment, workdir: str,
                         mesh: Mesh) -> dict[str, Any]:
  """Supervised pre-training on the source's dataset, cached in the workdir."""
  pretrained = experiment.pretrained
  task, info = task_and_data(experiment.data, pretrained.dataset)
  model = task.build_model(experiment.model, info)
  like = init_variables(model, jax.random.key(experiment.seed), task.image_size(info))
  return pretrain_once(
      workdir, like, make_finetune(experiment, model, task, info, mesh,
                                   recipe=pretrained.recipe),
      seed=experiment.seed, description=f'{experiment.model.arch} on {info.name} for '
      f'{pretrained.recipe.num_epochs} epochs')


def theta_p(experiment: specs.Experiment, model: Any, image_size: int, workdir: str,
            mesh: Mesh, *, pretrained: Callable[[], Mapping[str, Any]] | None = None,
            keep_head: bool = False) -> Callable[[int], dict[str, Any]]:
  """θ_p on a model as a function of the fine-tuning seed (each seed's made once).

  The pre-trained parts are the same for every seed; the parts the source does not
  provide (the task's head; the stem conv of a CIFAR-stem model loading an ImageNet
  checkpoint) are drawn from the seed, so that runs with different seeds are
  independent runs from θ_p. A random init (source 'random', the classic LTH θ_0) is
  itself the rewind point and does not depend on the seed.

  Args:
    experiment: the experiment (`pretrained`, `seed`).
    model: the model θ_p is for.
    image_size: the side of its inputs (for a random init).
    workdir: the experiment's workdir (the 'pretrain' source's cache).
    mesh: the device mesh.
    pretrained: for source 'pretrain', () -> the pre-trained variables (default:
      supervised pre-training on `experiment.pretrained.dataset`); they are transplanted
      onto `model` with a fresh head per seed (see `lth_jax.experiments.sources`).
    keep_head: `pretrained` gives variables of `model` itself, head included (upstream
      IMP continues the pre-training objective), used as they are for every seed.

  Returns:
    seed -> {'params', 'batch_stats'} as numpy trees.
  """
  origin = sources.Origin(
      model, image_size, experiment.seed, experiment.pretrained.path, keep_head=keep_head,
      pretrained=pretrained or (lambda: _pretrained_backbone(experiment, workdir, mesh)))
  return sources.get(experiment.pretrained.source).start(origin)


def _host_batches(spec: specs.Data, task: tasks.Task, dataset: data.DatasetInfo,
                  raw_images: bool, raw_size: int | None) -> TrainBatches:
  """The host pipeline's training batches: the task's, or raw [0, 1] images for views."""
  batch_size, data_dir = spec.batch_size, spec.data_dir
  if raw_images:
    return lambda epoch, seed, start: data.train_batches(
        dataset, batch_size=batch_size, epoch=epoch, seed=seed, data_dir=data_dir,
        start_step=start, augment=False, normalize=False, image_size=raw_size)
  return lambda epoch, seed, start: task.train_batches(
      dataset, batch_size=batch_size, epoch=epoch, seed=seed, data_dir=data_dir,
      start_step=start)


def make_finetune(experiment: specs.Experiment, model: Any, task: tasks.Task,
                  dataset: data.DatasetInfo, mesh: Mesh, *, recipe: Recipe | None = None,
                  objective: Objective | StatefulObjective | None = None,
                  evaluator: Evaluator | None = None, metric: str | None = None,
                  raw_images: bool = False, raw_size: int | None = None,
                  carry_state: bool = False) -> Finetune:
  """`lth_jax.training.fit` bound to a task's data, loss and evaluator (a `Finetune`).

  Args:
    experiment: the experiment (`data`, `checkpoint_every_steps`, `recipe`).
    model: the task's model.
    task: the task (its loss, evaluator, data pipeline and headline metric).
    dataset: the dataset to train and evaluate on.
    mesh: the device mesh.
    recipe: the optimizer recipe (default the experiment's fine-tuning recipe).
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
  recipe, spec = recipe or experiment.recipe, experiment.data
  batch_size, data_dir = spec.batch_size, spec.data_dir
  objective = objective or task.objective(model, dataset)
  steps = task.steps_per_epoch(dataset, batch_size)

  # What is bound to devices is made once per mesh a run is given (a scheduler's groups).
  @functools.cache
  def evaluator_on(run_mesh: Mesh) -> Evaluator:
    if evaluator is not None:
      if run_mesh is not mesh:
        raise ValueError('A fine-tune with its own evaluator runs on its own mesh only.')
      return evaluator
    return task.evaluator(model, dataset, batch_size=spec.eval_batch_size,
                          data_dir=data_dir, mesh=run_mesh)

  @functools.cache
  def batches_on(run_mesh: Mesh) -> TrainBatches:
    native = raw_size in (None, dataset.image_shape[0])
    if spec.pipeline == 'device' and _class_batches(task, dataset) and native:
      return on_device.DeviceData(dataset, run_mesh, batch_size=batch_size, data_dir=data_dir,
                                  augment=not raw_images, normalize=not raw_images)
    return _host_batches(spec, task, dataset, raw_images, raw_size)

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
          checkpoint_every_steps=experiment.checkpoint_every_steps or None,
          rewind_step=rewind_step, rng=jax.random.key(seed),
          carry_from=continue_from if carry_state else None)
    finally:
      writer.close()

  return finetune


def loss_gradient(experiment: specs.Experiment, model: Any, task: tasks.Task,
                  dataset: data.DatasetInfo, mesh: Mesh, batch_stats: Any, *,
                  objective: Objective | StatefulObjective | None = None,
                  raw_images: bool = False,
                  raw_size: int | None = None) -> Callable[[Any], Any]:
  """params -> the training loss's gradient summed over `imp.score_batches` batches.

  What gradient-based pruning criteria (SNIP) score by: the first training batches of
  the experiment seed's epoch 0 as the host pipeline reads them, in train mode
  (`lth_jax.training.gradients`).

  Args:
    experiment: the experiment.
    model: the task's model.
    task: the task.
    dataset: its dataset.
    mesh: the device mesh.
    batch_stats: BatchNorm statistics of the model (their structure; train mode does
      not read their values).
    objective, raw_images, raw_size: the loss and its inputs, as for `make_finetune`
      (a stateful objective's state starts from the experiment's seed).

  Returns:
    The gradient function (params tree in, host params tree out).
  """
  read = _host_batches(experiment.data, task, dataset, raw_images, raw_size)
  seed = experiment.seed
  return gradients.summed_gradient(
      model, objective or task.objective(model, dataset), lambda: read(0, seed, 0), mesh,
      batch_stats, num_batches=experiment.imp.score_batches, rng=jax.random.key(seed))
