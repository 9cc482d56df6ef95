r"""The θ_p lth_jax ships: one pre-training on Animal-MNIST's classes 0-4 per objective.

    python -m lth_jax.main --config=configs/pretrain_offline.py:supervised --workdir=/tmp/theta_supervised
    python -m lth_jax.main --config=configs/pretrain_offline.py:simclr --workdir=/tmp/theta_simclr
    python -m lth_jax.main --config=configs/pretrain_offline.py:moco --workdir=/tmp/theta_moco

Each pre-trains a ResNet-18 (width 1/4, CIFAR stem) on `animal_mnist_a` with the
objective's offline recipe (supervised: SGD 0.05, 15 epochs; SimCLR: LARS 0.5,
temperature 0.5, 150 epochs; MoCo v2: SGD 0.06, temperature 0.2, queue 2,048, momentum
0.99, 40 epochs; batch 128, cosine schedule), measures its kNN and linear-probe top-1
accuracies on the test split, and writes `theta_p.npz` in the objective's released format (torchvision,
SimCLR, MoCo v2) with its SHA-256 in `theta_p.json`. The files shipped in
`lth_jax/released/` are these commands' output (`lth_jax.released`); the offline studies
read them as released checkpoints. `:<objective>,tiny` is a smoke run (digits, 1 epoch).
"""

from lth_jax.experiments import presets


def get_config(variant: str = 'supervised'):
  objective, _, size = variant.partition(',')
  return presets.released_pretraining(objective, size)
