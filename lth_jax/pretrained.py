"""θ_p for a task's model: a PyTorch checkpoint, a random init, or pre-training in the workdir.

    model = build_model(config, 'mnist5k')
    theta_p = pretrained_variables(config, model, 'mnist5k', workdir, mesh)

`config.pretrained.source` picks where θ_p comes from; the task's model always gets a
fresh classification head, as in the reference's downstream fine-tuning.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections

from lth_jax import convert, data, finetune as finetune_lib, train
from lth_jax.models import create_model, init_variables


def build_model(config: ml_collections.ConfigDict, dataset: str) -> Any:
  """The configured ResNet sized for a dataset (classes, input channels).

  Args:
    config: the experiment config (its `model` fields).
    dataset: dataset name.

  Returns:
    The Flax module.
  """
  info = data.get_info(dataset)
  return create_model(
      config.model.arch, num_classes=info.num_classes, stem=config.model.stem,
      in_channels=info.image_shape[-1], width_multiplier=config.model.width_multiplier,
      dtype=train.compute_dtype(config.model.half_precision))


def transplant(backbone: Mapping[str, Any], model: Any, rng: jax.Array) -> dict[str, Any]:
  """θ_p on a task's model: the backbone's weights and a fresh head (as the reference).

  Args:
    backbone: {'params', 'batch_stats'} of a ResNet of the same arch and width (any
      head: its `fc` weights are dropped).
    model: the task's model.
    rng: PRNG key of the fresh head.

  Returns:
    {'params', 'batch_stats'} as numpy trees.
  """
  state_dict = {k: v for k, v in convert.to_pytorch(backbone).items()
                if not k.startswith('fc')}
  return convert.load_pytorch(state_dict, model, rng=rng)


def _pretrain(config: ml_collections.ConfigDict, workdir: str, mesh: Any) -> dict[str, Any]:
  """Supervised pre-training on `config.pretrain.dataset`, cached in the workdir."""
  dataset = config.pretrain.dataset
  model = build_model(config, dataset)
  like = init_variables(model, jax.random.key(config.seed), data.get_info(dataset).image_shape[0])
  return finetune_lib.pretrain_once(
      workdir, like, finetune_lib.make_finetune(config, model, dataset, mesh,
                                                optim=config.pretrain.optim),
      seed=config.seed, description=f'{config.model.arch} on {dataset} for '
      f'{config.pretrain.optim.num_epochs} epochs')


@functools.lru_cache(maxsize=2)
def read_checkpoint(path: str) -> dict[str, Any]:
  """The state dict of a checkpoint file, read once per process.

  One read serves every seed's θ_p (only the fresh parts differ between seeds).

  Args:
    path: a file `lth_jax.convert.read_state_dict` reads.

  Returns:
    The flat state dict.
  """
  return convert.read_state_dict(path)


def pretrained_variables(config: ml_collections.ConfigDict, model: Any, dataset: str,
                         workdir: str, mesh: Any, seed: int | None = None) -> dict[str, Any]:
  """θ_p for a task's model, with the task's fresh head.

  The pre-trained parts are the same for every seed; the parts the source does not
  provide (the task's head; the stem conv of a CIFAR-stem model loading an ImageNet
  checkpoint) are drawn from `seed`, so that runs with different seeds are independent
  runs from θ_p. A random init (source 'random', the classic LTH θ_0) is itself the
  rewind point and does not depend on the seed.

  Args:
    config: the experiment config (`pretrained`, `pretrain`, `seed`).
    model: the task's model.
    dataset: the task (for the input size of a random init).
    workdir: the experiment's workdir (for the 'pretrain' source's cache).
    mesh: the device mesh.
    seed: the fine-tuning seed whose fresh parts to draw (None: `config.seed`).

  Returns:
    {'params', 'batch_stats'} as numpy trees.
  """
  source = config.pretrained.source
  if source == 'random':
    return jax.device_get(init_variables(model, jax.random.key(config.seed),
                                         data.get_info(dataset).image_shape[0]))
  rng = jax.random.key(config.seed if seed is None else seed)
  if source == 'pretrain':
    return transplant(_pretrain(config, workdir, mesh), model, rng)
  return convert.load_pytorch(read_checkpoint(config.pretrained.path), model, source=source,
                              rng=rng)


def per_seed(config: ml_collections.ConfigDict, model: Any, dataset: str, workdir: str,
             mesh: Any) -> Callable[[int], dict[str, Any]]:
  """`pretrained_variables` as a function of the seed, each seed's variables made once.

  Args:
    config: the experiment config.
    model: the task's model.
    dataset: the task.
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    seed -> {'params', 'batch_stats'} (see `pretrained_variables`).
  """
  return functools.lru_cache(maxsize=None)(
      lambda seed: pretrained_variables(config, model, dataset, workdir, mesh, seed=seed))
