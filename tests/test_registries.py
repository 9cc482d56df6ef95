"""The registered parts: a pruning criterion (SNIP), an objective (a BYOL double), a task.

Each addition is one function or module plus one registry call; these tests add them
the way a contributor would and run them through the experiment layer.
"""

from __future__ import annotations

import dataclasses
import json
import os

import conftest
import jax
import numpy as np
import pytest

from lth_jax import data, errors, experiments, masks, objectives, pruning, tasks, training
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import sources, upstream, wiring
from lth_jax.lottery import results, rounds
from lth_jax.models import init_variables
from lth_jax.objectives import contrastive
from lth_jax.runtime import workdir as workdir_lib
from lth_jax.tasks.classification import Classification


def tiny(**overrides):
  c = config_lib.load_config('demo:tiny')
  c.num_devices = 1
  c.update_from_flattened_dict(overrides)
  return c


@pytest.fixture
def registered():
  """register(registry, name, part): a part that is unregistered when the test ends."""
  added = []

  def register(parts, name, part):
    added.append((parts, name))
    return parts.register(name, part)

  yield register
  for parts, name in added:
    parts.unregister(name)


class RecordingFinetunes:
  """Stands in for `wiring.make_finetune`: records its arguments, trains nothing."""

  def __init__(self):
    self.made = []

  def __call__(self, experiment, model, *args, **kwargs):
    self.made.append({'model': model, **kwargs})

    def finetune(variables, m, *, seed, checkpoint_dir, rewind_step=None,
                 continue_from=None):
      del m, checkpoint_dir, rewind_step, continue_from
      value = 0.5 + 0.01 * seed
      return training.FitResult(metric='accuracy', best_val=value, best_epoch=1, test=value,
                                test_metrics={'accuracy': value}, history=[],
                                variables=jax.device_get(dict(variables)),
                                rewind_variables=None)
    return finetune


# ----------------------------------------------------------------------------- criterion

def test_snip_scores_weight_times_gradient_at_the_rewind_point():
  rng = np.random.default_rng(0)
  params = {'layer1_0': {'conv1': {'kernel': rng.normal(size=(3, 3, 4, 4)).astype(np.float32)},
                         'conv2': {'kernel': rng.normal(size=(3, 3, 4, 4)).astype(np.float32)}}}
  grads = jax.tree.map(lambda w: rng.normal(size=w.shape).astype(np.float32), params)
  m = masks.init(params)
  inputs = pruning.ScoreInputs(masks=m, rewind=params, gradient=lambda p: grads)
  got = pruning.prune('snip', inputs, 0.3)
  saliency = np.concatenate([np.abs(w * g).ravel() for w, g in zip(
      jax.tree.leaves(params), jax.tree.leaves(grads))])
  pruned = np.argsort(saliency, kind='stable')[:round(0.3 * saliency.size)]
  want = np.ones(saliency.size, bool)
  want[pruned] = False
  np.testing.assert_array_equal(
      np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(got)]), want)
  with pytest.raises(ValueError, match='needs the training loss'):
    pruning.prune('snip', pruning.ScoreInputs(masks=m, rewind=params), 0.3)


def test_snip_runs_from_the_command_line_config(monkeypatch, tmp_path):
  recorder = RecordingFinetunes()
  monkeypatch.setattr(wiring, 'make_finetune', recorder)
  config = tiny(**{'imp.pruning': 'snip', 'imp.random_baseline': False, 'imp.num_rounds': 2})
  experiments.run(config, str(tmp_path))
  # Round 1's mask is SNIP of θ_p (seed 0) under round 0's mask, on the task's loss.
  experiment = experiments.specs.build(config)
  task, info = wiring.task_and_data(experiment.data, 'digits')
  model = task.build_model(experiment.model, info)
  mesh = wiring.mesh_for(experiment)
  theta = wiring.theta_p(experiment, model, 8, str(tmp_path), mesh)(0)
  gradient = wiring.loss_gradient(experiment, model, task, info, mesh,
                                  theta['batch_stats'])
  want = pruning.prune('snip', pruning.ScoreInputs(
      masks=masks.init(theta['params']), rewind=theta['params'], gradient=gradient), 0.2)
  got = rounds.load_round_mask(str(tmp_path / 'snip'), 1)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  magnitude = pruning.global_magnitude(theta['params'], masks.init(theta['params']), 0.2)
  assert masks.overlap(got, magnitude)['total']['iou'] < 0.95


