"""The θ_p lth_jax ships: pre-trained once on Animal-MNIST's classes 0-4, one per objective.

    from lth_jax import released
    released.get('moco').path      # the file, in MoCo v2's released format
    --config.pretrained.source=released --config.pretrained.path=moco

Each file is the `theta_p.npz` that `python -m lth_jax.main
--config=configs/pretrain_offline.py:<objective>` (mode 'pretrain') writes, and its
record here is that run's `theta_p.json`: the SHA-256 of the file, and θ_p's weighted
kNN and linear-probe top-1 accuracies on `animal_mnist_a`'s test split. Source 'released' of
`lth_jax.experiments.sources` reads them as a user reads a released checkpoint, after
checking the file's digest. A new one is a file in this folder and one `register` call.
"""

from __future__ import annotations

import dataclasses
import os

from lth_jax import objectives
from lth_jax.registry import Registry

FOLDER = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class Released:
  """One shipped θ_p.

  Attributes:
    name: the registry key (`config.pretrained.path` with source 'released').
    objective: the objective it was pre-trained with (its file is in the objective's
      released format, `format`).
    dataset: the dataset it was pre-trained on.
    arch, stem, width_multiplier: the model it is for (`config.model`).
    epochs: epochs of its pre-training.
    knn_test: its weighted kNN top-1 accuracy on the dataset's test split.
    probe_test: its linear-probe top-1 accuracy there (`objectives.LINEAR_PROBE`).
    sha256: the file's digest.
    file: the file's name in this folder.
  """
  name: str
  objective: str
  dataset: str
  arch: str
  stem: str
  width_multiplier: float
  epochs: int
  knn_test: float
  probe_test: float
  sha256: str
  file: str

  @property
  def path(self) -> str:
    """The file."""
    return os.path.join(FOLDER, self.file)

  @property
  def format(self) -> str:
    """Its checkpoint format: its objective's (a source of `lth_jax.interop.checkpoints`)."""
    return objectives.get(self.objective).checkpoint_source


RELEASED: Registry[Released] = Registry('released θ_p')


def register(entry: Released) -> Released:
  """Adds a shipped θ_p under `entry.name`.

  Args:
    entry: the θ_p, its file in this folder.

  Returns:
    `entry`.
  """
  return RELEASED.register(entry.name, entry)


get = RELEASED.get


def _animal_mnist_a(objective: str, epochs: int, knn_test: float, probe_test: float,
                    sha256: str) -> Released:
  """A θ_p of configs/pretrain_offline.py: ResNet-18, width 1/4, CIFAR stem."""
  return register(Released(
      objective, objective, 'animal_mnist_a', 'resnet18', 'cifar', 0.25, epochs, knn_test,
      probe_test, sha256, f'{objective}_animal_mnist_a.npz'))


_animal_mnist_a('supervised', 15, 0.9725, 0.9799,
                'ddca7e7c874a7eca29e38529bc13ce66d8644670ad7ee5a0df84408caf440d9e')
_animal_mnist_a('simclr', 150, 0.8984, 0.9376,
                '6225afa35b027277da4db8f5e0d57a440e8f9b1d15ba63f077723e7413e3957e')
_animal_mnist_a('moco', 40, 0.8307, 0.9164,
                'c46cbddfe69d662bea65dd2759da529e261d3dbb1d8745753a089d26a5bd0c8c')
