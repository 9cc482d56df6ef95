"""Upstream IMP: tickets found on the pre-training task itself (config.mode='upstream').

    run_upstream_experiment(config, workdir, mesh)   # via lth_jax.experiments.run

`config.upstream.objective` picks the pre-training task: 'supervised' (cross-entropy
on `config.data.dataset`'s labels), 'simclr' (NT-Xent) or 'moco' (MoCo v2). θ_p is a
released checkpoint read by `lth_jax.convert` (torchvision ResNet-50 with its `fc`;
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
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from lth_jax import analysis, augment, console, convert, data, defaults, finetune as finetune_lib
from lth_jax import imp, objectives, results, sharding, train
from lth_jax.models import create_model, init_variables

OBJECTIVES = defaults.UPSTREAM_OBJECTIVES


# ----------------------------------------------------------------------------------
# Model, objective, evaluation.
# ----------------------------------------------------------------------------------

def build_model(config: ml_collections.ConfigDict) -> Any:
  """The ResNet of the pre-training task: `fc` for supervised, the MLP head otherwise.

  Args:
    config: the experiment config (`model`, `data.dataset`, `upstream`).

  Returns:
    The Flax module; the contrastive models output `upstream.projection_dim` values
    through fc_0 (hidden = feature size, e.g. 2048-2048-128 for ResNet-50) and fc_2.
  """
  info = data.get_info(config.data.dataset)
  supervised = config.upstream.objective == 'supervised'
  return create_model(
      config.model.arch, stem=config.model.stem, in_channels=info.image_shape[-1],
      width_multiplier=config.model.width_multiplier,
      head='linear' if supervised else 'mlp',
      num_classes=info.num_classes if supervised else config.upstream.projection_dim,
      dtype=train.compute_dtype(config.model.half_precision))


def _normalization(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  info = data.get_info(config.data.dataset)
  return (info.mean, info.std) if config.upstream.normalize else (None, None)


def make_objective(config: ml_collections.ConfigDict) -> Any:
  """The training objective of `config.upstream.objective`.

  Args:
    config: the experiment config.

  Returns:
    `train.cross_entropy_objective`, or an `objectives.SimCLR` / `objectives.MoCo`
    (equal configs give equal objects, so their compiled steps are shared).
  """
  c = config.upstream
  if c.objective == 'supervised':
    return train.cross_entropy_objective
  views = augment.PRESETS[c.views or ('simclr' if c.objective == 'simclr' else 'moco_v2')]
  views = dataclasses.replace(views, size=c.view_size or None,
                              blur_prob=views.blur_prob if c.blur else 0.0)
  mean, std = _normalization(config)
  if c.objective == 'simclr':
    return objectives.SimCLR(temperature=c.temperature, views=views, mean=mean, std=std)
  return objectives.MoCo(temperature=c.temperature, momentum=c.moco_momentum,
                         queue_size=c.queue_size, views=views, mean=mean, std=std)


def _knn_sums(model: Any, k: int, temperature: float, num_classes: int, variables: Any,
              batch: Mapping[str, jax.Array], bank: jax.Array,
              bank_labels: jax.Array) -> dict[str, jax.Array]:
  features = objectives.l2_normalize(model.apply(variables, batch['image'], train=False))
  similarity, index = jax.lax.top_k(features @ bank.T, k)
  weights = jnp.exp(similarity / temperature)
  votes = jnp.einsum('bk,bkc->bc', weights, jax.nn.one_hot(bank_labels[index], num_classes))
  probability = votes / jnp.sum(votes, -1, keepdims=True)
  label = batch['label']
  correct = (jnp.argmax(votes, -1) == label).astype(jnp.float32)
  nll = -jnp.log(jnp.take_along_axis(probability, label[:, None], 1)[:, 0] + 1e-12)
  weight = batch['mask']
  return {'correct': jnp.sum(weight * correct), 'loss': jnp.sum(weight * nll),
          'count': jnp.sum(weight)}


def knn_evaluator(model: Any, dataset: str | data.DatasetInfo, *, batch_size: int, mesh: Mesh,
                  data_dir: str | None = None, normalize: bool = True,
                  image_size: int | None = None, k: int = 200, temperature: float = 0.1,
                  bank_size: int = 0) -> train.Evaluator:
  """Weighted kNN classification with the backbone's features (MoCo's kNN monitor).

  Features are the L2-normalised pooled features (the head is skipped); each query's
  k most cosine-similar bank images vote for their label with weight
  exp(similarity / temperature).

  Args:
    model: the ResNet (any head).
    dataset: the labelled dataset (name or `DatasetInfo`); its unaugmented train split
      is the memory bank.
    batch_size: evaluation batch size (a multiple of the devices).
    mesh: the device mesh.
    data_dir: tfds data directory.
    normalize: normalise images as the training views were.
    image_size: input size (None: the dataset's).
    k: neighbours that vote (capped at the bank size).
    temperature: temperature of the vote weights.
    bank_size: use the first this many train examples (0: all of them).

  Returns:
    evaluator(variables, split) -> {'accuracy', 'loss' (vote NLL), 'count'}.
  """
  backbone = model.clone(head='none')
  replicated, batched = sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)
  num_classes = data.get_info(dataset).num_classes
  read = functools.partial(data.eval_batches, dataset, batch_size=batch_size,
                           data_dir=data_dir, normalize=normalize, image_size=image_size)
  features = jax.jit(
      lambda v, b: (objectives.l2_normalize(backbone.apply(v, b['image'], train=False)),
                    b['label'], b['mask']),
      in_shardings=(replicated, batched), out_shardings=replicated)

  @functools.lru_cache(maxsize=None)
  def knn_step(neighbours: int) -> Callable[..., dict[str, jax.Array]]:
    return jax.jit(functools.partial(_knn_sums, backbone, neighbours, temperature, num_classes),
                   in_shardings=(replicated, batched, replicated, replicated),
                   out_shardings=replicated)

  # The bank of the variables seen last: 'val' and 'test' of one epoch share it.
  last: dict[str, Any] = {}

  def memory_bank(variables: Any) -> tuple[jax.Array, jax.Array]:
    leaves = jax.tree.leaves(variables)
    if len(leaves) == len(last.get('leaves', ())) and all(
        a is b for a, b in zip(leaves, last['leaves'])):
      return last['bank']
    bank, labels = [], []
    for batch in read('train'):
      f, label, mask = jax.device_get(features(variables, sharding.shard_batch(batch, mesh)))
      bank.append(f[mask > 0])
      labels.append(label[mask > 0])
      if bank_size and sum(map(len, bank)) >= bank_size:
        break
    bank = np.concatenate(bank)[:bank_size or None]
    labels = np.concatenate(labels)[:bank_size or None]
    last.update(leaves=leaves, bank=sharding.replicate((bank, labels), mesh))
    return last['bank']

  def evaluate(variables: Mapping[str, Any], split: str) -> dict[str, float]:
    variables = sharding.replicate(dict(variables), mesh)
    bank, labels = memory_bank(variables)
    step = knn_step(min(k, bank.shape[0]))
    totals: dict[str, float] = {}
    for item in jax.device_get([step(variables, sharding.shard_batch(b, mesh), bank, labels)
                                for b in read(split)]):
      for key, value in item.items():
        totals[key] = totals.get(key, 0.0) + float(value)
    return {'accuracy': totals['correct'] / totals['count'],
            'loss': totals['loss'] / totals['count'], 'count': totals['count']}

  return evaluate


def make_evaluator(config: ml_collections.ConfigDict, model: Any,
                   mesh: Mesh) -> train.Evaluator:
  """The per-epoch metric of the objective (see the module docstring).

  Args:
    config: the experiment config.
    model: the upstream model.
    mesh: the device mesh.

  Returns:
    evaluator(variables, split) -> {'accuracy', 'loss', 'count'}.
  """
  dataset = data.get_info(config.data.dataset, val_from_train=config.data.val_from_train)
  c = config.upstream
  if c.objective == 'supervised':
    return lambda variables, split: train.evaluate(
        model, variables, data.eval_batches(dataset, split,
                                            batch_size=config.data.eval_batch_size,
                                            data_dir=config.data.data_dir), mesh)
  return knn_evaluator(
      model, dataset, batch_size=config.data.eval_batch_size, mesh=mesh,
      data_dir=config.data.data_dir, normalize=c.normalize,
      image_size=c.view_size or c.image_size or None, k=c.knn_k,
      temperature=c.knn_temperature, bank_size=c.knn_bank_size)


# ----------------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------------

def make_finetune(config: ml_collections.ConfigDict, model: Any, objective: Any,
                  evaluator: train.Evaluator, mesh: Mesh,
                  optim: ml_collections.ConfigDict | None = None) -> imp.Finetune:
  """`finetune.make_finetune` on the pre-training task.

  Contrastive objectives get raw [0, 1] images and augment them on the device;
  supervised training uses the dataset's own pipeline.

  Args:
    config: the experiment config.
    model: the upstream model.
    objective: from `make_objective`.
    evaluator: from `make_evaluator`.
    mesh: the device mesh.
    optim: the recipe (default `config.optim`).

  Returns:
    finetune(variables, masks, *, seed, checkpoint_dir, rewind_step=None) -> FitResult.
  """
  c = config.upstream
  raw = c.objective != 'supervised'
  return finetune_lib.make_finetune(
      config, model, config.data.dataset, mesh, optim, objective=objective,
      evaluator=evaluator, raw_images=raw, image_size=(c.image_size or None) if raw else None,
      carry_state=c.keep_state)


def start_variables(config: ml_collections.ConfigDict, model: Any, workdir: str,
                    finetune: Callable[..., train.FitResult]) -> dict[str, Any]:
  """θ_p for the upstream model, with the head the objective needs.

  Args:
    config: the experiment config (`pretrained`, `pretrain.optim`, `seed`).
    model: the upstream model.
    workdir: the experiment's workdir ('pretrain' caches θ_p there).
    finetune: the dense pre-training run for source='pretrain' (its recipe is
      `config.pretrain.optim`).

  Returns:
    {'params', 'batch_stats'} as numpy trees.
  """
  rng = jax.random.key(config.seed)
  source = config.pretrained.source
  like = jax.device_get(init_variables(model, rng, data.get_info(config.data.dataset)
                                       .image_shape[0]))
  if source == 'random':
    return like
  if source != 'pretrain':
    return convert.load_pytorch(config.pretrained.path, model, source=source, rng=rng)
  return finetune_lib.pretrain_once(
      workdir, like, finetune, seed=config.seed,
      description=f'{config.model.arch} with {config.upstream.objective} on '
      f'{config.data.dataset} for {config.pretrain.optim.num_epochs} epochs')


def save_torch_masks(run_dir: str) -> list[str]:
  """Writes `mask_torch.pth` (torch.save) next to every round's `mask_torch.npz`.

  The entries are float32 0/1 tensors named '<layer>.weight_mask', what
  torch.nn.utils.prune leaves in the reference's checkpoints. Without torch nothing
  is written (the .npz holds the same masks).

  Args:
    run_dir: an IMP run folder.

  Returns:
    The files written.
  """
  try:
    import torch
  except ImportError:
    return []
  written = []
  for npz in sorted(glob.glob(os.path.join(run_dir, 'round_*', 'mask_torch.npz'))):
    path = npz[:-len('.npz')] + '.pth'
    if os.path.exists(path):
      continue
    with np.load(npz) as f:
      state = {k: torch.from_numpy(f[k].astype(np.float32)) for k in f.files}
    results.atomic_write(path, lambda f, state=state: torch.save(state, f), mode='wb')
    written.append(path)
  return written


# ----------------------------------------------------------------------------------
# The mode.
# ----------------------------------------------------------------------------------

def _theta_p_metric(workdir: str, evaluator: train.Evaluator,
                    variables: Mapping[str, Any]) -> dict[str, float]:
  path = os.path.join(workdir, 'theta_p.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  metric = {'test_accuracy': evaluator(variables, 'test')['accuracy'],
            'val_accuracy': evaluator(variables, 'val')['accuracy']}
  if sharding.is_chief():
    results.write_json(path, metric)
  return metric


def run_upstream_experiment(config: ml_collections.ConfigDict, workdir: str,
                            mesh: Mesh) -> dict[str, Any]:
  """Upstream IMP on the pre-training task (see the module docstring).

  Args:
    config: the experiment config (mode 'upstream').
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    {'records': round records, 'theta_p': θ_p's metric, 'run_dir': the IMP folder,
    'start': θ_p's variables}.
  """
  c = config.upstream
  model = build_model(config)
  objective = make_objective(config)
  evaluator = make_evaluator(config, model, mesh)
  start = start_variables(config, model, workdir, make_finetune(
      config, model, objective, evaluator, mesh, optim=config.pretrain.optim))
  theta_p = _theta_p_metric(workdir, evaluator, start)
  metric = 'top-1' if c.objective == 'supervised' else 'kNN top-1'
  console.say(f'θ_p {metric} on {config.data.dataset}: '
              f'test {100 * theta_p["test_accuracy"]:.2f}%.')

  spec = imp.ImpSpec(num_rounds=config.imp.num_rounds, fraction=config.imp.fraction,
                     pruning=config.imp.pruning, prune_first=config.imp.prune_first,
                     seeds=(config.seed,), policy=config.imp.policy,
                     pruning_seed=config.seed)
  run_dir = os.path.join(workdir, c.objective)
  finetune = make_finetune(config, model, objective, evaluator, mesh)
  carried = ', optimizer and queue carried across rounds' if c.keep_state else ''
  console.say(f'Upstream IMP ({c.objective}) on {config.data.dataset}: {spec.num_rounds} '
              f'rounds x {config.optim.num_epochs} epochs{carried}.')

  def on_round(record: dict[str, Any]) -> None:
    if sharding.is_chief():
      save_torch_masks(run_dir)
    console.say(f'[{c.objective}] round {record["round"]}: sparsity '
                f'{100 * record["sparsity"]:.2f}%, {metric} {100 * record["test_accuracy"]:.2f}%')

  records = imp.run_imp(run_dir, spec, start, finetune, on_round=on_round)
  if sharding.is_chief():
    rows = [{'method': c.objective, **r} for r in records]
    console.say(results.report(
        workdir, rows, {c.objective: records}, [theta_p['test_accuracy']],
        f'Upstream {c.objective} IMP: {config.model.arch} on {config.data.dataset} ({metric})',
        ('method', 'round', 'sparsity', 'test_accuracy', 'best_epoch')))
    console.say(f'Tickets: {run_dir}/round_XX/mask (and mask_torch.npz/.pth for the '
                'reference).')
    report = analysis.analyze_workdirs([workdir], policy=config.imp.policy)
    console.say(f'Ticket analysis (overlap, layer and kernel structure): {report}')
  return {'records': records, 'theta_p': theta_p, 'run_dir': run_dir, 'start': start}
