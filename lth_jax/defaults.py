"""The default experiment config that every file in configs/ starts from, and its checks.

Config files in configs/ override fields of `base_config()`; `validate` runs before any
compute so that a bad value stops the run with a message that says what to change.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import ml_collections

from lth_jax import augment, errors, imp, train
from lth_jax.models import resnet

MODES = ('imp', 'transfer', 'upstream', 'paper')
UPSTREAM_OBJECTIVES = ('supervised', 'simclr', 'moco')
PRETRAINED_SOURCES = ('torchvision', 'moco', 'simclr', 'auto', 'random', 'pretrain')
TRANSFER_VARIANTS = ('ticket', 'random_global', 'random_layerwise', 'reinit', 'omp')
# The config files of a source checkout (what `--config=configs/<name>.py` names).
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'


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

  Args:
    spec: 'name' or 'name:arg' of a file in configs/ (e.g. 'demo:tiny',
      'downstream_imp:moco'), or a path to a config file, optionally with ':arg'.

  Returns:
    The file's `get_config(arg)` (or `get_config()` without an argument).
  """
  name, _, arg = spec.partition(':')
  path = pathlib.Path(name if name.endswith('.py') else CONFIG_DIR / f'{name}.py')
  if not path.is_file():
    raise FileNotFoundError(
        f'No config file {path}: configs/ ships with the source repository; install lth_jax '
        'from a checkout (pip install -e DIR) or pass the path of a config file.')
  module_spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def base_config() -> ml_collections.ConfigDict:
  """Every field an experiment reads, with the reference's downstream defaults.

  Returns:
    A ConfigDict; configs/*.py change what differs.
  """
  c = ml_collections.ConfigDict()
  c.mode = 'imp'
  c.seed = 0

  # θ_p: where the pre-trained weights come from.
  c.pretrained = ml_collections.ConfigDict()
  c.pretrained.source = 'torchvision'   # see PRETRAINED_SOURCES
  c.pretrained.path = ''                # .pth / .pth.tar / .safetensors / .npz

  # source='pretrain': θ_p is trained (supervised) inside the workdir and cached there.
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.dataset = 'animal_mnist'
  c.pretrain.optim = train.default_optimizer_config()

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

  c.optim = train.default_optimizer_config()

  c.imp = ml_collections.ConfigDict()
  c.imp.num_rounds = 16                 # round k has sparsity 1 - 0.8^k
  c.imp.fraction = 0.2
  c.imp.pruning = 'magnitude'           # see imp.PRUNING_METHODS
  c.imp.rewind = 'start'                # 'start' (θ_p; θ_0 if pretrained.source=random), 'step'
  c.imp.rewind_step = 0
  c.imp.prune_first = False
  c.imp.random_baseline = False         # also run the random-pruning baseline branch
  c.imp.policy = ml_collections.config_dict.placeholder(str)  # None: all convs but the stem

  c.transfer = ml_collections.ConfigDict()
  c.transfer.masks = ''                 # comma-separated mask paths (orbax dirs or .pth/.npz)
  c.transfer.imp_workdir = ''           # or: every round mask of an IMP workdir
  c.transfer.datasets = 'cifar10'       # comma-separated
  c.transfer.variant = 'ticket'         # see TRANSFER_VARIANTS
  c.transfer.omp_rounds = 8             # 'omp': one-shot masks at 1 - 0.8^k, k = 1..omp_rounds

  # mode='upstream': IMP on the pre-training task (lth_jax.upstream).
  c.upstream = ml_collections.ConfigDict()
  c.upstream.objective = 'supervised'   # see UPSTREAM_OBJECTIVES
  c.upstream.projection_dim = 128       # simclr/moco: output of the MLP head
  c.upstream.temperature = 0.2          # simclr (0.5 in the reference) / moco
  c.upstream.moco_momentum = 0.999
  c.upstream.queue_size = 65536         # moco: K negative keys (>= the global batch)
  c.upstream.views = ''                 # augment preset ('simclr', 'moco_v2'); '': the objective's
  c.upstream.blur = True                # keep the preset's Gaussian blur (off for tiny images)
  c.upstream.image_size = 0             # side of the raw images fed to the views (0: the dataset's)
  c.upstream.view_size = 0              # side of the augmented views (0: image_size)
  c.upstream.normalize = True           # normalise views with the dataset's mean/std
  c.upstream.keep_state = False         # carry optimizer state and MoCo's queue across rounds
  c.upstream.knn_k = 200                # simclr/moco round metric: weighted kNN top-1
  c.upstream.knn_temperature = 0.1
  c.upstream.knn_bank_size = 0          # train examples in the kNN bank (0: all)

  # mode='paper': the paper in miniature (lth_jax.paper).
  c.paper = ml_collections.ConfigDict()
  c.paper.pretrainings = 'supervised,simclr,moco'  # pre-trained on pretrain.dataset
  c.paper.tasks = 'mnist5k,digits'      # transfer tasks (comma-separated)
  c.paper.upstream_epochs = 1           # epochs of each upstream IMP round
  c.paper.transfer_every = 2            # transfer every N-th upstream ticket

  c.num_seeds = 1                       # fine-tuning seeds per ticket (the paper: 3)
  c.dense_seeds = 0                     # seeds of IMP's dense round 0 (0: num_seeds)
  c.checkpoint_every_steps = 0          # extra mid-epoch checkpoints (0: each epoch only)
  c.num_devices = 0                     # 0: all devices
  return c


