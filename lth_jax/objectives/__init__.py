"""Pre-training objectives as registered specs: supervised, SimCLR, MoCo v2.

    spec = objectives.get('moco')    # head PROJECTION, evaluator KNN_TOP1, views 'moco_v2'
    loss = spec.build(objectives.Settings(temperature=0.2, views=views.MOCO_V2))

Modules: `spec` (`ObjectiveSpec`: head, views, per-round metric, checkpoint source, loss
builder; the heads `LINEAR`, `PROJECTION` and the metrics `HEAD_TOP1`, `KNN_TOP1`,
`LINEAR_PROBE`), `contrastive` (NT-Xent, InfoNCE, MoCo's queue and momentum encoder, the
stateful `SimCLR` and `MoCo` objectives), `views` (SimCLR / MoCo v2 views drawn on the
accelerator). A new objective is one module and one `register` call. May import
`lth_jax.masks`, `lth_jax.training` and `lth_jax.tasks` (supervised pre-training is
classification).
"""

from __future__ import annotations

from lth_jax.objectives.contrastive import MoCo, SimCLR
from lth_jax.objectives.spec import (HEAD_TOP1, KNN_TOP1, LINEAR, LINEAR_PROBE, PROJECTION,
                                     EvalData, Head, ObjectiveSpec, RoundMetric, Settings)
from lth_jax.registry import Registry
from lth_jax.tasks.classification import cross_entropy

OBJECTIVES: Registry[ObjectiveSpec] = Registry('objective')


def register(spec: ObjectiveSpec) -> ObjectiveSpec:
  """Adds an objective under `spec.name` (`config.upstream.objective`)."""
  return OBJECTIVES.register(spec.name, spec)


get = OBJECTIVES.get

register(ObjectiveSpec('supervised', head=LINEAR, checkpoint_source='torchvision',
                       evaluator=HEAD_TOP1, views='', build=lambda s: cross_entropy))
register(ObjectiveSpec(
    'simclr', head=PROJECTION, checkpoint_source='simclr', evaluator=KNN_TOP1, views='simclr',
    build=lambda s: SimCLR(temperature=s.temperature, views=s.views, mean=s.mean, std=s.std)))
register(ObjectiveSpec(
    'moco', head=PROJECTION, checkpoint_source='moco', evaluator=KNN_TOP1, views='moco_v2',
    build=lambda s: MoCo(temperature=s.temperature, momentum=s.momentum,
                         queue_size=s.queue_size, views=s.views, mean=s.mean, std=s.std),
    queue=True))

__all__ = ['HEAD_TOP1', 'KNN_TOP1', 'LINEAR', 'LINEAR_PROBE', 'OBJECTIVES', 'PROJECTION',
           'EvalData', 'Head', 'MoCo', 'ObjectiveSpec', 'RoundMetric', 'Settings', 'SimCLR', 'get',
           'register']
