"""`train.fit` bound to a dataset, an objective and a recipe: IMP's `Finetune`.

    finetune = make_finetune(config, model, 'mnist5k', mesh)
    fit = finetune(variables, masks, seed=0, checkpoint_dir=DIR)
    theta_p = pretrain_once(workdir, like, finetune, seed=0, description='...')

Downstream fine-tuning uses the dataset's own augmented, normalised batches and
classification accuracy; the contrastive objectives of `lth_jax.upstream` get raw
[0, 1] images (they draw their views on the device) and their own evaluator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from lth_jax import console, data, imp, sharding, train, tree_io
from lth_jax.errors import DivergenceError


def previous_round_dir(checkpoint_dir: str) -> str | None:
  """The same seed's checkpoint folder of the previous IMP round, if it exists.

  Args:
    checkpoint_dir: e.g. RUN/round_03/seed_0 (the layout of `lth_jax.imp`).

  Returns:
    RUN/round_02/seed_0, or None for round 0, outside an IMP run, or when absent.
  """
  seed_dir = os.path.basename(os.path.normpath(checkpoint_dir))
  round_dir = os.path.dirname(os.path.normpath(checkpoint_dir))
  name = os.path.basename(round_dir)
  if not name.startswith('round_') or not name[6:].isdigit() or int(name[6:]) == 0:
    return None
  previous = os.path.join(os.path.dirname(round_dir), f'round_{int(name[6:]) - 1:02d}',
                          seed_dir)
  return previous if os.path.isdir(previous) else None


def make_finetune(config: ml_collections.ConfigDict, model: Any, dataset: str, mesh: Mesh,
                  optim: ml_collections.ConfigDict | None = None, *,
                  objective: train.Objective | train.StatefulObjective = (
                      train.cross_entropy_objective),
                  evaluator: train.Evaluator | None = None, raw_images: bool = False,
                  image_size: int | None = None, carry_state: bool = False) -> imp.Finetune:
  """Binds `train.fit` to a dataset and recipe (see `lth_jax.imp.Finetune`).

  Args:
    config: the experiment config (its `data` and `checkpoint_every_steps` fields).
    model: the Flax module.
    dataset: the dataset to train and evaluate on.
    mesh: the device mesh.
    optim: the recipe (default `config.optim`).
    objective: the training loss (default: cross-entropy on the labels).
    evaluator: the per-epoch metric (default: classification accuracy on `dataset`).
    raw_images: feed unaugmented, unnormalised [0, 1] training images (objectives
      that augment on the device).
    image_size: side of the training images (None: the dataset's).
    carry_state: start each IMP round from the previous round's final optimizer (and
      objective) state instead of a fresh one, as the reference does upstream.

  Returns:
    finetune(variables, masks, *, seed, checkpoint_dir, rewind_step=None) -> FitResult.
  """
  from clu import metric_writers

  optim = config.optim if optim is None else optim
  batch_size, eval_batch_size = config.data.batch_size, config.data.eval_batch_size
  data_dir = config.data.data_dir
  dataset = data.get_info(dataset, val_from_train=config.data.val_from_train)
  steps = data.steps_per_epoch(dataset, batch_size)

  def finetune(variables, masks, *, seed, checkpoint_dir, rewind_step=None):
    writer = metric_writers.create_default_writer(
        checkpoint_dir.rstrip('/') + '_tensorboard', just_logging=not sharding.is_chief(),
        asynchronous=False)
    try:
      return train.fit(
          model, variables, masks, optim,
          train_batches=lambda epoch, start: data.train_batches(
              dataset, batch_size=batch_size, epoch=epoch, seed=seed, data_dir=data_dir,
              start_step=start, augment=not raw_images, normalize=not raw_images,
              image_size=image_size),
          eval_batches=lambda split: data.eval_batches(
              dataset, split, batch_size=eval_batch_size, data_dir=data_dir),
          steps_per_epoch=steps, checkpoint_dir=checkpoint_dir, mesh=mesh,
          objective=objective, writer=writer,
          checkpoint_every_steps=config.checkpoint_every_steps or None,
          rewind_step=rewind_step, rng=jax.random.key(seed), evaluator=evaluator,
          carry_from=previous_round_dir(checkpoint_dir) if carry_state else None)
    finally:
      writer.close()

  return finetune


def pretrain_once(workdir: str, like: Mapping[str, Any], finetune: imp.Finetune, *,
                  seed: int, description: str) -> dict[str, Any]:
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
  path = os.path.join(workdir, 'pretrain', 'variables')
  like = jax.device_get(dict(like))
  if not os.path.exists(path):
    console.say(f'Pre-training θ_p: {description} (cached in {path}).')
    try:
      fit = finetune(like, None, seed=seed,
                     checkpoint_dir=os.path.join(workdir, 'pretrain', 'train'))
    except DivergenceError as e:
      raise e.within(f'pre-training θ_p ({description})') from None
    console.say(f'Pre-training done: test accuracy {fit.test_accuracy:.4f}.')
    tree_io.save(path, fit.variables)
  return tree_io.load(path, like)