# ----------------------------------------------------------------------------- objective

@dataclasses.dataclass(frozen=True)
class ByolDouble(contrastive.SimCLR):
  """A stand-in for BYOL's loss (an online/target pair would be its state)."""


def test_an_objective_is_one_spec(monkeypatch, registered, tmp_path):
  # Its head and its per-round metric are objects: a new kind of either comes with it.
  wide = objectives.Head('mlp', lambda settings, classes: 2 * settings.projection_dim)
  constant = objectives.RoundMetric(
      'constant', lambda model, source, settings, mesh: lambda variables, split: {
          'accuracy': 0.25, 'loss': 0.0})
  byol = objectives.ObjectiveSpec(
      'byol', head=wide, checkpoint_source='torchvision', evaluator=constant, views='simclr',
      build=lambda s: ByolDouble(temperature=s.temperature, views=s.views, mean=s.mean,
                                 std=s.std))
  registered(objectives.OBJECTIVES, 'byol', byol)
  recorder = RecordingFinetunes()
  monkeypatch.setattr(wiring, 'make_finetune', recorder)
  config = config_lib.load_config('simclr_imp:demo')
  config.update_from_flattened_dict({
      'upstream.objective': 'byol', 'data.dataset': 'digits', 'pretrain.dataset': 'digits',
      'model.width_multiplier': 0.125, 'imp.num_rounds': 1, 'num_devices': 1,
      'data.batch_size': 64, 'data.eval_batch_size': 64})
  out = experiments.run(config, str(tmp_path))
  assert [r['round'] for r in out['records']] == [0]
  made = recorder.made[-1]
  assert isinstance(made['objective'], ByolDouble) and made['raw_images']
  params = made['model'].init(jax.random.key(0), np.zeros((1, 8, 8, 1)))['params']
  assert params['fc_2']['kernel'].shape[-1] == 2 * config.upstream.projection_dim
  assert out['theta_p'] == {'test_accuracy': 0.25, 'val_accuracy': 0.25}
  assert os.path.isdir(tmp_path / 'byol' / 'round_01' / 'mask')


def tiny_upstream(objective, **overrides):
  c = config_lib.load_config(f'{objective}_imp:demo')
  c.update_from_flattened_dict({
      'data.dataset': 'digits', 'pretrain.dataset': 'digits', 'pretrained.source': 'random',
      'model.width_multiplier': 0.125, 'imp.num_rounds': 1, 'num_devices': 1,
      'data.batch_size': 64, 'data.eval_batch_size': 64, 'upstream.queue_size': 256,
      **overrides})
  return c


@pytest.mark.parametrize('objective', ['simclr', pytest.param('moco', marks=pytest.mark.slow)])
def test_snip_prunes_upstream_by_the_objectives_own_gradient(monkeypatch, tmp_path, objective):
  monkeypatch.setattr(wiring, 'make_finetune', RecordingFinetunes())
  made, real = [], wiring.loss_gradient

  def loss_gradient(*args, **kwargs):
    made.append({**kwargs, 'gradient': real(*args, **kwargs)})
    return made[-1]['gradient']

  monkeypatch.setattr(wiring, 'loss_gradient', loss_gradient)
  config = tiny_upstream(objective, **{'imp.pruning': 'snip', 'imp.score_batches': 1})
  out = experiments.run(config, str(tmp_path))
  # The first mask (prune_first) is SNIP of θ_p by the gradient of the objective's own
  # loss on its views (a stateful loss: SimCLR's view key, MoCo's key encoder and queue).
  [used] = made
  assert type(used['objective']) is type(objectives.get(objective).build(
      upstream.settings(config))) and used['raw_images']
  theta = out['start']
  want = pruning.prune('snip', pruning.ScoreInputs(
      masks=masks.init(theta['params']), rewind=theta['params'], gradient=used['gradient']),
      0.2)
  got = rounds.load_round_mask(out['run_dir'], 0)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  magnitude = pruning.global_magnitude(theta['params'], masks.init(theta['params']), 0.2)
  assert masks.overlap(got, magnitude)['total']['iou'] < 0.95