# Each objective's released checkpoint (`pretrained.source`) and the reference's upstream
# recipe: (optimizer, learning rate, weight decay) for the paper and for the offline demo.
_UPSTREAM_RECIPES = {
    'supervised': ('torchvision', ('sgd', 1e-4, 1e-4), ('sgd', 0.05, 5e-4)),
    'simclr': ('simclr', ('lars', 1e-4, 1e-6), ('lars', 0.5, 1e-6)),
    'moco': ('moco', ('sgd', 3e-4, 1e-4), ('sgd', 0.06, 5e-4)),
}


def upstream_config(objective: str, variant: str = '') -> ml_collections.ConfigDict:
  """The upstream IMP experiment of configs/{supervised,simclr,moco}_imp.py.

  The paper's setting: ResNet-50 (ImageNet stem) on imagenet2012 from the objective's
  released checkpoint, batch 256, 10 epochs per round at a constant learning rate
  (SGD; LARS for SimCLR), the first mask one-shot pruned from θ_p, 18 masks (20% to
  98.2% sparsity). variant='demo' runs the same code on Animal-MNIST with a ResNet-18
  of width 1/4 (CIFAR stem) whose θ_p is pre-trained with the objective inside the
  workdir.

  Args:
    objective: one of UPSTREAM_OBJECTIVES.
    variant: '' (the paper) or 'demo'.

  Returns:
    A ConfigDict.
  """
  if objective not in _UPSTREAM_RECIPES:
    raise ValueError(f'Unknown objective {objective!r}: choose one of {UPSTREAM_OBJECTIVES}.')
  source, paper, demo = _UPSTREAM_RECIPES[objective]
  c = base_config()
  c.mode = 'upstream'
  c.upstream.objective = objective
  c.upstream.temperature = 0.5 if objective == 'simclr' else 0.2
  # The converted SimCLR checkpoints take [0, 1] pixels.
  c.upstream.normalize = objective != 'simclr'
  c.pretrained.source = source
  c.model.arch = 'resnet50'
  c.model.stem = 'imagenet'
  c.data.dataset = 'imagenet2012'
  c.data.batch_size = 256
  c.upstream.knn_bank_size = 100_000
  c.optim.update(schedule='constant', warmup_epochs=0, num_epochs=10, momentum=0.9)
  c.imp.num_rounds = 18
  c.imp.prune_first = True
  recipes = [(c.optim, paper)]
  if variant == 'demo':
    # θ_p is made here, so it can see the same normalised inputs as every transfer of it
    # (the released SimCLR weights want [0, 1] pixels; ours need not).
    c.upstream.normalize = True
    c.pretrained.source = 'pretrain'
    c.pretrain.dataset = c.data.dataset = 'animal_mnist'
    c.model.arch = 'resnet18'
    c.model.stem = 'cifar'
    c.model.width_multiplier = 0.25
    c.data.batch_size = 128
    c.upstream.knn_bank_size = 0
    c.upstream.queue_size = 2048
    # 0.999 suits ImageNet's 5k steps per epoch; a few hundred steps need a faster key
    # encoder (the usual CIFAR-scale MoCo setting).
    c.upstream.moco_momentum = 0.99
    # A blur of sigma 0.1-2 px is meant for 224 px images (SimCLR drops it on CIFAR).
    c.upstream.blur = False
    c.pretrain.optim.update(schedule='cosine', warmup_epochs=0, num_epochs=6, momentum=0.9)
    c.optim.num_epochs = 1
    c.imp.num_rounds = 5
    recipes = [(c.optim, demo), (c.pretrain.optim, demo)]
  elif variant:
    raise ValueError(f'Unknown variant {variant!r}: use configs/{objective}_imp.py for the '
                     f'paper or configs/{objective}_imp.py:demo for the offline demo.')
  for optim, (optimizer, learning_rate, weight_decay) in recipes:
    optim.update(optimizer=optimizer, learning_rate=learning_rate, weight_decay=weight_decay)
  return c


