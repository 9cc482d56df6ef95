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

from lth_jax.experiments import upstream
from lth_jax.experiments.config import base_config


def get_config(variant: str = ''):
  c = upstream.paper_setting(base_config(), 'supervised')
  c.optim.update(optimizer='sgd', learning_rate=1e-4, weight_decay=1e-4)
  if variant == 'demo':
    upstream.demo_setting(c)
    for optim in (c.optim, c.pretrain.optim):
      optim.update(optimizer='sgd', learning_rate=0.05, weight_decay=5e-4)
  elif variant:
    raise ValueError(f'Unknown variant {variant!r}: use configs/supervised_imp.py for the '
                     'paper or configs/supervised_imp.py:demo for the offline demo.')
  return c