def test_upstream_trains_the_seeds_and_rewind_scope_the_config_names(monkeypatch, tmp_path):
  monkeypatch.setattr(wiring, 'make_finetune', RecordingFinetunes())
  specs = []
  real = upstream.run_imp
  monkeypatch.setattr(upstream, 'run_imp', lambda run_dir, spec, *args, **kwargs: (
      specs.append(spec) or real(run_dir, spec, *args, **kwargs)))
  config = tiny_upstream('supervised', **{
      'imp.num_rounds': 2, 'imp.prune_first': False, 'imp.rewind_scope': 'prunable',
      'num_seeds': 2, 'dense_seeds': 3})
  out = experiments.run(config, str(tmp_path))
  assert (specs[0].seeds, specs[0].dense_seeds, specs[0].rewind_scope) == (
      (0, 1), (0, 1, 2), 'prunable')
  assert [[run['seed'] for run in r['runs']] for r in out['records']] == [[0, 1, 2], [0, 1]]


def test_snip_prunes_task_specific_imp_by_the_tasks_gradient(monkeypatch, tmp_path):
  """Paper mode's task-specific IMP scores by the task's loss (it was refused before)."""
  starts = {}

  class StartRecording(conftest.FakeFinetunes):
    def __call__(self, *args, **kwargs):
      finetune = super().__call__(*args, **kwargs)

      def recording(variables, masks, **run):
        starts.setdefault(run['checkpoint_dir'], jax.device_get(dict(variables)))
        return finetune(variables, masks, **run)
      return recording

  monkeypatch.setattr(wiring, 'make_finetune', StartRecording())
  made, real = [], wiring.loss_gradient

  def loss_gradient(*args, **kwargs):
    made.append({'dataset': args[3].name, 'gradient': real(*args, **kwargs)})
    return made[-1]['gradient']

  monkeypatch.setattr(wiring, 'loss_gradient', loss_gradient)
  config = config_lib.load_config('paper_offline:tiny')
  config.update_from_flattened_dict({'imp.pruning': 'snip', 'imp.score_batches': 1,
                                     'paper.task_imp_rounds': 2, 'num_devices': 1})
  experiments.run(config, str(tmp_path))
  [used] = made
  assert used['dataset'] == 'digits'
  run_dir = tmp_path / 'transfer' / 'digits' / 'task_specific'
  [start] = [v for d, v in starts.items() if str(run_dir / 'round_00') in d]
  want = pruning.prune('snip', pruning.ScoreInputs(
      masks=masks.init(start['params']), rewind=start['params'], gradient=used['gradient']),
      0.2)
  got = rounds.load_round_mask(str(run_dir), 1)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  magnitude = pruning.global_magnitude(start['params'], masks.init(start['params']), 0.2)
  assert masks.overlap(got, magnitude)['total']['iou'] < 0.95


# ------------------------------------------------------------------------- θ_p's source

def test_a_pretrained_source_is_one_registration(monkeypatch, registered, tmp_path):
  monkeypatch.setattr(wiring, 'make_finetune', RecordingFinetunes())
  seeds = []

  def halved(origin):  # a random init at half scale, the same for every seed
    init = jax.device_get(init_variables(origin.model, jax.random.key(7), origin.image_size))
    return lambda seed: seeds.append(seed) or jax.tree.map(lambda x: x / 2, init)

  registered(sources.SOURCES, 'halved', sources.Source('halved', halved, point='θ_h'))
  config = tiny(**{'pretrained.source': 'halved', 'imp.num_rounds': 1,
                   'imp.random_baseline': False})
  out = experiments.run(config, str(tmp_path))
  assert out['curves']['magnitude'][0]['sparsity'] == 0 and seeds
  labels = experiments.imp.labels(experiments.specs.build(config))
  assert labels['magnitude'].endswith('rewind to θ_h')
  with pytest.raises(errors.ConfigError, match=r"pretrained\.source='halve'.*'halved'"):
    config_lib.validate(tiny(**{'pretrained.source': 'halve'}))


# ---------------------------------------------------------------------------------- task

class BalancedClassification(Classification):
  """A toy task: classification judged by balanced accuracy (the mean per-class recall)."""
  name = 'balanced'
  metric = tasks.Metric('balanced_accuracy', 'balanced accuracy', 'balanced_accuracy')

  def evaluator(self, model, dataset, *, batch_size, data_dir, mesh):
    predict = jax.jit(lambda variables, image: model.apply(variables, image,
                                                           train=False).argmax(-1))

    def evaluate_balanced(variables, split):
      hits, counts = np.zeros(dataset.num_classes), np.zeros(dataset.num_classes)
      for batch in data.eval_batches(dataset, split, batch_size=batch_size):
        right = np.asarray(predict(variables, batch['image'])) == batch['label']
        real = batch['mask'] > 0  # not the padding
        np.add.at(hits, batch['label'][real], right[real])
        np.add.at(counts, batch['label'][real], 1)
      return {'balanced_accuracy': float(np.mean(hits / counts))}
    return evaluate_balanced


