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
reference does. The rest of `config.imp` and the seeds (`num_seeds`, `dense_seeds`)
mean what they mean in mode 'imp' (`lth_jax.experiments.specs.Imp`): another criterion
(SNIP scores by the objective's own gradient), `rewind_scope='prunable'`, several seeds
a round (the first one's weights are pruned).

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

The recipes (optimizer, learning rate, temperature) and the shape of the experiments
they share (data, model, rounds, which checkpoint) live in
`lth_jax.experiments.presets` (configs/{supervised,simclr,moco}_imp.py give them).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from lth_jax import analysis, data, objectives, pruning
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import modes, sources, specs, wiring
from lth_jax.lottery import Finetune, result_files, run_imp
from lth_jax.models import create_model, init_variables
from lth_jax.objectives import views as view_lib
from lth_jax.runtime import console, files, paths, sharding
from lth_jax.training import Evaluator
from lth_jax.training.optim import Recipe


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


@dataclasses.dataclass(frozen=True)
class Spec:
  """Upstream IMP's objective and what it reads (`config.upstream`, see `section`).

  Attributes:
    objective: a registered objective (`lth_jax.objectives`).
    settings: its settings (`settings`): temperature, queue, views, kNN metric, ...
    image_size: the side of the raw images its loss reads (0: the dataset's).
    view_size: the side of the augmented views (0: image_size).
    normalize: views and the round metric's images normalised with the dataset's
      mean and std.
    keep_state: carry the optimizer state and MoCo's queue across rounds.
  """
  objective: str
  settings: objectives.Settings
  image_size: int
  view_size: int
  normalize: bool
  keep_state: bool

  @property
  def raw_size(self) -> int | None:
    """The side of the images θ_p and the round metric see (None: the dataset's)."""
    return self.view_size or self.image_size or None


def settings(config: ml_collections.ConfigDict) -> objectives.Settings:
  """The objective's settings of `config.upstream`.

  Args:
    config: the experiment config (`upstream`, `data.dataset`'s mean and std).

  Returns:
    The settings its spec builds the objective, head and round metric with.
  """
  c, spec = config.upstream, objectives.get(config.upstream.objective)
  views = view_lib.PRESETS[c.views or spec.views] if (c.views or spec.views) else None
  if views is not None:
    views = dataclasses.replace(views, size=c.view_size or None,
                                blur_prob=views.blur_prob if c.blur else 0.0)
  info = data.get_info(config.data.dataset)
  mean, std = (info.mean, info.std) if c.normalize else (None, None)
  return objectives.Settings(temperature=c.temperature, momentum=c.moco_momentum,
                             queue_size=c.queue_size, mean=mean, std=std,
                             projection_dim=c.projection_dim, knn_k=c.knn_k,
                             knn_temperature=c.knn_temperature,
                             knn_bank_size=c.knn_bank_size,
                             **({'views': views} if views else {}))


def spec(config: ml_collections.ConfigDict) -> Spec:
  """The `Spec` of `config.upstream` (`specs.Experiment.section` in this mode)."""
  return specs.from_section(Spec, config.upstream, settings=settings(config))


def build_model(experiment: specs.Experiment) -> Any:
  """The ResNet of the pre-training task, with the head its objective trains.

  Args:
    experiment: the experiment (`model`, `data.dataset`, its upstream `Spec`).

  Returns:
    The Flax module with the objective's head (`objectives.Head`): `fc` over the labels,
    or the projection head (`fc_0`, `fc_2`; hidden = feature size, e.g. 2048-2048-128
    for ResNet-50).
  """
  u, model = experiment.section, experiment.model
  head, info = objectives.get(u.objective).head, data.get_info(experiment.data.dataset)
  return create_model(
      model.arch, stem=model.stem, in_channels=info.image_shape[-1],
      width_multiplier=model.width_multiplier, head=head.kind, dtype=model.dtype,
      num_classes=head.outputs(u.settings, info.num_classes))


def make_evaluator(experiment: specs.Experiment, model: Any, mesh: Mesh,
                   metric: objectives.RoundMetric | None = None) -> Evaluator:
  """The per-round metric of the objective (`objectives.RoundMetric`), e.g. kNN top-1.

  Args:
    experiment: the experiment.
    model: the upstream model.
    mesh: the device mesh.
    metric: another metric than the objective's (e.g. `objectives.KNN_TOP1` for any).

  Returns:
    evaluator(variables, split) -> {'accuracy', 'loss'}.
  """
  u, d = experiment.section, experiment.data
  task, info = wiring.task_and_data(d, d.dataset)
  source = objectives.EvalData(task, info, batch_size=d.eval_batch_size, data_dir=d.data_dir,
                               normalize=u.normalize, image_size=u.raw_size)
  metric = metric or objectives.get(u.objective).evaluator
  return metric.build(model, source, u.settings, mesh)


def make_finetune(experiment: specs.Experiment, model: Any, evaluator: Evaluator,
                  mesh: Mesh, recipe: Recipe | None = None) -> Finetune:
  """`wiring.make_finetune` on the pre-training task with the objective's loss.

  Objectives with views get raw [0, 1] images and draw the views on the device; the
  supervised one reads the dataset's own augmented pipeline.

  Args:
    experiment: the experiment.
    model: the upstream model.
    evaluator: the per-round metric (`make_evaluator`).
    mesh: the device mesh.
    recipe: the optimizer recipe (default the experiment's fine-tuning recipe).

  Returns:
    The fine-tune.
  """
  task, info = wiring.task_and_data(experiment.data, experiment.data.dataset)
  return wiring.make_finetune(
      experiment, model, task, info, mesh, recipe=recipe, evaluator=evaluator,
      metric='accuracy', carry_state=experiment.section.keep_state, **_loss(experiment.section))


def _loss(u: Spec) -> dict[str, Any]:
  """The objective's loss and what it reads, as `wiring.make_finetune` takes them."""
  spec = objectives.get(u.objective)
  return {'objective': spec.build(u.settings), 'raw_images': spec.raw_images,
          'raw_size': u.image_size or None}


def _gradient(experiment: specs.Experiment, model: Any, mesh: Mesh,
              start: dict[str, Any]) -> Any:
  """The objective's gradient for a criterion that scores by it (SNIP), else None."""
  if not pruning.get(experiment.imp.spec.pruning).needs_gradient:
    return None
  task, info = wiring.task_and_data(experiment.data, experiment.data.dataset)
  return wiring.loss_gradient(experiment, model, task, info, mesh, start['batch_stats'],
                              **_loss(experiment.section))


def theta_p(experiment: specs.Experiment, model: Any, evaluator: Evaluator,
            workdir: str, mesh: Mesh) -> sources.SeedVariables:
  """θ_p for the upstream model, with the head its objective trains, per seed.

  A released checkpoint keeps its heads (a fresh one where it has none, SimCLR's, drawn
  from the seed), a random init is θ_0, and source 'pretrain' trains θ_p with the
  objective in the workdir (the source's recipe).

  Args:
    experiment: the experiment.
    model: the upstream model (`build_model`).
    evaluator: the per-round metric (`make_evaluator`), for the pre-training run.
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    seed -> {'params', 'batch_stats'} as numpy trees.
  """
  u, seed, recipe = experiment.section, experiment.seed, experiment.pretrained.recipe
  dataset = experiment.data.dataset
  size = u.raw_size or data.get_info(dataset).image_shape[0]
  return wiring.theta_p(
      experiment, model, size, workdir, mesh, keep_head=True,
      pretrained=lambda: wiring.pretrain_once(
          workdir, init_variables(model, jax.random.key(seed), size),
          make_finetune(experiment, model, evaluator, mesh, recipe=recipe),
          seed=seed, description=f'{experiment.model.arch} with {u.objective} '
          f'on {dataset} for {recipe.num_epochs} epochs'))


def start_variables(experiment: specs.Experiment, model: Any, evaluator: Evaluator,
                    workdir: str, mesh: Mesh) -> dict[str, Any]:
  """`theta_p` of the experiment's seed: the variables its θ_p metric is measured on.

  Args:
    experiment, model, evaluator, workdir, mesh: as for `theta_p`.

  Returns:
    {'params', 'batch_stats'} as numpy trees.
  """
  return theta_p(experiment, model, evaluator, workdir, mesh)(experiment.seed)


def _theta_p_metric(workdir: str, evaluator: Evaluator,
                    variables: Any) -> dict[str, float]:
  path = paths.theta_p_metric(workdir)
  recorded = files.read_json(path)  # one a crash cut short is measured again
  if recorded is not None:
    return recorded
  metric = {'test_accuracy': evaluator(variables, 'test')['accuracy'],
            'val_accuracy': evaluator(variables, 'val')['accuracy']}
  if sharding.is_chief():
    files.write_json(path, metric)
  sharding.sync(f'theta_p metric of {workdir}')
  return metric


def run(experiment: specs.Experiment, workdir: str, mesh: Mesh) -> dict[str, Any]:
  """Upstream IMP on the pre-training task (see the module docstring).

  Args:
    experiment: the experiment (mode 'upstream', its section a `Spec`).
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    {'records': round records, 'theta_p': θ_p's metric, 'run_dir': the IMP folder,
    'start': θ_p's variables}.
  """
  c, dataset = experiment.section, experiment.data.dataset
  model = build_model(experiment)
  evaluator = make_evaluator(experiment, model, mesh)
  start_for = theta_p(experiment, model, evaluator, workdir, mesh)
  start = start_for(experiment.seed)
  metric = _theta_p_metric(workdir, evaluator, start)
  name = objectives.get(c.objective).evaluator.label
  console.say(f'θ_p {name} on {dataset}: test {100 * metric["test_accuracy"]:.2f}%.')

  run_spec = experiment.imp.spec
  run_dir = os.path.join(workdir, c.objective)
  finetune = make_finetune(experiment, model, evaluator, mesh)
  carried = ', optimizer and queue carried across rounds' if c.keep_state else ''
  seeds = f', {len(run_spec.seeds)} seeds a round' if len(run_spec.seeds) > 1 else ''
  console.say(f'Upstream IMP ({c.objective}) on {dataset}: '
              f'{run_spec.num_rounds} rounds x {experiment.recipe.num_epochs} epochs{seeds}'
              f'{carried}.')

  def on_round(record: dict[str, Any]) -> None:
    console.say(f'[{c.objective}] round {record["round"]}: sparsity '
                f'{100 * record["sparsity"]:.2f}%, {name} {100 * record["test_accuracy"]:.2f}%')

  records = run_imp(run_dir, run_spec, start_for, finetune, on_round=on_round,
                    gradient=_gradient(experiment, model, mesh, start))
  if sharding.is_chief():
    rows = [{'method': c.objective, **r} for r in records]
    std = ('test_accuracy_std',) if len(run_spec.seeds) > 1 else ()
    console.say(result_files.write(
        workdir, rows, {c.objective: records}, [metric['test_accuracy']],
        f'Upstream {c.objective} IMP: {experiment.model.arch} on {dataset} ({name})',
        ('method', 'round', 'sparsity', 'test_accuracy', *std, 'best_epoch'),
        metric=wiring.task_and_data(experiment.data, dataset)[0].metric))
    console.say(f'Tickets: {run_dir}/round_XX/mask (and mask_torch.npz/.pth for the '
                'reference).')
    report = analysis.analyze_workdirs([workdir], policy=experiment.imp.policy)
    console.say(f'Ticket analysis (overlap, layer and kernel structure): {report}')
  return {'records': records, 'theta_p': metric, 'run_dir': run_dir, 'start': start}


def validate_objective(config: ml_collections.ConfigDict) -> None:
  """The checks of `config.upstream`: the objective and its settings.

  Modes 'upstream' and 'pretrain' make them.

  Args:
    config: the experiment config.

  Raises:
    ConfigError: naming the field and the fix.
  """
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
  if objectives.get(u.objective).queue and u.queue_size < config.data.batch_size:
    config_lib.fail('upstream.queue_size', u.queue_size, 'must hold at least one global '
                    f'batch (data.batch_size={config.data.batch_size}).')
  if u.knn_k < 1 or u.knn_temperature <= 0 or u.knn_bank_size < 0:
    config_lib.fail('upstream.knn_k', u.knn_k, 'knn_k must be >= 1, knn_temperature > 0 '
                    'and knn_bank_size >= 0.')


def validate(config: ml_collections.ConfigDict) -> None:
  """The checks of mode 'upstream'."""
  validate_objective(config)
  if config.imp.rewind != 'start':
    config_lib.fail('imp.rewind', config.imp.rewind,
                    "upstream IMP rewinds to θ_p: use 'start'.")
  if config.imp.random_baseline:
    config_lib.fail('imp.random_baseline', config.imp.random_baseline,
                    'upstream IMP runs no random-pruning branch (mode paper compares upstream '
                    'tickets with random masks); set --config.imp.random_baseline=False.')
  source = sources.get(config.pretrained.source)
  pretrained_on = source.pretrained_on(config)
  if pretrained_on and pretrained_on != config.data.dataset:
    # The field to fix: the pre-training's dataset where θ_p is trained here.
    trained_here = bool(source.trainings(config))
    config_lib.fail('pretrain.dataset' if trained_here else 'data.dataset',
                    config.pretrain.dataset if trained_here else config.data.dataset,
                    "upstream IMP continues θ_p's pre-training on its own task: θ_p is "
                    f'pre-trained on {pretrained_on!r}, IMP runs on data.dataset '
                    f'({config.data.dataset!r}); set both to one dataset.')


modes.register(modes.Mode(
    'upstream', run=run, validate=validate, section=section, spec=spec,
    datasets=lambda c: [c.data.dataset], model=build_model))
