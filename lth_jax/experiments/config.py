"""The experiment config: the fields every mode shares, loading config files, checks.

Config files in configs/ override fields of `base_config()`; each mode adds its own
section (see `lth_jax.experiments.modes`), and `validate` runs before any compute so
that a bad value stops the run with a message naming the field and the fix. Then
`lth_jax.experiments.specs` reads the config once, into the typed specs that the modes,
the wiring and the library below take; nothing else reads a config.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections
from absl import logging
from flax import traverse_util

from lth_jax import data, errors, tasks
from lth_jax.models import resnet
from lth_jax.runtime import workdir as workdir_lib
from lth_jax.training import optim

# The config files: the copy a wheel installs inside the package, else a checkout's
# configs/ (what `--config=configs/<name>.py` names). The package's is looked at first: in
# a wheel install the folder above the package is site-packages.
CONFIG_DIR = next((d for d in (pathlib.Path(__file__).resolve().parents[i] / 'configs'
                               for i in (1, 2)) if d.is_dir()),
                  pathlib.Path(__file__).resolve().parents[2] / 'configs')
# The fields every mode reads (experiment.json records these and the mode's sections).
# The backbone fields of `config.model`; any other field is a task's model setting
# (`lth_jax.tasks.Task.options`, e.g. a DeepLab's output_stride).
MODEL_FIELDS = ('arch', 'stem', 'width_multiplier', 'half_precision')
# What each recipe section trains, for messages about it.
RECIPE_USES = {'optim': 'the training', 'pretrain.optim': "θ_p's pre-training"}
# The config field behind each `lth_jax.lottery.ImpSpec` attribute (see `check_imp`).
SPEC_FIELDS = (('imp.num_rounds', 'num_rounds'), ('imp.fraction', 'fraction'),
               ('imp.pruning', 'pruning'), ('imp.rewind', 'rewind'),
               ('imp.rewind_step', 'rewind_step'), ('imp.rewind_scope', 'rewind_scope'),
               ('imp.prune_first', 'prune_first'), ('num_seeds', 'seeds'),
               ('dense_seeds', 'dense_seeds'))
# Criteria renamed since workdirs recorded them: old -> new name. `imp.pruning` takes an
# old name as the new criterion (warned), its folder keeping the old: workdirs resume.
RENAMED_CRITERIA = {'random_layerwise': 'layerwise_random'}
COMMON_FIELDS = ('mode', 'seed', 'pretrained', 'pretrain', 'model', 'data', 'optim', 'imp',
                 'num_seeds', 'dense_seeds', 'checkpoint_every_steps', 'num_devices',
                 'devices_per_run')


def split_names(value: str) -> list[str]:
  """The items of a comma-separated config field, e.g. 'cifar10, svhn_cropped'.

  Args:
    value: the field's value.

  Returns:
    The stripped, non-empty items in order.
  """
  return [v.strip() for v in value.split(',') if v.strip()]


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads a config file as `--config=` does, for notebooks and tests.

  Only what a user names is loaded: no mode reads configs/ (what the package builds on
  is in `lth_jax.experiments.presets`).

  Args:
    spec: 'name' or 'name:arg' of a file in configs/ (e.g. 'demo:tiny',
      'downstream_imp:moco'), or a path to a config file, optionally with ':arg'.

  Returns:
    The file's `get_config(arg)` (or `get_config()` without an argument).
  """
  name, _, arg = spec.partition(':')
  path = pathlib.Path(name if name.endswith('.py') else CONFIG_DIR / f'{name}.py')
  if not path.is_file():
    known = sorted(p.stem for p in CONFIG_DIR.glob('*.py') if p.stem != '__init__')
    raise FileNotFoundError(
        f'No config file {path}: name one of {known} (with an optional :variant), or pass '
        'the path of a config file.')
  module_spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def optim_config() -> ml_collections.ConfigDict:
  """The fields of an optimizer recipe, with the reference's downstream values.

  Returns:
    A ConfigDict mirroring `lth_jax.training.Recipe` (see its attributes).
  """
  c = ml_collections.ConfigDict()
  for field in optim.Recipe.__dataclass_fields__.values():
    c[field.name] = field.default
  return c


