r"""Upstream IMP on SimCLR (the paper's m_SimCLR tickets): ResNet-50 on ImageNet.

    python -m lth_jax.main --config=configs/simclr_imp.py --workdir=/tmp/lth_simclr_upstream \
        --config.pretrained.path=/path/to/simclr_resnet50_1x.pth \
        --config.data.data_dir=/path/to/tensorflow_datasets

θ_p is the converted SimCLR ResNet-50 (`{'state_dict': torchvision keys}`), which takes
[0, 1] pixels without normalisation and has no projection head: a fresh 2048-2048-128
head is initialised. The first mask prunes 20% of θ_p's convolution weights by
magnitude; each round trains 10 epochs of SimCLR (NT-Xent over the global batch,
temperature 0.5, two views per image drawn on the accelerator: random resized crop
0.08-1, flip, colour jitter 0.8/0.8/0.8/0.2 with p=0.8, grayscale p=0.2; LARS lr 1e-4,
wd 1e-6, batch 256), prunes 20% of the survivors and rewinds to θ_p. 18 masks, each in
round_XX/mask and round_XX/mask_torch.{npz,pth}. The reference carries the optimizer
state over rounds: `--config.upstream.keep_state=True`.

Offline demo (Animal-MNIST, ResNet-18 width 1/4, minutes on a CPU; pre-trains θ_p with
SimCLR in the workdir first):

    python -m lth_jax.main --config=configs/simclr_imp.py:demo --workdir=/tmp/lth_simclr_demo
"""

from lth_jax.experiments import presets


def get_config(variant: str = ''):
  return presets.upstream_imp('simclr', variant)
