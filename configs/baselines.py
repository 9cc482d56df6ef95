r"""Baselines for tickets: random pruning, random re-initialisation, one-shot magnitude.

    # Random pruning as an IMP branch (random 20% of survivors each round, rewound to θ_p):
    python -m lth_jax.main --config=configs/baselines.py:random --workdir=/tmp/lth_random \
        --config.pretrained.path=/path/to/resnet50.pth --config.data.dataset=cifar10

    # Layer-wise random pruning matched to each ticket of an IMP run (each layer's mask
    # shuffled), random re-initialisation of the tickets, or random global positions:
    python -m lth_jax.main --config=configs/baselines.py:random_layerwise \
        --workdir=/tmp/lth_rl --config.pretrained.path=/path/to/resnet50.pth \
        --config.transfer.imp_workdir=/tmp/lth_tv_c10/magnitude --config.transfer.datasets=cifar10
    (likewise :reinit and :random_global)

    # One-shot magnitude pruning (OMP) of θ_p straight to each grid sparsity 1 - 0.8^k:
    python -m lth_jax.main --config=configs/baselines.py:omp --workdir=/tmp/lth_omp \
        --config.pretrained.path=/path/to/resnet50.pth --config.transfer.datasets=cifar10
"""

from lth_jax.experiments.config import base_config

BASELINES = ('random', 'random_layerwise', 'random_global', 'reinit', 'omp')


def get_config(baseline: str = 'random'):
  if baseline not in BASELINES:
    raise ValueError(f'Unknown baseline {baseline!r}; use configs/baselines.py:<name> with '
                     f'one of {BASELINES}.')
  c = base_config()
  c.pretrained.source = 'torchvision'
  if baseline == 'random':
    c.mode = 'imp'
    c.imp.pruning = 'random'
    c.dense_seeds = 3
  else:
    c.mode = 'transfer'
    c.transfer.variant = baseline
    c.transfer.omp_rounds = 16
    c.num_seeds = 3
  return c
