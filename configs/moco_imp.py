r"""Upstream IMP on MoCo v2 (the paper's m_MoCo tickets): ResNet-50 on ImageNet.

    python -m lth_jax.main --config=configs/moco_imp.py --workdir=/tmp/lth_moco_upstream \
        --config.pretrained.path=/path/to/moco_v2_800ep_pretrain.pth.tar \
        --config.data.data_dir=/path/to/tensorflow_datasets

θ_p is the released query encoder with its MLP head (2048-2048-128); the key encoder
starts as its copy. The first mask prunes 20% of θ_p's convolution weights by
magnitude; each round trains 10 epochs of MoCo v2 (InfoNCE, temperature 0.2, queue of
65,536 keys, momentum 0.999, aug-plus views drawn on the accelerator; SGD lr 3e-4
constant, momentum 0.9, wd 1e-4, batch 256), prunes 20% of the survivors and rewinds
both encoders to θ_p; the query encoder's mask is applied to both. 18 masks (20% to
98.2% sparsity), each in round_XX/mask and round_XX/mask_torch.{npz,pth}. The reference
carries the queue and optimizer over rounds: `--config.upstream.keep_state=True`.

Offline demo (Animal-MNIST, ResNet-18 width 1/4, minutes on a CPU; pre-trains θ_p with
MoCo v2 in the workdir first):

    python -m lth_jax.main --config=configs/moco_imp.py:demo --workdir=/tmp/lth_moco_demo
"""

from lth_jax.experiments import presets


def get_config(variant: str = ''):
  return presets.upstream_imp('moco', variant)
