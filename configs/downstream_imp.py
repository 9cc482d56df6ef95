r"""Downstream IMP (the reference's `pt_trans` mode): tickets found on the task itself.

    python -m lth_jax.main --config=configs/downstream_imp.py:moco --workdir=/tmp/lth_moco_c10 \
        --config.pretrained.path=/path/to/moco_v2_800ep_pretrain.pth.tar \
        --config.data.dataset=cifar10 --config.data.data_dir=/path/to/tensorflow_datasets

The argument picks the pre-training: torchvision (default), moco, simclr, or random
(a random init: the classic LTH control θ_0). θ_p is loaded without `fc` (a fresh
head for the task) and, with the CIFAR stem, without the 7x7 `conv1`. Each round
fine-tunes with the reference's recipe (SGD 0.1, momentum 0.9, wd 2e-4, 182 epochs,
x0.1 at 91/136, 1 warm-up epoch), prunes 20% of the surviving convolution weights
globally by magnitude and rewinds to θ_p. Late rewinding: `--config.imp.rewind=step
--config.imp.rewind_step=K`. Add the random-pruning baseline with
`--config.imp.random_baseline=True`.
"""

from lth_jax.experiments.config import base_config


def get_config(source: str = 'torchvision'):
  c = base_config()
  c.mode = 'imp'
  c.pretrained.source = source
  c.model.arch = 'resnet50'
  c.model.stem = 'cifar'
  c.data.dataset = 'cifar10'
  c.imp.num_rounds = 16
  c.num_seeds = 1
  c.dense_seeds = 3
  return c