@pytest.mark.slow
def test_a_task_with_another_headline_metric_runs_imp_end_to_end(request, registered,
                                                                 tmp_path):
  registered(tasks.TASKS, 'balanced', BalancedClassification())
  data.register(dataclasses.replace(
      data.get_info('digits'), name='digits_balanced', task='balanced',
      derived_from='digits', classes=tuple(range(10))))
  request.addfinalizer(lambda: data.DATASETS.unregister('digits_balanced'))
  config = tiny(**{'data.dataset': 'digits_balanced', 'imp.num_rounds': 2, 'dense_seeds': 2,
                   'model.width_multiplier': 0.0625})  # half demo:tiny's width: faster
  out = experiments.run(config, str(tmp_path))
  curves = out['curves']
  assert set(curves) == {'magnitude', 'random'}
  for record in curves['magnitude']:
    assert 0 < record['test_balanced_accuracy'] <= 1 and 'test_accuracy' not in record
  header = open(tmp_path / 'results.csv').readline().strip().split(',')
  assert {'test_balanced_accuracy', 'test_balanced_accuracy_std', 'matching'} <= set(header)
  assert os.path.getsize(tmp_path / 'balanced_accuracy_vs_sparsity.png') > 10_000
  dense = [r['test_balanced_accuracy'] for r in curves['magnitude'][0]['runs']]
  want = results.extreme_sparsity(curves['magnitude'], dense, 'test_balanced_accuracy')
  assert out['extreme_sparsity']['magnitude'] == want
  report = open(tmp_path / 'analysis' / 'report.md').read()
  assert 'test balanced_accuracy %' in report


# ------------------------------------------------------------------ experiment records

def test_experiment_json_records_only_what_the_mode_reads(monkeypatch, tmp_path):
  monkeypatch.setattr(wiring, 'make_finetune', RecordingFinetunes())
  experiments.run(tiny(**{'imp.num_rounds': 1, 'imp.random_baseline': False}),
                  str(tmp_path / 'imp'))
  recorded = json.load(open(tmp_path / 'imp' / workdir_lib.EXPERIMENT_FILE))
  assert set(recorded) == {*config_lib.COMMON_FIELDS, workdir_lib.ENVIRONMENT}
  assert not {'transfer', 'upstream', 'paper'} & set(recorded)
  # A config that differs only in another mode's section is the same experiment.
  assert experiments.run(tiny(**{'imp.num_rounds': 1, 'imp.random_baseline': False,
                                 'transfer.datasets': 'mnist5k'}), str(tmp_path / 'imp'))


def test_the_queue_check_asks_the_objective(registered):
  """upstream.queue_size is checked for an objective whose spec keeps a queue, by name none."""
  assert objectives.get('moco').queue
  assert not objectives.get('simclr').queue and not objectives.get('supervised').queue
  config = tiny(**{'mode': 'upstream', 'upstream.objective': 'moco', 'data.batch_size': 64,
                   'upstream.queue_size': 32, 'pretrained.source': 'random',
                   'imp.random_baseline': False})
  with pytest.raises(errors.ConfigError, match='at least one global batch'):
    upstream.validate(config)
  registered(objectives.OBJECTIVES, 'queued',
             dataclasses.replace(objectives.get('simclr'), name='queued', queue=True))
  config.upstream.objective = 'queued'
  with pytest.raises(errors.ConfigError, match='at least one global batch'):
    upstream.validate(config)
  config.upstream.objective = 'simclr'
  upstream.validate(config)


def test_a_random_criterion_says_so_and_the_imp_mode_asks(registered):
  """imp.random_baseline is refused for a criterion whose registry entry is random."""
  assert pruning.get('random').random and pruning.get('layerwise_random').random
  assert not pruning.get('snip').random and not pruning.get('magnitude').random
  registered(pruning.CRITERIA, 'coin', dataclasses.replace(pruning.get('random'), random=True))
  with pytest.raises(errors.ConfigError, match='already prunes at random'):
    experiments.imp.validate(tiny(**{'imp.pruning': 'coin', 'imp.random_baseline': True}))
