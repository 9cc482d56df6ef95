"""Downstream tasks as registered parts: what each problem needs, behind one interface.

    task = tasks.get('classification')
    model = task.build_model(tasks.ModelSpec('resnet18', stem='cifar'), data.get_info('digits'))

A `Task` gives its model head, training loss, evaluator with a named headline metric
and data transforms (`task`); `classification`, `segmentation` and `detection` are
registered here. A new task is one module with a
`Task` subclass and one `register` call. May import `lth_jax.data`, `lth_jax.models`,
`lth_jax.metrics` and `lth_jax.training`; each task names its headline `Metric` (`metric`, defined in
`lth_jax.metrics.headline`).
"""

from __future__ import annotations

from lth_jax.metrics.headline import Metric
from lth_jax.registry import Registry
from lth_jax.tasks.classification import Classification
from lth_jax.tasks.detection import Detection
from lth_jax.tasks.segmentation import Segmentation
from lth_jax.tasks.task import ModelSpec, Task

TASKS: Registry[Task] = Registry('task')


def register(task: Task) -> Task:
  """Adds a task under `task.name` (datasets name their task)."""
  return TASKS.register(task.name, task)


get = TASKS.get

register(Classification())
register(Segmentation())
register(Detection())

__all__ = ['TASKS', 'Classification', 'Detection', 'Metric', 'ModelSpec', 'Segmentation', 'Task',
           'get', 'register']
