"""Pre-training objectives as registered specs: supervised, SimCLR, MoCo v2.

    spec = objectives.get('moco')    # head 'mlp', views 'moco_v2', evaluator 'knn', ...
    loss = spec.build(objectives.Settings(temperature=0.2, views=views.MOCO_V2))

Modules: `spec` (`ObjectiveSpec`: head, views, evaluator, checkpoint source, loss
builder), `contrastive` (NT-Xent, InfoNCE, MoCo's queue and momentum encoder, the
stateful `SimCLR` and `MoCo` objectives), `views` (SimCLR / MoCo v2 views drawn on the
accelerator). A new objective is one module and one `register` call. May import
`lth_jax.masks`, `lth_jax.training` and `lth_jax.tasks` (supervised pre-training is
classification).
"""

from __future__ import annotations

from lth_jax.objectives.contrastive import MoCo, SimCLR
from lth_jax.objectives.spec import ObjectiveSpec, Settings
from lth_jax.registry import Registry
from lth_jax.tasks.classification import cross_entropy

OBJECTIVES: Registry[ObjectiveSpec] = Registry('objective')


def register(spec: ObjectiveSpec) -> ObjectiveSpec:
  """Adds an objective under `spec.name` (`config.upstream.objective`)."""
  return OBJECTIVES.register(spec.name, spec)


get = OBJECTIVES.get

register(ObjectiveSpec('supervised', head='linear', checkpoint_source='torchvision',
                       evaluator='accuracy', views='', build=lambda s: cross_entropy))
register(ObjectiveSpec(
    'simclr', head='mlp', checkpoint_source='simclr', evaluator='knn', views='simclr',
    build=lambda s: SimCLR(temperature=s.temperature, views=s.views, mean=s.mean, std=s.std)))
register(ObjectiveSpec(
    'moco', head='mlp', checkpoint_source='moco', evaluator='knn', views='moco_v2',
    build=lambda s: MoCo(temperature=s.temperature, momentum=s.momentum,
                         queue_size=s.queue_size, views=s.views, mean=s.mean, std=s.std)))

__all__ = ['OBJECTIVES', 'MoCo', 'ObjectiveSpec', 'Settings', 'SimCLR', 'get', 'register']
