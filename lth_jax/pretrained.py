"""θ_p for a task's model: a PyTorch checkpoint, a random init, or pre-training in the workdir.

    model = build_model(config, 'mnist5k')
    theta_p = pretrained_variables(config, model, 'mnist5k', workdir, mesh)

`config.pretrained.source` picks where θ_p comes from; the task's model always gets a
fresh classification head, as in the reference's downstream fine-tuning.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def pretrained_variables(config: ml_collections.ConfigDict, model: Any, dataset: str,
                         workdir: str, mesh: Any) -> dict[str, Any]:
  """θ_p for a task's model, with the task's fresh head.

  Args:
    config: the experiment config (`pretrained`, `pretrain`, `seed`).
    model: the task's model.
    dataset: the task (for the input size of a random init).
    workdir: the experiment's workdir (for the 'pretrain' source's cache).
    mesh: the device mesh.

  Returns:
    {'params', 'batch_stats'} as numpy trees.
  """
  rng = jax.random.key(config.seed)
  source = config.pretrained.source
  if source == 'random':
    return jax.device_get(init_variables(model, rng, data.get_info(dataset).image_shape[0]))
  if source == 'pretrain':
    return transplant(_pretrain(config, workdir, mesh), model, rng)
  return convert.load_pytorch(config.pretrained.path, model, source=source, rng=rng)