def _validate_upstream(config: ml_collections.ConfigDict) -> None:
  u = config.upstream
  if u.objective not in UPSTREAM_OBJECTIVES:
    _fail('upstream.objective', u.objective, f'choose one of {UPSTREAM_OBJECTIVES}.')
  if u.views and u.views not in augment.PRESETS:
    _fail('upstream.views', u.views, f'choose one of {tuple(augment.PRESETS)} or \'\'.')
  if u.temperature <= 0:
    _fail('upstream.temperature', u.temperature, 'must be > 0.')
  if not 0.0 <= u.moco_momentum <= 1.0:
    _fail('upstream.moco_momentum', u.moco_momentum, 'must be in [0, 1].')
  if u.objective == 'moco' and u.queue_size < config.data.batch_size:
    _fail('upstream.queue_size', u.queue_size,
          f'must hold at least one global batch (data.batch_size={config.data.batch_size}).')
  if u.knn_k < 1 or u.knn_temperature <= 0 or u.knn_bank_size < 0:
    _fail('upstream.knn_k', u.knn_k, 'knn_k must be >= 1, knn_temperature > 0 and '
          'knn_bank_size >= 0.')
  if config.imp.rewind != 'start':
    _fail('imp.rewind', config.imp.rewind, "upstream IMP rewinds to θ_p: use 'start'.")
  if (config.pretrained.source == 'pretrain'
      and config.pretrain.dataset != config.data.dataset):
    _fail('pretrain.dataset', config.pretrain.dataset,
          'upstream IMP pre-trains θ_p on its own task: set it to data.dataset '
          f'({config.data.dataset!r}).')


def _validate_paper(config: ml_collections.ConfigDict,
                    known_datasets: tuple[str, ...]) -> None:
  p = config.paper
  names = split_names(p.pretrainings)
  if not names or any(n not in UPSTREAM_OBJECTIVES for n in names):
    _fail('paper.pretrainings', p.pretrainings,
          f'a comma-separated list drawn from {UPSTREAM_OBJECTIVES}.')
  tasks = split_names(p.tasks)
  if not tasks or any(t not in known_datasets for t in tasks):
    _fail('paper.tasks', p.tasks, f'a comma-separated list drawn from {known_datasets}.')
  if p.upstream_epochs < 1 or p.transfer_every < 1:
    _fail('paper.upstream_epochs', p.upstream_epochs,
          'upstream_epochs and transfer_every must be >= 1.')
  if p.transfer_every > config.imp.num_rounds:
    _fail('paper.transfer_every', p.transfer_every,
          f'must be <= imp.num_rounds ({config.imp.num_rounds}), or no ticket is transferred.')


def _fail(field: str, value, hint: str) -> None:
  raise errors.ConfigError(f'config.{field}={value!r}: {hint}')


