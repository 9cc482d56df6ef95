"""Presets the package itself builds on: the upstream recipes and the canvas studies.

    sub = presets.upstream_imp('moco', 'demo')       # configs/moco_imp.py:demo
    c = presets.canvas_study('digit_canvas_seg', '')  # what the canvas configs share

Config files import these (configs/{supervised,simclr,moco}_imp.py,
configs/{segmentation,detection}_offline.py); paper mode sizes each pre-training's
upstream experiment from `upstream_imp(objective, 'demo')`. Nothing here reads a file
from configs/, so the package never depends on a checkout's config files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from lth_jax.experiments import upstream
from lth_jax.experiments.config import base_config


@dataclasses.dataclass(frozen=True)
class UpstreamRecipe:
  """One objective's upstream IMP recipe, on ImageNet (the paper's) and offline (the demo's).

  Attributes:
    optimizer: the optimizer (`config.optim.optimizer`) of both.
    paper: the optimizer fields of the paper's rounds (learning rate, weight decay).
    demo: those of the demo's rounds and of θ_p's pre-training in the workdir.
    fields: the objective's own `config.upstream` fields (a temperature, ...), set
      before `upstream.demo_setting`, which may override them offline.
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
  c = upstream.paper_setting(base_config(), objective)
  c.upstream.update(recipe.fields)
  c.optim.update(optimizer=recipe.optimizer, **recipe.paper)
  if variant == 'demo':
    upstream.demo_setting(c)
    for optim in (c.optim, c.pretrain.optim):
      optim.update(optimizer=recipe.optimizer, **recipe.demo)
  return c


def canvas_study(task: str, variant: str) -> ml_collections.ConfigDict:
  """The paper's dense-prediction transfer study in miniature, on digit canvases.

  What configs/segmentation_offline.py and configs/detection_offline.py share: θ_p of a
  ResNet-18 (width 1/8, CIFAR stem) pre-trained on Animal-MNIST's classes 0-4 by every
  objective, upstream tickets at 20% (one-shot from θ_p) and 36%, the 36% ones
  transferred to `task` beside training from scratch, random global pruning and
  task-specific IMP at 20% and 36%, 2 seeds; `:tiny` is the tests' smoke run on the
  scikit-learn digits and `<task>_small`, one seed. The files add their head and recipe.

  Args:
    task: 'digit_canvas_seg' or 'digit_canvas_det'.
    variant: '' or 'tiny'.

  Returns:
    The study's config (mode 'paper').

  Raises:
    ValueError: an unknown variant.
  """
  if variant not in ('', 'tiny'):
    raise ValueError(f'Unknown variant {variant!r}: use the config without one, or :tiny.')
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
  if variant == 'tiny':
    c.pretrain.dataset = 'digits'
    c.data.dataset = c.paper.tasks = f'{task}_small'
    c.pretrain.optim.num_epochs = 1
    c.paper.task_imp_rounds = 2
    c.num_seeds = 1
  return c
