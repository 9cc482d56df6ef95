"""Presets the package itself builds on: upstream experiments, canvas studies, recipes.

    sub = presets.upstream_imp('moco', 'demo')           # configs/moco_imp.py:demo
    c = presets.canvas_study('digit_canvas_seg', 'tiny')  # segmentation_offline.py:tiny
    c = presets.released_pretraining('moco')              # configs/pretrain_offline.py:moco
    part = presets.one_task(paper_config, 'animal_canvas_seg_few')

Config files import these (configs/{supervised,simclr,moco}_imp.py, configs/paper_offline.py,
configs/{segmentation,detection}_offline.py); paper mode sizes each pre-training's
upstream experiment from `upstream_imp(objective, 'demo')`: an objective's recipe
(`UPSTREAM`) in the shape of the paper's experiment (`paper_setting`) or its offline
miniature (`demo_setting`). Nothing here reads a file from configs/, so the package
never depends on a checkout's config files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from lth_jax import objectives
from lth_jax.experiments.config import base_config, split_names


@dataclasses.dataclass(frozen=True)
class UpstreamRecipe:
  """One objective's upstream IMP recipe, on ImageNet (the paper's) and offline (`:demo`'s).

  Attributes:
    optimizer: the optimizer (`config.optim.optimizer`) of both.
    paper: the optimizer fields of the paper's rounds (learning rate, weight decay).
    demo: those of the `:demo` variant's rounds and of θ_p's pre-training in its workdir.
    fields: the objective's own `config.upstream` fields (a temperature, ...), set
      before `demo_setting`, which may override them offline.
  """
  optimizer: str
  paper: Mapping[str, Any]
  demo: Mapping[str, Any]
  fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# objective -> its recipe (the paper's m_Img, m_SimCLR and m_MoCo tickets).
UPSTREAM = {
    'supervised': UpstreamRecipe(
        'sgd', paper=dict(learning_rate=1e-4, weight_decay=1e-4),
        demo=dict(learning_rate=0.05, weight_decay=5e-4)),
    'simclr': UpstreamRecipe(
        'lars', paper=dict(learning_rate=1e-4, weight_decay=1e-06),
        demo=dict(learning_rate=0.5, weight_decay=1e-06),
        # The converted SimCLR checkpoints take [0, 1] pixels.
        fields=dict(temperature=0.5, normalize=False)),
    'moco': UpstreamRecipe(
        'sgd', paper=dict(learning_rate=3e-4, weight_decay=1e-4),
        demo=dict(learning_rate=0.06, weight_decay=5e-4), fields=dict(temperature=0.2)),
}


def paper_setting(c: ml_collections.ConfigDict, objective: str) -> ml_collections.ConfigDict:
  """The paper's upstream experiment around an objective's recipe (`presets.UPSTREAM`).

  ResNet-50 (ImageNet stem) on imagenet2012, batch 256, 10 epochs per round at a
  constant learning rate, the first mask one-shot pruned from θ_p, 18 masks (20% to
  98.2% sparsity).

  Args:
    c: a base config.
    objective: the registered objective (θ_p is its released checkpoint, read as its
      spec's `checkpoint_source`).

  Returns:
    `c`, updated.
  """
  c.mode = 'upstream'
  c.upstream.objective = objective
  c.pretrained.source = objectives.get(objective).checkpoint_source
  c.model.update(arch='resnet50', stem='imagenet')
  c.data.update(dataset='imagenet2012', batch_size=256)
  c.upstream.knn_bank_size = 100_000
  c.optim.update(schedule='constant', warmup_epochs=0, num_epochs=10, momentum=0.9)
  c.imp.update(num_rounds=18, prune_first=True)
  return c


def demo_setting(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The offline version of `paper_setting`: Animal-MNIST, a small ResNet-18, minutes.

  θ_p is pre-trained with the objective in the workdir (so it sees normalised inputs,
  as every transfer of it does), ResNet-18 of width 1/4 with a CIFAR stem, batch 128,
  5 rounds of one epoch; MoCo's queue and momentum and the views fitted to 28-pixel
  images and a few hundred steps.

  Args:
    c: a config set up by `paper_setting`.

  Returns:
    `c`, updated.
  """
  c.pretrained.source = 'pretrain'
  c.pretrain.dataset = c.data.dataset = 'animal_mnist'
  c.model.update(arch='resnet18', stem='cifar', width_multiplier=0.25)
  c.data.batch_size = 128
  c.upstream.update(normalize=True, knn_bank_size=0, queue_size=2048,
                    # 0.999 suits ImageNet's 5k steps per epoch; a few hundred steps need
                    # a faster key encoder (the usual CIFAR-scale MoCo setting).
                    moco_momentum=0.99,
                    # A blur of sigma 0.1-2 px is meant for 224 px images (SimCLR drops
                    # it on CIFAR).
                    blur=False)
  c.pretrain.optim.update(schedule='cosine', warmup_epochs=0, num_epochs=6, momentum=0.9)
  c.optim.num_epochs = 1
  c.imp.num_rounds = 5
  return c


def upstream_imp(objective: str, variant: str = '') -> ml_collections.ConfigDict:
  """Upstream IMP on a pre-training objective: configs/<objective>_imp.py[:variant].

  Args:
    objective: a key of `UPSTREAM`.
    variant: '' (the paper's: ResNet-50 on ImageNet from the released checkpoint) or
      'demo' (Animal-MNIST, a small ResNet-18, θ_p pre-trained in the workdir).

  Returns:
    The config (mode 'upstream').

  Raises:
    ValueError: an unknown objective or variant.
  """
  if objective not in UPSTREAM:
    raise ValueError(f'No upstream recipe for {objective!r}; choose one of {tuple(UPSTREAM)}.')
  if variant not in ('', 'demo'):
    raise ValueError(f'Unknown variant {variant!r}: use configs/{objective}_imp.py for the '
                     f'paper or configs/{objective}_imp.py:demo for the offline demo.')
  recipe = UPSTREAM[objective]
  c = paper_setting(base_config(), objective)
  c.upstream.update(recipe.fields)
  c.optim.update(optimizer=recipe.optimizer, **recipe.paper)
  if variant == 'demo':
    demo_setting(c)
    for optim in (c.optim, c.pretrain.optim):
      optim.update(optimizer=recipe.optimizer, **recipe.demo)
  return c


# Epochs of the released θ_p's pre-training (`released_pretraining`), per objective: the
# contrastive objectives need more to become good representations.
RELEASED_EPOCHS = {'supervised': 15, 'simclr': 150, 'moco': 40}


def released_pretraining(objective: str, variant: str = '') -> ml_collections.ConfigDict:
  """The pre-training of a θ_p lth_jax ships: configs/pretrain_offline.py:<objective>.

  The offline upstream recipe of the objective (`upstream_imp(objective, 'demo')`: its
  optimizer, learning rate, views, temperature and queue) on Animal-MNIST's classes 0-4,
  ResNet-18 of width 1/4 with a CIFAR stem, batch 128, for `RELEASED_EPOCHS` epochs of a
  cosine schedule; mode 'pretrain' measures it and writes the released checkpoint.

  Args:
    objective: a key of `UPSTREAM`.
    variant: '' or 'tiny' (the scikit-learn digits, width 1/8, one epoch: a smoke run).

  Returns:
    The config (mode 'pretrain').

  Raises:
    ValueError: an unknown objective or variant.
  """
  if variant not in ('', 'tiny'):
    raise ValueError(f'Unknown variant {variant!r}: use configs/pretrain_offline.py:'
                     f'{objective} or configs/pretrain_offline.py:{objective},tiny.')
  c = upstream_imp(objective, 'demo')
  c.mode = 'pretrain'
  c.pretrain.dataset = c.data.dataset = 'animal_mnist_a'
  c.pretrain.optim.num_epochs = RELEASED_EPOCHS[objective]
  if variant == 'tiny':
    c.pretrain.dataset = c.data.dataset = 'digits'
    c.model.width_multiplier = 0.125
    c.data.batch_size = c.data.eval_batch_size = 64
    c.upstream.queue_size = 256
    c.pretrain.optim.num_epochs = 1
  return c


# The digit canvases' heads and recipes: DeepLabV3+ as narrow as the backbone with the
# reference's segmentation optimizer (`learning_rate` is the backbone's, the head at 10x),
# YOLOv4's neck at the backbone's widths with the reference's SGD, each for an epoch or
# two: a smoke run's budget, far from trained (benchmarks/dense_convergence.py trains them).
DIGIT_CANVAS_RECIPES = {
    'digit_canvas_seg': {
        'model': {'output_stride': 16, 'head_channels': 32, 'low_level_channels': 8},
        'data': {'batch_size': 16},
        'optim': {'optimizer': 'sgd', 'learning_rate': 0.01, 'head_lr_scale': 10.0,
                  'momentum': 0.9, 'weight_decay': 1e-4, 'schedule': 'poly', 'power': 0.9,
                  'warmup_epochs': 0, 'num_epochs': 2}},
    'digit_canvas_det': {
        'model': {'neck_width': 1 / 32},  # (16, 32, 64) channels: the backbone's widths
        'data': {'batch_size': 8},
        'optim': {'optimizer': 'sgd', 'learning_rate': 0.01, 'momentum': 0.9,
                  'weight_decay': 5e-4, 'schedule': 'cosine', 'final_learning_rate': 1e-4,
                  'warmup_epochs': 0, 'num_epochs': 1}},
}


def canvas_study(task: str, variant: str) -> ml_collections.ConfigDict:
  """A dense-prediction transfer study on digit canvases, θ_p pre-trained in the workdir.

  θ_p of a ResNet-18 (width 1/8, CIFAR stem) pre-trained on Animal-MNIST's classes 0-4 by
  every objective, upstream tickets at 20% (one-shot from θ_p) and 36%, the 36% ones
  transferred to `task` with its head and recipe (`DIGIT_CANVAS_RECIPES`) beside training
  from scratch, random global pruning and task-specific IMP at 20% and 36%, 2 seeds:
  what configs/{segmentation,detection}_offline.py ran until they became the paper run's
  parts. `variant='tiny'` is their `:tiny` smoke run (the scikit-learn digits, the
  supervised θ_p only, `<task>_small`, one seed, 3 epochs); benchmarks/dense_convergence.py
  trains `variant=''`'s θ_p and networks, dense only.

  Args:
    task: 'digit_canvas_seg' or 'digit_canvas_det'.
    variant: '' or 'tiny'.

  Returns:
    The study's config (mode 'paper').

  Raises:
    ValueError: an unknown variant.
  """
  if variant not in ('', 'tiny'):
    raise ValueError(f'Unknown variant {variant!r} of the canvas study: use \'\' or \'tiny\'.')
  c = base_config()
  c.mode = 'paper'
  c.pretrained.source = 'pretrain'
  c.pretrain.dataset = 'animal_mnist_a'
  c.data.dataset = c.paper.tasks = task
  c.model.arch = 'resnet18'
  c.model.stem = 'cifar'
  c.model.width_multiplier = 0.125
  c.data.eval_batch_size = 64
  c.pretrain.optim.num_epochs = 3
  c.imp.num_rounds = 2                  # upstream rounds: 20% (one-shot from θ_p), 36%
  c.paper.upstream_epochs = 1
  c.paper.transfer_every = 2            # the upstream tickets at 36%
  c.paper.task_imp_rounds = 3           # task-specific tickets at 20% and 36%
  c.paper.random_baselines = 'random_global'
  c.num_seeds = 2
  c.update(DIGIT_CANVAS_RECIPES[task])  # merged into each section, field by field
  if variant == 'tiny':
    c.pretrain.dataset = 'digits'
    c.data.dataset = c.paper.tasks = f'{task}_small'
    c.paper.pretrainings = 'supervised'
    c.pretrain.optim.num_epochs = 1
    c.paper.task_imp_rounds = 2
    c.num_seeds = 1
    c.data.batch_size = 8
    c.optim.num_epochs = 3
  return c


def one_task(config: ml_collections.ConfigDict, task: str) -> ml_collections.ConfigDict:
  """A paper config's part on one of its tasks: the same upstream, that task only.

  A workdir of the part is the whole config's too: rerun there with the whole config,
  the part's upstream tickets and runs are read back, not trained again (a paper
  workdir's tasks may change while the ones dropped have no runs). So every other field
  stays the whole's, the first task's too (`data.dataset`, `optim`): the workdir records
  them.

  Args:
    config: a paper config with `task` among `paper.tasks`; changed in place.
    task: the task to keep, with its recipe (`paper.task_recipes.<task>`), if any.

  Returns:
    `config`, its `paper.tasks` that task alone.

  Raises:
    ValueError: `task` is not one of the config's tasks.
  """
  tasks = split_names(config.paper.tasks)
  if task not in tasks:
    raise ValueError(f'{task!r} is not one of the tasks {tasks} of the paper config.')
  config.paper.tasks = task
  config.paper.task_recipes = {
      name: recipe.to_dict() for name, recipe in config.paper.task_recipes.items()
      if name == task}
  return config


# The digit canvases of each few-shot dense task's smoke run (`dense_study`'s `:tiny`).
SMOKE_CANVASES = {'animal_canvas_seg_few': 'digit_canvas_seg',
                  'animal_a_canvas_det_few': 'digit_canvas_det'}


def dense_study(task: str, variant: str,
                whole: Callable[[], ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """The offline study of a few-shot dense task: the paper run's part on it, or a smoke run.

  What configs/segmentation_offline.py and configs/detection_offline.py give.

  Args:
    task: the few-shot dense task (a key of `SMOKE_CANVASES`).
    variant: '' (the part of `whole()` on `task`, see `one_task`) or 'tiny' (the smoke
      run on its digit canvases, see `canvas_study`).
    whole: the paper config the part is of (configs/paper_offline.py:all_tasks, which
      the config file loads: nothing here reads configs/).

  Returns:
    The config (mode 'paper').

  Raises:
    ValueError: an unknown variant.
  """
  if variant == 'tiny':
    return canvas_study(SMOKE_CANVASES[task], variant)
  if variant:
    raise ValueError(f'Unknown variant {variant!r}: use the config without one, or :tiny.')
  return one_task(whole(), task)


# The few-shot dense tasks' recipes at the shipped θ_p's width (1/4), over
# configs/paper_offline.py's: the digit canvases' segmentation optimizer
# (`DIGIT_CANVAS_RECIPES`) with the epochs few canvases need and its DeepLabV3+ head;
# their detection SGD with more epochs, a warm-up and a slower backbone (below), and
# YOLO's heads without their neck.
# Segmentation's 200 canvases take 30 epochs (at 20, SimCLR's θ_p stayed under 50% mIoU).
# Detection is on the upstream classes 0-4 (as VOC's classes are ImageNet's): 100 canvases
# for 60 epochs, the first 8 a warm-up, with the heads on the backbone's stages
# (`neck='none'`, heads 1/16 of the reference's widths, the backbone's): behind the
# reference's SPP + PANet neck, some 30 layers from random weights, no θ_p beat scratch on
# any detection canvases tried (README, "The paper in miniature": the gaps measured with each).
# The heads learn at 0.01 and the backbone at a fifth of it, as DeepLab's head learns 10x
# faster than its backbone: at 0.01 for both, θ_SimCLR's gain over scratch sat on its bar.
# benchmarks/pretraining_gap.py measures the pre-training gap with them, and
# `configs/paper_offline.py:all_tasks` trains its dense tasks with them
# (`config.paper.task_recipes`).
FEW_SHOT_RECIPES = {
    'animal_canvas_seg_few': {
        'model': {'output_stride': 16, 'head_channels': 32, 'low_level_channels': 8},
        'data': {'batch_size': 16, 'eval_batch_size': 64},
        'optim': {'optimizer': 'sgd', 'learning_rate': 0.01, 'head_lr_scale': 10.0,
                  'momentum': 0.9, 'weight_decay': 1e-4, 'schedule': 'poly', 'power': 0.9,
                  'warmup_epochs': 0, 'num_epochs': 30}},
    'animal_a_canvas_det_few': {
        'model': {'neck': 'none', 'neck_width': 1 / 16},
        'data': {'batch_size': 8, 'eval_batch_size': 64},
        'optim': {'optimizer': 'sgd', 'learning_rate': 0.002, 'head_lr_scale': 5.0,
                  'momentum': 0.9, 'weight_decay': 5e-4, 'schedule': 'cosine',
                  'final_learning_rate': 1e-4, 'warmup_epochs': 8, 'num_epochs': 60}},
}