def validate(config: ml_collections.ConfigDict, known_datasets: tuple[str, ...]) -> None:
  """Checks a config before any compute.

  Args:
    config: the experiment config.
    known_datasets: dataset names the data module can load.

  Raises:
    ValueError: naming the field, its value and what to change.
  """
  if config.mode not in MODES:
    _fail('mode', config.mode, f'choose one of {MODES}.')
  if config.model.arch not in resnet.ARCHS:
    _fail('model.arch', config.model.arch, f'choose one of {sorted(resnet.ARCHS)}.')
  if config.model.stem not in resnet.STEMS:
    _fail('model.stem', config.model.stem, f'choose one of {resnet.STEMS}.')
  if config.model.width_multiplier <= 0:
    _fail('model.width_multiplier', config.model.width_multiplier, 'must be > 0.')
  datasets = [config.data.dataset]
  if config.mode == 'transfer':
    datasets = split_names(config.transfer.datasets)
  for name in datasets:
    if name not in known_datasets:
      _fail('data.dataset' if config.mode != 'transfer' else 'transfer.datasets', name,
            f'unknown dataset; choose from {sorted(known_datasets)}.')
  if config.data.batch_size < 1 or config.data.eval_batch_size < 1:
    _fail('data.batch_size', config.data.batch_size, 'batch sizes must be >= 1.')
  if not 0.0 < config.imp.fraction < 1.0:
    _fail('imp.fraction', config.imp.fraction,
          'must be in (0, 1): the share of surviving weights pruned per round (paper: 0.2).')
  if config.imp.num_rounds < 1:
    _fail('imp.num_rounds', config.imp.num_rounds, 'must be >= 1.')
  if config.imp.pruning not in imp.PRUNING_METHODS:
    _fail('imp.pruning', config.imp.pruning, f'choose one of {imp.PRUNING_METHODS}.')
  if config.imp.rewind not in imp.REWIND_POINTS:
    _fail('imp.rewind', config.imp.rewind, f'choose one of {imp.REWIND_POINTS}.')
  if config.imp.random_baseline and config.imp.pruning.startswith('random'):
    _fail('imp.random_baseline', config.imp.random_baseline,
          f'imp.pruning={config.imp.pruning!r} already prunes at random, so the baseline '
          'branch would be the run itself; set --config.imp.random_baseline=False, or '
          "--config.imp.pruning=magnitude to compare IMP with random pruning.")
  if config.num_seeds < 1:
    _fail('num_seeds', config.num_seeds, 'must be >= 1.')
  if config.dense_seeds and config.dense_seeds < config.num_seeds:
    _fail('dense_seeds', config.dense_seeds, f'must be 0 or >= num_seeds ({config.num_seeds}).')
  if config.optim.optimizer not in train.OPTIMIZERS:
    _fail('optim.optimizer', config.optim.optimizer, f'choose one of {train.OPTIMIZERS}.')
  if config.optim.schedule not in train.SCHEDULES:
    _fail('optim.schedule', config.optim.schedule, f'choose one of {train.SCHEDULES}.')
  if config.optim.num_epochs < 1:
    _fail('optim.num_epochs', config.optim.num_epochs, 'must be >= 1.')
  if config.optim.learning_rate <= 0:
    _fail('optim.learning_rate', config.optim.learning_rate, 'must be > 0.')
  source = config.pretrained.source
  if source not in PRETRAINED_SOURCES:
    _fail('pretrained.source', source, f'choose one of {PRETRAINED_SOURCES}.')
  if source == 'pretrain' and config.pretrain.dataset not in known_datasets:
    _fail('pretrain.dataset', config.pretrain.dataset,
          f'unknown dataset; choose from {sorted(known_datasets)}.')
  if source not in ('random', 'pretrain'):
    path = config.pretrained.path
    if not path:
      _fail('pretrained.path', path, f'set it to the {source} checkpoint file '
            '(--config.pretrained.path=/path/to/file.pth), or use '
            '--config.pretrained.source=random for a randomly initialised network.')
    if not os.path.isfile(path):
      _fail('pretrained.path', path, 'no such file; check the path (weights cannot be '
            'downloaded at run time).')
  if config.mode == 'upstream':
    _validate_upstream(config)
  if config.mode == 'paper':
    _validate_paper(config, known_datasets)
  if config.mode == 'transfer':
    if config.transfer.variant not in TRANSFER_VARIANTS:
      _fail('transfer.variant', config.transfer.variant, f'choose one of {TRANSFER_VARIANTS}.')
    if config.transfer.variant != 'omp' and not (config.transfer.masks or
                                                  config.transfer.imp_workdir):
      _fail('transfer.masks', config.transfer.masks,
            'name the tickets: comma-separated mask paths, or transfer.imp_workdir.')
    for path in split_names(config.transfer.masks):
      if not os.path.exists(path):
        _fail('transfer.masks', path, 'no such mask file or directory.')
    if config.transfer.imp_workdir and not os.path.isdir(config.transfer.imp_workdir):
      _fail('transfer.imp_workdir', config.transfer.imp_workdir, 'no such directory.')