def recipe(section: ml_collections.ConfigDict) -> optim.Recipe:
  """The `Recipe` of an optimizer section (`config.optim`, `config.pretrain.optim`).

  Args:
    section: fields of `optim_config`; a field missing from it keeps the default.

  Returns:
    The recipe.
  """
  return optim.Recipe(**{k: v for k, v in section.items()
                         if k in optim.Recipe.__dataclass_fields__})


def base_config() -> ml_collections.ConfigDict:
  """Every field an experiment reads, with the reference's downstream defaults.

  Returns:
    A ConfigDict: the shared fields and every mode's section; configs/*.py change what
    differs.
  """
  from lth_jax.experiments import modes

  c = ml_collections.ConfigDict()
  c.mode = 'imp'
  c.seed = 0

  # θ_p: where the pre-trained weights come from.
  c.pretrained = ml_collections.ConfigDict()
  c.pretrained.source = 'torchvision'   # a source of lth_jax.experiments.sources
  c.pretrained.path = ''                # .pth / .pth.tar / .safetensors / .npz

  # source='pretrain': θ_p is trained (supervised) inside the workdir and cached there.
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.dataset = 'animal_mnist'
  c.pretrain.optim = optim_config()

  c.model = ml_collections.ConfigDict()
  c.model.arch = 'resnet50'
  c.model.stem = 'cifar'                # the reference's downstream model
  c.model.width_multiplier = 1.0
  c.model.half_precision = False        # bf16 compute on TPU/GPU

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'cifar10'
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # tfds data_dir
  c.data.batch_size = 128               # global, over all devices and hosts
  c.data.eval_batch_size = 500
  # ImageNet has no labelled test split besides its validation set (the 'test' split):
  # hold this many train images out as 'val', so that choosing the best epoch never
  # looks at the test set (0: 'val' is the test set, as in the reference).
  c.data.val_from_train = 10_000
  # 'device': training sets that fit (CIFAR, SVHN, Fashion-MNIST, the offline sets) live
  # on the devices as uint8 and are cropped, flipped and normalised by jit; 'host': the
  # tf.data pipeline; 'auto': 'device' on GPU/TPU, 'host' on CPU (recorded as chosen).
  c.data.pipeline = 'auto'
  # The segmentation protocol (`lth_jax.data.registry`), None: the dataset's own.
  # seg_eval: 'resize_center_crop' (the reference's --crop_val, voc2012_seg's) or 'pad'
  # (whole images, the canvases'); seg_train_pad: 'background' (the reference's padding of
  # small crops, voc2012_seg's) or 'ignore' (bottom/right, never trained on; the canvases').
  c.data.seg_eval = ml_collections.config_dict.placeholder(str)
  c.data.seg_train_pad = ml_collections.config_dict.placeholder(str)

  c.optim = optim_config()

  # The ticket search, read by every mode that prunes (imp, transfer's OMP, upstream,
  # paper).
  c.imp = ml_collections.ConfigDict()
  c.imp.num_rounds = 16                 # round k has sparsity 1 - 0.8^k
  c.imp.fraction = 0.2
  c.imp.pruning = 'magnitude'           # a criterion of lth_jax.pruning.CRITERIA
  c.imp.score_batches = 4               # batches of a gradient-based criterion (snip)
  c.imp.rewind = 'start'                # 'start' (θ_p; θ_0 if pretrained.source=random), 'step'
  c.imp.rewind_step = 0
  c.imp.rewind_scope = 'all'            # 'prunable': only pruned weights go back (see imp)
  c.imp.prune_first = False
  c.imp.random_baseline = False         # also run the random-pruning baseline branch
  c.imp.policy = ml_collections.config_dict.placeholder(str)  # None: all convs but the stem

  for mode in modes.MODES.values():
    if mode.section is not None:
      c[mode.name] = mode.section()

  c.num_seeds = 1                       # fine-tuning seeds per ticket (the paper: 3)
  c.dense_seeds = 0                     # seeds of every dense network (0: num_seeds)
  c.checkpoint_every_steps = 0          # extra mid-epoch checkpoints (0: each epoch only)
  c.num_devices = 0                     # 0: all devices
  # Independent runs (the seeds of a round, transfer runs) side by side, each on this
  # many devices (0: every run on all devices, one at a time); one process only.
  c.devices_per_run = 0
  return c


