r"""The offline default: a whole ticket search in minutes on a laptop CPU, no downloads.

    python -m lth_jax.main --config=configs/demo.py --workdir=/tmp/lth_demo

1. θ_p: the supervised ResNet-18 (width 1/4, CIFAR stem) lth_jax ships, pre-trained on
   Animal-MNIST's classes 0-4 (`lth_jax.released`, made by
   configs/pretrain_offline.py:supervised), read as a released checkpoint.
2. Downstream IMP on MNIST-5k (shipped too): fine-tune, prune 20% of the surviving
   convolution weights globally by magnitude, rewind to θ_p, repeat.
3. The random-pruning baseline at the same sparsities.
4. results.csv/.json, accuracy_vs_sparsity.png and the extreme matching sparsity.

`configs/demo.py:tiny` is the same pipeline shrunk to about a minute (a random init
instead of θ_p, the 8x8 scikit-learn digits, width 1/8, one epoch per round),
for tests, notebooks and a first look:

    python -m lth_jax.main --config=configs/demo.py:tiny --workdir=/tmp/lth_tiny
"""

from lth_jax.experiments.config import base_config


def get_config(variant: str = ''):
  c = base_config()
  c.mode = 'imp'
  c.pretrained.update(source='released', path='supervised')
  c.model.arch = 'resnet18'
  c.model.stem = 'cifar'
  c.model.width_multiplier = 0.25
  c.data.dataset = 'mnist5k'
  c.data.batch_size = 128
  c.data.eval_batch_size = 500
  c.optim.update(num_epochs=2, learning_rate=0.05, schedule='cosine', warmup_epochs=0,
                 weight_decay=5e-4)
  c.imp.num_rounds = 8                  # up to 79% sparsity
  c.imp.random_baseline = True
  c.num_seeds = 1
  c.dense_seeds = 3
  if variant == 'tiny':
    c.pretrained.update(source='random', path='')
    c.data.dataset = 'digits'
    c.model.width_multiplier = 0.125
    c.data.batch_size = 64
    c.data.eval_batch_size = 64
    c.optim.num_epochs = 1
    c.imp.num_rounds = 3
    c.dense_seeds = 2
  elif variant:
    raise ValueError(f'Unknown demo variant {variant!r}: use configs/demo.py or '
                     'configs/demo.py:tiny.')
  return c
