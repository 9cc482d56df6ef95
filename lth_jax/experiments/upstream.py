"""Mode 'upstream': IMP on the pre-training task itself (the paper's upstream tickets).

    python -m lth_jax.main --config=configs/moco_imp.py:demo --workdir=/tmp/lth_moco_demo

`config.upstream.objective` picks a registered pre-training objective
(`lth_jax.objectives`: 'supervised' cross-entropy on `config.data.dataset`'s labels,
'simclr' NT-Xent, 'moco' MoCo v2, ...); everything objective-specific (head, views,
per-round metric, checkpoint format) comes from its spec. θ_p is a released
checkpoint read by `lth_jax.interop.checkpoints` (torchvision ResNet-50 with its `fc`;
the MoCo v2 `.pth.tar` query encoder with its MLP head; a SimCLR `.pth`, which has no
projection head, gets a fresh one), a random init, or, with
`pretrained.source='pretrain'` (the offline demos), a network pre-trained with the
same objective inside the workdir and cached there.

The reference's schedule: the first mask is one-shot magnitude pruning of θ_p
(`imp.prune_first`); each round trains m_k ⊙ θ_p for `optim.num_epochs` epochs on the
objective, prunes 20% of the surviving weights of the trained network and rewinds to
θ_p (MoCo: both encoders). The optimizer state and MoCo's queue start fresh every round
unless `upstream.keep_state` carries them over from the previous round, as the
reference does.

Each round's metric: top-1 accuracy on the pre-training dataset for 'supervised';
weighted kNN top-1 accuracy of the backbone's pooled features (k=200, temperature 0.1,
the train split as memory bank, as in MoCo's kNN monitor) for 'simclr' and 'moco'.

Workdir layout (besides lth_jax.experiments'):
    pretrain/variables                   source='pretrain': θ_p (cached)
    <objective>/round_XX/mask            the ticket (this project's format)
    <objective>/round_XX/mask_torch.npz  the reference's '<name>.weight_mask' dict
    <objective>/round_XX/mask_torch.pth  the same, saved by torch.save (torch installed)
    <objective>/round_XX/seed_S/         the round's training checkpoints
    theta_p.json                         θ_p's own metric (the plot's dense line)
    results.csv/.json, accuracy_vs_sparsity.png, analysis/report.md

The recipes (optimizer, learning rate, temperature, which checkpoint) live in
configs/{supervised,simclr,moco}_imp.py; `paper_setting` and `demo_setting` here set the
shape of the experiment they share (data, model, rounds).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from lth_jax import analysis, data, objectives
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import modes, wiring
from lth_jax.lottery import ImpSpec, imp, results
from lth_jax.models import create_model, init_variables
from lth_jax.objectives import views as view_lib
from lth_jax.runtime import console, files, sharding
from lth_jax.training import Evaluator
from lth_jax.training.evaluators import knn_evaluator


def section() -> ml_collections.ConfigDict:
  """The defaults of `config.upstream`."""
  c = ml_collections.ConfigDict()
  c.objective = 'supervised'   # a registered objective (lth_jax.objectives)
  c.projection_dim = 128       # 'mlp' heads: output of the projection head
  c.temperature = 0.2          # contrastive losses (SimCLR 0.5, MoCo v2 0.2)
  c.moco_momentum = 0.999
  c.queue_size = 65536         # moco: K negative keys (>= the global batch)
  c.views = ''                 # a views preset ('simclr', 'moco_v2'); '': the objective's
  c.blur = True                # keep the preset's Gaussian blur (off for tiny images)
  c.image_size = 0             # side of the raw images fed to the views (0: the dataset's)
  c.view_size = 0              # side of the augmented views (0: image_size)
  c.normalize = True           # normalise views with the dataset's mean/std
  c.keep_state = False         # carry optimizer state and MoCo's queue across rounds
  c.knn_k = 200                # 'knn' round metric: weighted kNN top-1
  c.knn_temperature = 0.1
  c.knn_bank_size = 0          # train examples in the kNN bank (0: all)
  return c


def paper_setting(c: ml_collections.ConfigDict, objective: str) -> ml_collections.ConfigDict:
  """The paper's upstream experiment around an objective's recipe (configs/*_imp.py).

  ResNet-50 (ImageNet stem) on imagenet2012, batch 256, 10 epochs per round at a
  constant learning rate, the first mask one-shot pruned from θ_p, 18 masks (20% to
  98.2% sparsity).

  Args:
    c: a base config.
    objective: the registered objective (θ_p is its released checkpoint, read as its
      spec's `checkpoint_source`).

  Returns:
    `c`, updated.
  """
  c.mode = 'upstream'
  c.upstream.objective = objective
  c.pretrained.source = objectives.get(objective).checkpoint_source
  c.model.update(arch='resnet50', stem='imagenet')
  c.data.update(dataset='imagenet2012', batch_size=256)
  c.upstream.knn_bank_size = 100_000
  c.optim.update(schedule='constant', warmup_epochs=0, num_epochs=10, momentum=0.9)
  c.imp.update(num_rounds=18, prune_first=True)
  return c


def demo_setting(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The offline version of `paper_setting`: Animal-MNIST, a small ResNet-18, minutes.

  θ_p is pre-trained with the objective in the workdir (so it sees normalised inputs,
  as every transfer of it does), ResNet-18 of width 1/4 with a CIFAR stem, batch 128,
  5 rounds of one epoch; MoCo's queue and momentum and the views fitted to 28-pixel
  images and a few hundred steps.

  Args:
    c: a config set up by `paper_setting`.

  Returns:
    `c`, updated.
  """
  c.pretrained.source = 'pretrain'
  c.pretrain.dataset = c.data.dataset = 'animal_mnist'
  c.model.update(arch='resnet18', stem='cifar', width_multiplier=0.25)
  c.data.batch_size = 128
  c.upstream.update(normalize=True, knn_bank_size=0, queue_size=2048,
                    # 0.999 suits ImageNet's 5k steps per epoch; a few hundred steps need
                    # a faster key encoder (the usual CIFAR-scale MoCo setting).
                    moco_momentum=0.99,
                    # A blur of sigma 0.1-2 px is meant for 224 px images (SimCLR drops
                    # it on CIFAR).
                    blur=False)
  c.pretrain.optim.update(schedule='cosine', warmup_epochs=0, num_epochs=6, momentum=0.9)
  c.optim.num_epochs = 1
  c.imp.num_rounds = 5
  return c


def settings(config: ml_collections.ConfigDict) -> objectives.Settings:
  """The objective's settings of `config.upstream`."""
  c, spec = config.upstream, objectives.get(config.upstream.objective)
  views = view_lib.PRESETS[c.views or spec.views] if (c.views or spec.views) else None
  if views is not None:
    views = dataclasses.replace(views, size=c.view_size or None,
                                blur_prob=views.blur_prob if c.blur else 0.0)
  info = data.get_info(config.data.dataset)
  mean, std = (info.mean, info.std) if c.normalize else (None, None)
  return objectives.Settings(temperature=c.temperature, momentum=c.moco_momentum,
                             queue_size=c.queue_size, mean=mean, std=std,
                             **({'views': views} if views else {}))


def build_model(config: ml_collections.ConfigDict) -> Any:
  """The ResNet of the pre-training task, with the head its objective trains.

  Args:
    config: the experiment config (`model`, `data.dataset`, `upstream`).

  Returns:
    The Flax module: `fc` over the labels, or the projection head (`fc_0`, `fc_2`;
    hidden = feature size, e.g. 2048-2048-128 for ResNet-50).
  """
  spec, info = objectives.get(config.upstream.objective), data.get_info(config.data.dataset)
  model = wiring.model_spec(config)
  return create_model(
      model.arch, stem=model.stem, in_channels=info.image_shape[-1],
      width_multiplier=model.width_multiplier, head=spec.head, dtype=model.dtype,
      num_classes=info.num_classes if spec.head == 'linear' else config.upstream.projection_dim)


def _raw_size(config: ml_collections.ConfigDict) -> int | None:
  return config.upstream.view_size or config.upstream.image_size or None


def make_evaluator(config: ml_collections.ConfigDict, model: Any, mesh: Mesh) -> Evaluator:
  """The per-round metric of the objective: top-1 of its head, or kNN of the features.

  Args:
    config: the experiment config.
    model: the upstream model.
    mesh: the device mesh.

  Returns:
    evaluator(variables, split) -> {'accuracy', 'loss'}.
  """
  task, info = wiring.task_and_data(config, config.data.dataset)
  c, spec = config.upstream, objectives.get(config.upstream.objective)
  if spec.evaluator == 'accuracy':
    return task.evaluator(model, info, batch_size=config.data.eval_batch_size,
                          data_dir=config.data.data_dir, mesh=mesh)
  read = lambda split: data.eval_batches(
      info, split, batch_size=config.data.eval_batch_size, data_dir=config.data.data_dir,
      normalize=c.normalize, image_size=_raw_size(config))
  return knn_evaluator(model, read, num_classes=info.num_classes, mesh=mesh, k=c.knn_k,
                       temperature=c.knn_temperature, bank_size=c.knn_bank_size)


def make_finetune(config: ml_collections.ConfigDict, model: Any, evaluator: Evaluator,
                  mesh: Mesh, recipe: Any = None) -> Any:
  """`wiring.make_finetune` on the pre-training task with the objective's loss.

  Objectives with views get raw [0, 1] images and draw the views on the device; the
  supervised one reads the dataset's own augmented pipeline.
  """
  task, info = wiring.task_and_data(config, config.data.dataset)
  spec = objectives.get(config.upstream.objective)
  return wiring.make_finetune(
      config, model, task, info, mesh, recipe=recipe, objective=spec.build(settings(config)),
      evaluator=evaluator, metric='accuracy', raw_images=spec.raw_images,
      raw_size=config.upstream.image_size or None,
      carry_state=config.upstream.keep_state)


def start_variables(config: ml_collections.ConfigDict, model: Any, evaluator: Evaluator,
                    workdir: str, mesh: Mesh) -> dict[str, Any]:
  """θ_p for the upstream model, with the head its objective trains.

  A released checkpoint keeps its heads (a fresh one where it has none: SimCLR's), a
  random init is θ_0, and source 'pretrain' trains θ_p with the objective in the workdir
  (`config.pretrain.optim`).

  Args:
    config: the experiment config.
    model: the upstream model (`build_model`).
    evaluator: the per-round metric (`make_evaluator`), for the pre-training run.
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    {'params', 'batch_stats'} as numpy trees.
  """
  size = _raw_size(config) or data.get_info(config.data.dataset).image_shape[0]
  return wiring.theta_p(
      config, model, size, workdir, mesh, keep_head=True,
      pretrained=lambda: wiring.pretrain_once(
          workdir, init_variables(model, jax.random.key(config.seed), size),
          make_finetune(config, model, evaluator, mesh,
                        recipe=config_lib.recipe(config.pretrain.optim)),
          seed=config.seed, description=f'{config.model.arch} with {config.upstream.objective} '
          f'on {config.data.dataset} for {config.pretrain.optim.num_epochs} epochs'))(config.seed)


def _theta_p_metric(workdir: str, evaluator: Evaluator,
                    variables: Any) -> dict[str, float]:
  path = os.path.join(workdir, 'theta_p.json')
  recorded = files.read_json(path)  # one a crash cut short is measured again
  if recorded is not None:
    return recorded
  metric = {'test_accuracy': evaluator(variables, 'test')['accuracy'],
            'val_accuracy': evaluator(variables, 'val')['accuracy']}
  if sharding.is_chief():
    files.write_json(path, metric)
  sharding.sync(f'theta_p metric of {workdir}')
  return metric


def run(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh) -> dict[str, Any]:
  """Upstream IMP on the pre-training task (see the module docstring).

  Args:
    config: the experiment config (mode 'upstream').
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    {'records': round records, 'theta_p': θ_p's metric, 'run_dir': the IMP folder,
    'start': θ_p's variables}.
  """
  c, spec = config.upstream, objectives.get(config.upstream.objective)
  model = build_model(config)
  evaluator = make_evaluator(config, model, mesh)
  start = start_variables(config, model, evaluator, workdir, mesh)
  theta_p = _theta_p_metric(workdir, evaluator, start)
  name = 'top-1' if spec.evaluator == 'accuracy' else 'kNN top-1'
  console.say(f'θ_p {name} on {config.data.dataset}: '
              f'test {100 * theta_p["test_accuracy"]:.2f}%.')

  run_spec = ImpSpec(num_rounds=config.imp.num_rounds, fraction=config.imp.fraction,
                     pruning=config.imp.pruning, prune_first=config.imp.prune_first,
                     seeds=(config.seed,), policy=config.imp.policy, pruning_seed=config.seed)
  run_dir = os.path.join(workdir, c.objective)
  finetune = make_finetune(config, model, evaluator, mesh)
  carried = ', optimizer and queue carried across rounds' if c.keep_state else ''
  console.say(f'Upstream IMP ({c.objective}) on {config.data.dataset}: '
              f'{run_spec.num_rounds} rounds x {config.optim.num_epochs} epochs{carried}.')

  def on_round(record: dict[str, Any]) -> None:
    console.say(f'[{c.objective}] round {record["round"]}: sparsity '
                f'{100 * record["sparsity"]:.2f}%, {name} {100 * record["test_accuracy"]:.2f}%')

  records = imp.run_imp(run_dir, run_spec, start, finetune, on_round=on_round)
  if sharding.is_chief():
    rows = [{'method': c.objective, **r} for r in records]
    console.say(results.report(
        workdir, rows, {c.objective: records}, [theta_p['test_accuracy']],
        f'Upstream {c.objective} IMP: {config.model.arch} on {config.data.dataset} ({name})',
        ('method', 'round', 'sparsity', 'test_accuracy', 'best_epoch')))
    console.say(f'Tickets: {run_dir}/round_XX/mask (and mask_torch.npz/.pth for the '
                'reference).')
    report = analysis.analyze_workdirs([workdir], policy=config.imp.policy)
    console.say(f'Ticket analysis (overlap, layer and kernel structure): {report}')
  return {'records': records, 'theta_p': theta_p, 'run_dir': run_dir, 'start': start}


def validate(config: ml_collections.ConfigDict) -> None:
  """The checks of mode 'upstream'."""
  u = config.upstream
  config_lib.check_dataset('data.dataset', config.data.dataset)
  if u.objective not in objectives.OBJECTIVES:
    config_lib.fail('upstream.objective', u.objective,
                    f'choose one of {sorted(objectives.OBJECTIVES)}.')
  if u.views and u.views not in view_lib.PRESETS:
    config_lib.fail('upstream.views', u.views,
                    f'choose one of {tuple(view_lib.PRESETS)} or \'\'.')
  if u.temperature <= 0:
    config_lib.fail('upstream.temperature', u.temperature, 'must be > 0.')
  if not 0.0 <= u.moco_momentum <= 1.0:
    config_lib.fail('upstream.moco_momentum', u.moco_momentum, 'must be in [0, 1].')
  if u.objective == 'moco' and u.queue_size < config.data.batch_size:
    config_lib.fail('upstream.queue_size', u.queue_size, 'must hold at least one global '
                    f'batch (data.batch_size={config.data.batch_size}).')
  if u.knn_k < 1 or u.knn_temperature <= 0 or u.knn_bank_size < 0:
    config_lib.fail('upstream.knn_k', u.knn_k, 'knn_k must be >= 1, knn_temperature > 0 '
                    'and knn_bank_size >= 0.')
  if config.imp.rewind != 'start':
    config_lib.fail('imp.rewind', config.imp.rewind,
                    "upstream IMP rewinds to θ_p: use 'start'.")
  if (config.pretrained.source == 'pretrain'
      and config.pretrain.dataset != config.data.dataset):
    config_lib.fail('pretrain.dataset', config.pretrain.dataset,
                    'upstream IMP pre-trains θ_p on its own task: set it to data.dataset '
                    f'({config.data.dataset!r}).')


modes.register(modes.Mode(
    'upstream', run=run, validate=validate, section=section,
    datasets=lambda c: [c.data.dataset]))