def fail(field: str, value, hint: str) -> None:
  """Raises the ConfigError of a bad field: 'config.<field>=<value>: <hint>'."""
  raise errors.ConfigError(f'config.{field}={value!r}: {hint}')


def check_dataset(field: str, name: str) -> None:
  """Fails unless `name` is a known dataset."""
  if name not in data.DATASETS:
    fail(field, name, f'unknown dataset; choose from {sorted(data.DATASETS)}.')


def criterion(config: ml_collections.ConfigDict) -> str:
  """The registered criterion `config.imp.pruning` names (an old name of
  `RENAMED_CRITERIA` mapped to its new one); folders and labels keep the name given."""
  return RENAMED_CRITERIA.get(config.imp.pruning, config.imp.pruning)


def _field(config: ml_collections.ConfigDict, field: str):
  """The value of a dotted field ('imp.fraction')."""
  for part in field.split('.'):
    config = config[part]
  return config


def check_imp(config: ml_collections.ConfigDict) -> None:
  """Fails unless the IMP run the config describes can be built.

  The checks are `lth_jax.lottery.ImpSpec`'s own, made by building the spec as the
  experiment's is built (`lth_jax.experiments.specs.imp_spec`); the field named is the
  one whose default value changes what the spec refuses. `validate` calls it once, for
  every mode; an old criterion name (`RENAMED_CRITERIA`) is accepted with a warning.

  Args:
    config: the experiment config.

  Raises:
    ConfigError: naming the field, its value and the spec's reason.
  """
  from lth_jax.experiments import specs

  if config.imp.pruning in RENAMED_CRITERIA:
    # Kept as given: the branch folder and experiment.json of a workdir started under it.
    logging.warning(
        'config.imp.pruning=%r: this IMP criterion is now called %r (the old name is also '
        "the ticket baseline of transfer.variant and paper.random_baselines); it runs as "
        '%r, its folder keeping the name given. New runs: --config.imp.pruning=%s.',
        config.imp.pruning, criterion(config), criterion(config), criterion(config))

  def refusal(trial: ml_collections.ConfigDict) -> str | None:
    try:
      specs.imp_spec(trial)
    except ValueError as e:
      return str(e)
    return None

  reason = refusal(config)
  if reason is None:
    return
  defaults = base_config()
  for field, attribute in SPEC_FIELDS:
    trial = ml_collections.ConfigDict(config.to_dict())
    trial.update_from_flattened_dict({field: _field(defaults, field)})
    if refusal(trial) != reason:
      # 'fraction must be ...': the message names the field already.
      hint = reason[len(attribute) + 1:] if reason.startswith(f'{attribute} must ') else reason
      fail(field, _field(config, field), hint)
  fail('imp', config.imp.to_dict(), reason)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a config before any compute: the shared fields, then the mode's.

  Args:
    config: the experiment config.

  Raises:
    ConfigError: naming the field, its value and what to change.
  """
  from lth_jax.experiments import modes, sources

  if config.mode not in modes.MODES:
    fail('mode', config.mode, f'choose one of {tuple(modes.MODES)}.')
  if config.model.arch not in resnet.ARCHS:
    fail('model.arch', config.model.arch, f'choose one of {sorted(resnet.ARCHS)}.')
  if config.model.stem not in resnet.STEMS:
    fail('model.stem', config.model.stem, f'choose one of {resnet.STEMS}.')
  if config.model.width_multiplier <= 0:
    fail('model.width_multiplier', config.model.width_multiplier, 'must be > 0.')
  if config.data.batch_size < 1 or config.data.eval_batch_size < 1:
    fail('data.batch_size', config.data.batch_size, 'batch sizes must be >= 1.')
  for field, choices in (('seg_eval', data.registry.SEG_EVALS),
                         ('seg_train_pad', data.registry.SEG_TRAIN_PADS)):
    if config.data[field] not in (None, *choices):
      fail(f'data.{field}', config.data[field],
           f"choose one of {choices}, or None for the dataset's own.")
  if config.imp.score_batches < 1:
    fail('imp.score_batches', config.imp.score_batches, 'must be >= 1.')
  if config.dense_seeds and config.dense_seeds < config.num_seeds:
    fail('dense_seeds', config.dense_seeds, f'must be 0 or >= num_seeds ({config.num_seeds}).')
  for name, section in (('optim', config.optim), ('pretrain.optim', config.pretrain.optim)):
    try:
      recipe(section)
    except ValueError as e:
      fail(name, dict(section), str(e))
  mode = modes.get(config.mode)
  if mode.own_theta_p:
    sources.validate(config)  # θ_p's source and the fields it reads
  mode.validate(config)
  # The one check of the IMP spec, after the mode's, which refuse what it does not do
  # more to the point than the spec would (upstream IMP's late rewinding).
  check_imp(config)
  _check_models(config, mode.datasets(config))
  for section, dataset in mode.trainings(config):
    check_training(config, section, dataset)


def _check_models(config: ml_collections.ConfigDict, datasets: list[str]) -> None:
  """Fails unless every task's model builds from `config.model` and its extra fields."""
  from lth_jax.experiments import specs

  built = [_task(config, name) for name in datasets if name in data.DATASETS]
  readers = {name for task, _ in built for name in task.options}
  for field in config.model:
    if field not in MODEL_FIELDS and field not in readers:
      fail(f'model.{field}', config.model[field],
           f'no task of this experiment reads it (their settings: {sorted(readers)}).')
  model = specs.model_spec(config)
  for task, info in built:
    try:
      task.build_model(model, info)
    except ValueError as e:
      fail('model', config.model.to_dict(), f'the {task.name} model of {info.name}: {e}')


