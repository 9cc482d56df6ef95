r"""Transfer of tickets: fine-tune each ticket on each downstream task with 3 seeds.

    python -m lth_jax.main --config=configs/transfer.py:moco --workdir=/tmp/lth_transfer \
        --config.pretrained.path=/path/to/moco_v2_800ep_pretrain.pth.tar \
        --config.transfer.masks=/path/to/mask_level_4.pth,/tmp/lth_moco_c10/magnitude/round_08/mask \
        --config.transfer.datasets=cifar10,cifar100,svhn_cropped,fashion_mnist \
        --config.data.data_dir=/path/to/tensorflow_datasets

Tickets are this project's mask folders (`.../round_XX/mask`) or the reference's PyTorch
mask files (`{'layer1.0.conv1.weight_mask': ...}`, or pruned state dicts with
`weight_orig`/`weight_mask`); `--config.transfer.imp_workdir=DIR` takes every round of
an IMP workdir instead. The dense network is always fine-tuned too: each ticket is
marked *matching* when its mean accuracy is at least the dense mean minus one std, and
the highest matching sparsity is reported per task.
"""

from lth_jax.experiments.config import base_config


def get_config(source: str = 'torchvision'):
  c = base_config()
  c.mode = 'transfer'
  c.pretrained.source = source
  c.transfer.variant = 'ticket'
  c.transfer.datasets = 'cifar10,cifar100,svhn_cropped,fashion_mnist'
  c.num_seeds = 3
  return c
