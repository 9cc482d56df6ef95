"""θ_p's sources: where the weights every run starts from come from (`config.pretrained.source`).

    source = sources.get(experiment.pretrained.source)
    start = source.start(sources.Origin(model, image_size, seed, path, pretrained))
    start(seed)   # {'params', 'batch_stats'}

'random' is a random init (the classic LTH θ_0); 'pretrain' a network pre-trained inside
the workdir on `config.pretrain.dataset` with `config.pretrain.optim`; every checkpoint
format `lth_jax.interop.checkpoints` reads ('torchvision', 'moco', 'simclr', 'auto') is a
source reading `config.pretrained.path`; 'released' reads a θ_p lth_jax ships
(`lth_jax.released`, named by `config.pretrained.path`), after checking its digest.
Each says what it reads (datasets, trainings, files) so that the experiment layer checks
and loads it before the workdir is claimed:
its checks and lists take the config, its loading the experiment's `specs.Pretrained`.
A new source is one `register` call (a new checkpoint format: one entry of
`checkpoints.SOURCES`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections

from lth_jax import errors, released
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import specs
from lth_jax.interop import checkpoints
from lth_jax.models import init_variables
from lth_jax.registry import Registry
from lth_jax.runtime import workdir as workdir_lib

# seed -> {'params', 'batch_stats'} as numpy trees.
SeedVariables = Callable[[int], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Origin:
  """What a source may build θ_p from, for one model.

  Attributes:
    model: the model θ_p is for (with its task's head).
    image_size: the side of its inputs (a random init's).
    seed: the experiment's seed (a random init's, the same for every run).
    path: the checkpoint file (`config.pretrained.path`).
    pretrained: () -> the variables pre-trained in the workdir (called once, lazily).
    keep_head: `pretrained` gives variables of `model` itself, head included (upstream
      IMP continues the pre-training objective), used as they are for every seed.
  """
  model: Any
  image_size: int
  seed: int
  path: str = ''
  pretrained: Callable[[], Mapping[str, Any]] | None = None
  keep_head: bool = False


def _no_fields(config: ml_collections.ConfigDict) -> list[Any]:
  del config
  return []


def _no_files(pretrained: specs.Pretrained, model: Callable[[], Any]) -> dict[str, str]:
  del pretrained, model
  return {}


@dataclasses.dataclass(frozen=True)
class Source:
  """One source of θ_p.

  Attributes:
    name: the registry key (`config.pretrained.source`).
    start: Origin -> seed -> variables (each seed's made once).
    point: how results name the weights IMP rewinds to ('θ_p'; 'θ_0' for a random init).
    validate: raises `ConfigError` for a field the source reads.
    datasets: config -> the datasets it reads (checked to exist before the claim).
    trainings: config -> the (recipe section, dataset) it trains with (checked too).
    load: (`specs.Pretrained`, () -> the model θ_p is for) -> fingerprints of the
      files it reads ({field: SHA-256}), each loaded first, raising if missing or unfit.
    path: config -> the file it reads (`specs.Pretrained.path`; by default
      `config.pretrained.path`).
    pretrained_on: config -> the dataset θ_p was pre-trained on, where the source
      knows it ('' otherwise): upstream IMP continues θ_p's pre-training there.
  """
  name: str
  start: Callable[[Origin], SeedVariables]
  point: str = 'θ_p'
  validate: Callable[[ml_collections.ConfigDict], None] = lambda config: None
  datasets: Callable[[ml_collections.ConfigDict], list[str]] = _no_fields
  trainings: Callable[[ml_collections.ConfigDict], list[tuple[str, str]]] = _no_fields
  load: Callable[[specs.Pretrained, Callable[[], Any]], dict[str, str]] = _no_files
  path: Callable[[ml_collections.ConfigDict], str] = lambda config: config.pretrained.path
  pretrained_on: Callable[[ml_collections.ConfigDict], str] = lambda config: ''


SOURCES: Registry[Source] = Registry('pretrained source')


def register(source: Source) -> Source:
  """Adds a source under `source.name` (`config.pretrained.source`)."""
  return SOURCES.register(source.name, source)


get = SOURCES.get


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks `config.pretrained.source` and the fields that source reads.

  Raises:
    ConfigError: naming the field and the fix.
  """
  if config.pretrained.source not in SOURCES:
    config_lib.fail('pretrained.source', config.pretrained.source,
                    f'choose one of {tuple(SOURCES)}.')
  get(config.pretrained.source).validate(config)


def transplant(backbone: Mapping[str, Any], model: Any, rng: jax.Array) -> dict[str, Any]:
  """θ_p on a task's model: the backbone's weights and a fresh head (as the reference).

  Args:
    backbone: {'params', 'batch_stats'} of a model of the same backbone (any head:
      its head is dropped).
    model: the task's model.
    rng: PRNG key of the fresh head.

  Returns:
    {'params', 'batch_stats'} as numpy trees.
  """
  state_dict = {k: v for k, v in checkpoints.to_pytorch(backbone).items()
                if not k.startswith('fc')}
  return checkpoints.load_pytorch(state_dict, model, rng=rng)


@functools.lru_cache(maxsize=2)
def read_checkpoint(path: str) -> dict[str, Any]:
  """The state dict of a checkpoint file, read once per process (every seed's θ_p)."""
  return checkpoints.read_state_dict(path)


# ------------------------------------------------------------------------------ random

def per_seed_init(model: Any, image_size: int) -> SeedVariables:
  """Independent random inits, one per seed (`jax.random.key(seed)`): training from scratch.

  Args:
    model: the model to initialise.
    image_size: the side of its inputs.

  Returns:
    seed -> the variables of that seed's init.
  """
  return lambda seed: init_variables(model, jax.random.key(seed), image_size)


def _random_init(origin: Origin) -> SeedVariables:
  # θ_0 is itself the rewind point: the same for every seed.
  fixed = jax.device_get(init_variables(origin.model, jax.random.key(origin.seed),
                                        origin.image_size))
  return lambda seed: fixed


register(Source('random', _random_init, point='θ_0'))


# ---------------------------------------------------------------------------- pretrain

def _pretrained(origin: Origin) -> SeedVariables:
  backbone = functools.cache(origin.pretrained)
  if origin.keep_head:
    return lambda seed: backbone()
  return functools.lru_cache(maxsize=None)(
      lambda seed: transplant(backbone(), origin.model, jax.random.key(seed)))


register(Source(
    'pretrain', _pretrained,
    validate=lambda c: config_lib.check_dataset('pretrain.dataset', c.pretrain.dataset),
    datasets=lambda c: [c.pretrain.dataset], pretrained_on=lambda c: c.pretrain.dataset,
    trainings=lambda c: [('pretrain.optim', c.pretrain.dataset)]))


# -------------------------------------------------------------------------- checkpoints

def _check_path(config: ml_collections.ConfigDict) -> None:
  path = config.pretrained.path
  if not path:
    config_lib.fail('pretrained.path', path, f'set it to the {config.pretrained.source} '
                    'checkpoint file (--config.pretrained.path=/path/to/file.pth), or use '
                    '--config.pretrained.source=random for a randomly initialised network.')
  if not os.path.isfile(path):
    config_lib.fail('pretrained.path', path, 'no such file; check the path (weights cannot '
                    'be downloaded at run time).')


def checkpoint_source(name: str) -> Source:
  """The source reading `pretrained.path` in a checkpoint format of `checkpoints.SOURCES`.

  Args:
    name: the format (`checkpoints.load_pytorch(source=name)`).

  Returns:
    The source: the pre-trained parts from the file, the parts it lacks (a task's head,
    a CIFAR stem) drawn per seed.
  """
  def start(origin: Origin) -> SeedVariables:
    return functools.lru_cache(maxsize=None)(
        lambda seed: checkpoints.load_pytorch(read_checkpoint(origin.path), origin.model,
                                              source=name, rng=jax.random.key(seed)))

  def load(pretrained: specs.Pretrained, model: Callable[[], Any]) -> dict[str, str]:
    checkpoints.load_pytorch(read_checkpoint(pretrained.path), model(), source=name)
    return {'pretrained.path': workdir_lib.file_sha256(pretrained.path)}

  return Source(name, start, validate=_check_path, load=load)


for _format in checkpoints.SOURCES:
  register(checkpoint_source(_format))


# ----------------------------------------------------------------------------- released

def _release(config: ml_collections.ConfigDict) -> released.Released:
  """The shipped θ_p `pretrained.path` names."""
  if config.pretrained.path not in released.RELEASED:
    config_lib.fail('pretrained.path', config.pretrained.path,
                    f'name a θ_p lth_jax ships (lth_jax.released): one of '
                    f'{tuple(released.RELEASED)}.')
  return released.get(config.pretrained.path)


def _check_release(config: ml_collections.ConfigDict) -> None:
  entry = _release(config)
  for field in ('arch', 'stem', 'width_multiplier'):
    if config.model[field] != getattr(entry, field):
      config_lib.fail(f'model.{field}', config.model[field],
                      f'the released θ_p {entry.name!r} is a {entry.arch} of width '
                      f'{entry.width_multiplier:g} with a {entry.stem} stem: set '
                      f'--config.model.{field}={getattr(entry, field)!r}.')


def _release_at(path: str) -> released.Released:
  """The shipped θ_p whose file is `path` (`Source.path` resolved it from the config)."""
  return next(e for e in released.RELEASED.values() if e.path == path)


def _released_start(origin: Origin) -> SeedVariables:
  if origin.keep_head:  # upstream IMP continues the objective: its format's source
    return get(_release_at(origin.path).format).start(origin)
  # A downstream task's head is drawn per seed, whatever the file's head would fit.
  backbone = {k: v for k, v in checkpoints.backbone_state_dict(
      read_checkpoint(origin.path)).items() if not k.startswith('fc')}
  return functools.lru_cache(maxsize=None)(
      lambda seed: checkpoints.load_pytorch(backbone, origin.model, rng=jax.random.key(seed)))


def _load_release(pretrained: specs.Pretrained, model: Callable[[], Any]) -> dict[str, str]:
  entry = _release_at(pretrained.path)
  digest = workdir_lib.file_sha256(entry.path)
  if digest != entry.sha256:
    raise errors.CheckpointError(
        f'The released θ_p {entry.name!r} ({entry.path}) has SHA-256 {digest}, not the '
        f'{entry.sha256} lth_jax.released records: the file was changed; reinstall lth_jax.')
  checkpoints.load_pytorch(read_checkpoint(entry.path), model(), source=entry.format)
  return {'pretrained.path': digest}


register(Source(
    'released', _released_start, validate=_check_release, load=_load_release,
    path=lambda c: released.get(c.pretrained.path).path if c.pretrained.path else '',
    pretrained_on=lambda c: _release(c).dataset))
