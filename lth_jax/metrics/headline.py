"""A task's headline metric: what picks the best epoch, judges matching and names results.

    MIOU = Metric('miou', 'mIoU', 'miou')      # test_miou, miou_vs_sparsity.png
    metric = task.headline(dataset)            # with its chance level where the task knows it

The lottery engines and the results tables read a metric's fields (`key`, `label`,
`file`, `chance`, `test`) and know no metric of their own; each task names its own
(`lth_jax.tasks`). A leaf module (it imports nothing of lth_jax), so that what reads
results back, e.g. `lth_jax.analysis`, can name a metric without loading the tasks.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Metric:
  """A task's headline metric, as results name it.

  Attributes:
    key: the evaluator's key and the suffix of result fields ('accuracy' ->
      'test_accuracy', 'val_accuracy', 'test_accuracy_std').
    label: how tables and plots call it ('accuracy', 'mIoU', 'mAP@0.5').
    file: the plot's file name stem ('accuracy' -> accuracy_vs_sparsity.png).
    chance: the value a network that did not learn scores (accuracy on n classes:
      1 / n; see `lth_jax.tasks.Task.headline`), or None where it is not known (mIoU,
      mAP).
  """
  key: str
  label: str
  file: str
  chance: float | None = None

  @property
  def test(self) -> str:
    """The result field of the test value, e.g. 'test_accuracy'."""
    return f'test_{self.key}'
