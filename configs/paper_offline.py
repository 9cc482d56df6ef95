r"""The paper's main figure in miniature, offline: three pre-trainings, their tickets, transfer.

    python -m lth_jax.main --config=configs/paper_offline.py --workdir=/tmp/lth_paper

1. Pre-trains a ResNet-18 (width 1/4, CIFAR stem) on Animal-MNIST three ways:
   supervised, SimCLR and MoCo v2 (6 epochs each), giving θ_Sup, θ_SimCLR, θ_MoCo.
2. Upstream IMP on Animal-MNIST for each (the `:demo` recipes of
   configs/{supervised,simclr,moco}_imp.py): the first mask one-shot from θ_p, 8 masks
   of 20% steps (20% to 83% sparsity), one epoch of the objective per round.
3. Transfers every second ticket (36%, 59%, 74%, 83%) and the dense θ_p to MNIST-5k
   and the scikit-learn digits with 3 seeds, plus random global pruning of θ_Sup at the
   same sparsities.
4. results.csv/.json, extreme_sparsity.csv/.json (per pre-training and task) and
   accuracy_vs_sparsity_<task>.png (one curve per pre-training, plus random).

About an hour on a 2-core CPU (77 min measured with other jobs sharing it). The digits
learn little in 2 epochs (20 steps); `--config.optim.num_epochs=10` trains them properly
at five times the transfer cost. `:tiny` is a two-minute smoke run (supervised and MoCo,
scikit-learn digits only, width 1/8, 2 rounds, 1 seed).
"""

from lth_jax.experiments.config import base_config


def get_config(variant: str = ''):
  c = base_config()
  c.mode = 'paper'
  c.pretrained.source = 'pretrain'
  c.pretrain.dataset = 'animal_mnist'
  c.data.dataset = 'mnist5k'
  c.model.arch = 'resnet18'
  c.model.stem = 'cifar'
  c.model.width_multiplier = 0.25
  c.data.batch_size = 128
  c.data.eval_batch_size = 500
  c.pretrain.optim.num_epochs = 6
  c.optim.update(num_epochs=2, learning_rate=0.05, schedule='cosine', warmup_epochs=0,
                 weight_decay=5e-4)
  c.imp.num_rounds = 8
  c.paper.upstream_epochs = 1
  c.paper.transfer_every = 2
  c.num_seeds = 3
  if variant == 'tiny':
    c.paper.pretrainings = 'supervised,moco'
    c.pretrain.dataset = c.data.dataset = c.paper.tasks = 'digits'
    c.model.width_multiplier = 0.125
    c.data.batch_size = c.data.eval_batch_size = 64
    c.pretrain.optim.num_epochs = 1
    c.optim.num_epochs = 1
    c.imp.num_rounds = 2
    c.paper.transfer_every = 1
    c.num_seeds = 1
  elif variant:
    raise ValueError(f'Unknown variant {variant!r}: use configs/paper_offline.py or '
                     'configs/paper_offline.py:tiny.')
  return c
