r"""The paper's main figure in miniature, offline: three pre-trainings, their tickets, transfer.

    python -m lth_jax.main --config=configs/paper_offline.py --workdir=/tmp/lth_paper

One domain, split in two so that pre-training matters downstream (as ImageNet does for
the paper's small tasks): the upstream task is Animal-MNIST's classes 0-4
(`animal_mnist_a`, 3,318 images), the downstream task its other five classes with only
20 training images each (`animal_mnist_b_few`; whole val and test splits).

1. θ_Sup, θ_SimCLR, θ_MoCo: the ResNet-18s (width 1/4, CIFAR stem) that lth_jax ships,
   pre-trained on animal_mnist_a supervised, with SimCLR and with MoCo v2
   (`lth_jax.released`, made by configs/pretrain_offline.py), read as released
   checkpoints: nothing is pre-trained again.
2. Upstream IMP there for each (the `:demo` recipes of
   configs/{supervised,simclr,moco}_imp.py): the first mask one-shot from θ_p, 8 masks
   of 20% steps (20% to 83% sparsity), two epochs of the objective per round.
3. Transfers every second ticket (36%, 59%, 74%, 83%) to animal_mnist_b_few with 3
   seeds (30 epochs of batch 50), the dense θ_p with 5 (`dense_seeds`: whether θ_p beats
   training from scratch by more than twice the seeds' std needs more than three runs
   a side to say), trains the same network from scratch with those 5 seeds, and prunes
   θ_Sup at random at the tickets' sparsities (globally, and with each ticket's layer
   profile).
4. results.csv/.json, extreme_sparsity.csv/.json (per pre-training),
   table_animal_mnist_b_few.md (the paper's layout) and
   accuracy_vs_sparsity_animal_mnist_b_few.png (one curve per pre-training, plus random).

`:tiny` is a two-minute smoke run (supervised and MoCo pre-trained in the workdir,
scikit-learn digits only, width 1/8, 2 rounds, 1 seed). `:all_tasks` also transfers the
tickets to few-shot segmentation canvases of the same five classes (`animal_canvas_seg_few`)
and detection canvases of the upstream classes 0-4, as VOC's classes are ImageNet's
(`animal_a_canvas_det_few`, the heads on the backbone's stages), each with its recipe
(`lth_jax.experiments.presets.FEW_SHOT_RECIPES`, `config.paper.task_recipes`) and, there
only, task-specific tickets (3 rounds of IMP on the task): about 11.5 hours on a 2-core
CPU by its fine-tunes' measured times (README; its detection part not yet run). The
default run takes about 70 minutes there (66 measured with three dense runs a side).
"""

from lth_jax.experiments import presets
from lth_jax.experiments.config import base_config


def get_config(variant: str = ''):
  c = base_config()
  c.mode = 'paper'
  c.pretrained.source = 'released'
  c.pretrain.dataset = 'animal_mnist_a'
  c.pretrain.optim.num_epochs = 6       # with --config.pretrained.source=pretrain
  c.data.dataset = c.paper.tasks = 'animal_mnist_b_few'
  c.model.arch = 'resnet18'
  c.model.stem = 'cifar'
  c.model.width_multiplier = 0.25
  c.data.batch_size = 50                # the downstream task's (upstream keeps 128)
  c.data.eval_batch_size = 500
  c.optim.update(num_epochs=30, learning_rate=0.05, schedule='cosine', warmup_epochs=0,
                 weight_decay=5e-4)
  c.imp.num_rounds = 8
  c.paper.upstream_epochs = 2
  c.paper.transfer_every = 2
  c.num_seeds = 3
  c.dense_seeds = 5
  if variant == 'tiny':
    c.pretrained.source = 'pretrain'  # θ_p pre-trained in the workdir, on the digits
    c.paper.pretrainings = 'supervised,moco'
    c.pretrain.dataset = c.data.dataset = c.paper.tasks = 'digits'
    c.model.width_multiplier = 0.125
    c.data.batch_size = c.data.eval_batch_size = 64
    c.pretrain.optim.num_epochs = 1
    c.optim.num_epochs = 1
    c.imp.num_rounds = 2
    c.paper.transfer_every = 1
    c.num_seeds = 1
    c.dense_seeds = 0
  elif variant == 'all_tasks':
    # The three kinds of task in one run, each dense task with its own recipe and, as in
    # the paper, task-specific tickets (IMP on the task: 20% and 36% sparsity).
    c.paper.tasks = ','.join(['animal_mnist_b_few', *presets.FEW_SHOT_RECIPES])
    c.paper.task_recipes = {task: {**recipe, 'paper': {'task_imp_rounds': 3}}
                            for task, recipe in presets.FEW_SHOT_RECIPES.items()}
  elif variant:
    raise ValueError(f'Unknown variant {variant!r}: use configs/paper_offline.py, '
                     'configs/paper_offline.py:tiny or configs/paper_offline.py:all_tasks.')
  return c
