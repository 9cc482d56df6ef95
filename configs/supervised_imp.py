r"""Upstream IMP on supervised ImageNet pre-training (the paper's m_Img tickets).

    python -m lth_jax.main --config=configs/supervised_imp.py --workdir=/tmp/lth_img_upstream \
        --config.pretrained.path=/path/to/resnet50-0676ba61.pth \
        --config.data.data_dir=/path/to/tensorflow_datasets

θ_p is torchvision's ResNet-50 with its 1000-way `fc`. The first mask prunes 20% of
θ_p's convolution weights by magnitude; each round trains 10 epochs of ImageNet
cross-entropy (random-resized crop 224 and flip; SGD lr 1e-4 constant, momentum 0.9,
wd 1e-4, batch 256), prunes 20% of the survivors and rewinds to θ_p. The round's metric
is ImageNet top-1 on the validation set. 18 masks, each in round_XX/mask and
round_XX/mask_torch.{npz,pth}. The reference carries the optimizer state over rounds:
`--config.upstream.keep_state=True`.

Offline demo (Animal-MNIST, ResNet-18 width 1/4, minutes on a CPU; pre-trains θ_p on
Animal-MNIST in the workdir first):

    python -m lth_jax.main --config=configs/supervised_imp.py:demo --workdir=/tmp/lth_img_demo
"""

from lth_jax.experiments import presets


def get_config(variant: str = ''):
  return presets.upstream_imp('supervised', variant)