def _task(config: ml_collections.ConfigDict, dataset: str) -> tuple[tasks.Task, data.DatasetInfo]:
  """The task and dataset a check builds, as the experiment's specs will (`wiring`)."""
  from lth_jax.experiments import specs, wiring

  return wiring.task_and_data(specs.data_spec(config), dataset)


def steps_per_epoch(config: ml_collections.ConfigDict, dataset: str) -> int:
  """The batches of an epoch of training on a dataset at `config.data.batch_size`.

  Args:
    config: the experiment config.
    dataset: a dataset name.

  Returns:
    Its task's steps per epoch.

  Raises:
    ConfigError: the batch size exceeds the dataset's train split.
  """
  task, info = _task(config, dataset)
  size = info.split_sizes['train']
  if not 1 <= config.data.batch_size <= size:
    fail('data.batch_size', config.data.batch_size,
         f'must be in [1, {size}] (the train split of {info.name!r}); lower it.')
  return task.steps_per_epoch(info, config.data.batch_size)


def check_training(config: ml_collections.ConfigDict, section: str, dataset: str) -> None:
  """Builds what a training run needs from the config alone: its batches and optimizer.

  So that a recipe whose schedule cannot be built for the run's length (a warm-up as
  long as the run, multistep milestones past it) or a batch larger than the data stops
  before the workdir is claimed, not when training starts.

  Args:
    config: the experiment config (`data.batch_size`).
    section: the recipe's config section, a key of `RECIPE_USES`.
    dataset: the dataset it trains on.

  Raises:
    ConfigError: naming the field and the fix.
  """
  steps = steps_per_epoch(config, dataset)
  task, _ = _task(config, dataset)
  try:
    optim.create_optimizer(recipe(_field(config, section)), steps, is_head=task.is_head)
  except ValueError as e:
    raise errors.ConfigError(
        f'config.{section}: {e} It is the recipe of {RECIPE_USES[section]} on {dataset!r} '
        f'({steps} batches an epoch at config.data.batch_size={config.data.batch_size}); '
        f'change the fields named (--config.{section}.<field>=...).') from None


def from_record(recorded: dict) -> ml_collections.ConfigDict:
  """The config of an experiment.json, a field missing from it taking its default.

  Args:
    recorded: the JSON of `experiment.json` (the sections its mode reads, and the
      environment its runs ran on, which is not config).

  Returns:
    A full config.
  """
  config = base_config()
  recorded = {k: v for k, v in recorded.items() if k != workdir_lib.ENVIRONMENT}
  # A section with no fields of its own (paper.task_recipes: task -> recipe) is a
  # mapping whose keys the record names: it is set whole, not field by field.
  mappings = {'.'.join(path) for path, value in traverse_util.flatten_dict(
      config.to_dict(), keep_empty_nodes=True).items() if value == traverse_util.empty_node}
  flat = traverse_util.flatten_dict(recorded, sep='.',
                                    is_leaf=lambda path, _: '.'.join(path) in mappings)
  config.update_from_flattened_dict(
      {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()})
  return config
