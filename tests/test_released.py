"""The θ_p lth_jax ships: their recipe (mode 'pretrain'), their files and source 'released'."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax
import numpy as np
import pytest
from flax import traverse_util

from lth_jax import errors, experiments, objectives, released
from lth_jax.data import offline
from lth_jax.data import registry as data_registry
from lth_jax.experiments import config as defaults
from lth_jax.experiments import presets, pretrain, upstream
from lth_jax.interop import checkpoints
from lth_jax.models import create_model, init_variables
from lth_jax.runtime import paths, tree_io
from lth_jax.runtime import workdir as workdir_lib

ENTRIES = list(released.RELEASED.values())


@pytest.mark.parametrize('source, head, head_key', [
    ('torchvision', 'linear', 'fc.weight'), ('simclr', 'mlp', None),
    ('moco', 'mlp', 'module.encoder_q.fc.0.weight')])
def test_a_released_checkpoint_reads_back_as_its_format(source, head, head_key):
  model = create_model('resnet18', num_classes=16, head=head, width_multiplier=0.125,
                       stem='cifar')
  variables = jax.device_get(init_variables(model, jax.random.key(3), 16))
  state_dict = checkpoints.to_released(variables, source)
  back = checkpoints.load_pytorch(state_dict, model, source=source, rng=jax.random.key(9))
  for path, value in traverse_util.flatten_dict(variables).items():
    # SimCLR's released files have no projection head: loading draws a fresh one (its
    # biases start at zero, as before).
    fresh = source == 'simclr' and path[1].startswith('fc') and path[-1] == 'kernel'
    assert np.array_equal(value, traverse_util.flatten_dict(back)[path]) != fresh, path
  assert (head_key in state_dict) if head_key else not any('fc' in k for k in state_dict)
  assert all(k.startswith('module.encoder_q.') for k in state_dict) == (source == 'moco')


def test_to_released_refuses_a_format_it_does_not_write():
  model = create_model('resnet18', num_classes=4, width_multiplier=0.125, stem='cifar')
  with pytest.raises(ValueError, match="Unknown source 'auto'"):
    checkpoints.to_released(init_variables(model, jax.random.key(0), 8), 'auto')


def _pretrain_tiny(objective: str, workdir: str) -> dict:
  config = defaults.load_config(f'pretrain_offline:{objective},tiny')
  config.num_devices = 1
  return experiments.run(config, workdir)


def _never(*args, **kwargs):
  raise AssertionError('a finished pre-training trained again')


@pytest.mark.slow
@pytest.mark.parametrize('objective', ['supervised', 'moco'])
def test_pretrain_mode_writes_theta_p_as_a_released_checkpoint_the_recipe_remakes(
    objective, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'a')
  record = _pretrain_tiny(objective, workdir)
  path = paths.released_checkpoint(workdir)
  assert record['sha256'] == workdir_lib.file_sha256(path)
  assert json.load(open(paths.theta_p_metric(workdir))) == record
  spec = objectives.get(objective)
  assert (record['objective'], record['dataset'], record['format']) == (
      objective, 'digits', spec.checkpoint_source)
  # kNN on the 8x8 digits' 10 classes: far above chance (10%) even after one epoch.
  metrics = record['metrics']
  assert min(metrics['knn_val'], metrics['knn_test'], metrics['probe_test']) > 0.3
  assert 0 < metrics['objective_val'] <= 1 and 0 < metrics['objective_test'] <= 1
  if spec.evaluator is objectives.KNN_TOP1:  # measured once, reported under both names
    assert record['metrics']['knn_test'] == record['metrics']['objective_test']
  # The file is θ_p: read as its format, it gives back the variables the workdir cached.
  config = defaults.load_config(f'pretrain_offline:{objective},tiny')
  model = upstream.build_model(experiments.specs.build(config))
  theta = tree_io.load(paths.pretrain_variables(workdir),
                       init_variables(model, jax.random.key(0), 8))
  back = checkpoints.load_pytorch(path, model, source=spec.checkpoint_source)
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(theta))
  # A rerun reads the finished workdir back: nothing trains, nothing is rewritten; one
  # finished before the linear probe existed (its record without probe metrics) too.
  older = {**record, 'metrics': {k: v for k, v in record['metrics'].items()
                                 if not k.startswith('probe_')}}
  with open(paths.theta_p_metric(workdir), 'w') as f:
    json.dump(older, f)
  mtime = os.path.getmtime(path)
  monkeypatch.setattr(experiments.wiring, 'make_finetune', lambda *a, **k: _never)
  assert _pretrain_tiny(objective, workdir) == older
  assert os.path.getmtime(path) == mtime
  monkeypatch.undo()
  if objective == 'moco':
    # The recipe is deterministic: another workdir gets the same file. MoCo draws the
    # most (two views, the queue, the key encoder): its remake stands for the others'.
    assert _pretrain_tiny(objective, str(tmp_path / 'b'))['sha256'] == record['sha256']


def test_pretrain_mode_refuses_a_theta_p_it_would_not_train():
  config = defaults.load_config('pretrain_offline:moco,tiny')
  config.pretrained.source = 'random'
  with pytest.raises(errors.ConfigError, match=r"pretrained\.source='random'.*'pretrain'"):
    defaults.validate(config)
  config = defaults.load_config('pretrain_offline:moco,tiny')
  config.pretrain.dataset = 'mnist5k'
  with pytest.raises(errors.ConfigError, match=r"pretrain\.dataset='mnist5k'.*'digits'"):
    defaults.validate(config)


def test_every_objective_with_an_upstream_recipe_is_shipped_once():
  assert sorted(e.objective for e in ENTRIES) == sorted(experiments.presets.UPSTREAM)
  assert {e.name for e in ENTRIES} == {e.objective for e in ENTRIES}
  shipped = {p.name for p in pathlib.Path(released.FOLDER).glob('*.npz')}
  assert shipped == {e.file for e in ENTRIES}


@pytest.mark.parametrize('entry', ENTRIES, ids=lambda e: e.name)
def test_a_shipped_theta_p_has_its_digest_and_its_recipe(entry):
  assert workdir_lib.file_sha256(entry.path) == entry.sha256
  assert os.path.getsize(entry.path) < 4 << 20
  config = defaults.load_config(f'pretrain_offline:{entry.objective}')
  assert (config.data.dataset, config.model.arch, config.model.stem,
          config.model.width_multiplier, config.pretrain.optim.num_epochs) == (
              entry.dataset, entry.arch, entry.stem, entry.width_multiplier, entry.epochs)


@pytest.fixture
def optimized_compiles():
  """XLA's full optimisations, as the command line compiles (the tests turn most off)."""
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', True)


@pytest.mark.slow
def test_each_shipped_theta_p_loads_as_its_format_and_has_its_accuracies(
    optimized_compiles):
  for entry in ENTRIES:
    config = defaults.load_config(f'pretrain_offline:{entry.objective}')
    config.num_devices = 1
    experiment = experiments.specs.build(config)
    model = upstream.build_model(experiment)
    variables = checkpoints.load_pytorch(entry.path, model, source=entry.format)
    metrics = pretrain.measure(experiment, model, variables,
                               experiments.wiring.mesh_for(experiment))
    # The README's numbers, measured again: kNN as recorded (4 decimals); the probe's
    # 100 L-BFGS steps follow the float rounding of the CPU, so within 3 test images.
    assert round(metrics['knn_test'], 4) == entry.knn_test, entry.name
    assert metrics['probe_test'] == pytest.approx(entry.probe_test, abs=3 / 945), entry.name


def _released_imp(**overrides):
  config = defaults.load_config('demo')
  config.num_devices = 1
  config.pretrained.update(source='released', path='moco')
  config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.parametrize('field, value', [
    ('model.width_multiplier', 0.5), ('model.stem', 'imagenet'), ('model.arch', 'resnet50')])
def test_source_released_refuses_another_model(field, value):
  entry = released.get('moco')
  want = getattr(entry, field.split('.')[1])
  with pytest.raises(errors.ConfigError,
                     match=rf"model\.{field.split('.')[1]}=.*--config\.{field}={want!r}"):
    defaults.validate(_released_imp(**{field: value}))


def test_source_released_reads_the_named_file_only():
  config = _released_imp()
  defaults.validate(config)
  assert experiments.specs.build(config).pretrained.path == released.get('moco').path
  for name in ('byol', ''):
    with pytest.raises(errors.ConfigError, match=rf"pretrained\.path='{name}'.*'supervised'"):
      defaults.validate(_released_imp(**{'pretrained.path': name}))


def test_a_downstream_task_draws_its_own_head_per_seed_from_a_released_theta_p():
  # animal_mnist_b_few has 5 classes, as the supervised θ_p's head: still not reused.
  config = _released_imp(**{'pretrained.path': 'supervised', 'data.dataset':
                            'animal_mnist_b_few'})
  experiment = experiments.specs.build(config)
  task, info = experiments.wiring.task_and_data(experiment.data, 'animal_mnist_b_few')
  model = task.build_model(experiment.model, info)
  start = experiments.wiring.theta_p(experiment, model, 28, '', None)
  a, b = start(0)['params'], start(1)['params']
  shipped = checkpoints.load_pytorch(released.get('supervised').path, model)['params']
  assert not np.array_equal(a['fc']['kernel'], b['fc']['kernel'])
  assert not np.array_equal(a['fc']['kernel'], shipped['fc']['kernel'])
  np.testing.assert_array_equal(a['conv1']['kernel'], shipped['conv1']['kernel'])
  np.testing.assert_array_equal(a['conv1']['kernel'], b['conv1']['kernel'])


def test_upstream_imp_from_a_released_theta_p_keeps_the_files_head():
  config = experiments.presets.upstream_imp('moco', 'demo')
  config.update_from_flattened_dict({'num_devices': 1, 'pretrained.source': 'released',
                                     'pretrained.path': 'moco',
                                     'data.dataset': 'animal_mnist_a'})
  defaults.validate(config)
  experiment = experiments.specs.build(config)
  model = upstream.build_model(experiment)
  start = experiments.wiring.theta_p(experiment, model, 28, '', None, keep_head=True)
  shipped = checkpoints.load_pytorch(released.get('moco').path, model, source='moco')
  jax.tree.map(np.testing.assert_array_equal, start(0), shipped)
  jax.tree.map(np.testing.assert_array_equal, start(1), shipped)  # the same for every seed


def _changed_copy(tmp_path, monkeypatch, name: str) -> None:
  """Every shipped file, copied to a folder the registry reads, `name`'s changed."""
  for entry in ENTRIES:
    data = bytearray(pathlib.Path(entry.path).read_bytes())
    if entry.name == name:
      data[len(data) // 2] ^= 0xFF  # one byte of a weight changed
    (tmp_path / entry.file).write_bytes(bytes(data))
  monkeypatch.setattr(released, 'FOLDER', str(tmp_path))


def test_a_changed_shipped_file_is_refused_before_the_claim(tmp_path, monkeypatch):
  _changed_copy(tmp_path, monkeypatch, 'moco')
  workdir = tmp_path / 'w'
  with pytest.raises(errors.CheckpointError, match="'moco'.*the file was changed; reinstall"):
    experiments.run(_released_imp(), str(workdir))
  assert not workdir.exists()


def test_paper_mode_reads_and_checks_each_pretrainings_shipped_theta_p(tmp_path, monkeypatch):
  config = defaults.load_config('paper_offline')
  config.num_devices = 1
  assert config.pretrained.source == 'released'
  defaults.validate(config)
  for objective, sub in experiments.specs.build(config).section.upstream.items():
    assert (sub.pretrained.source, sub.pretrained.path) == (
        'released', released.get(objective).path)
    assert sub.pretrained.datasets == ()  # nothing pre-trained again
  # Each file is checked before the claim, not when its upstream experiment starts.
  _changed_copy(tmp_path, monkeypatch, 'simclr')
  workdir = tmp_path / 'w'
  with pytest.raises(errors.CheckpointError, match="'simclr'.*the file was changed"):
    experiments.run(config, str(workdir))
  assert not workdir.exists()
  bad = defaults.load_config('paper_offline')
  bad.pretrain.dataset = 'animal_mnist'
  with pytest.raises(errors.ConfigError, match=r"upstream experiment of 'supervised'.*"
                     r"data\.dataset='animal_mnist'.*pre-trained on 'animal_mnist_a'"):
    defaults.validate(bad)
  bad = defaults.load_config('paper_offline')
  bad.pretrained.update(source='moco', path=str(tmp_path / 'moco_animal_mnist_a.npz'))
  with pytest.raises(errors.ConfigError, match=r"pretrained\.source='moco'.*'released'"):
    defaults.validate(bad)


def test_the_gap_benchmark_runs_valid_configs_from_each_shipped_theta_p_and_scratch(gap_benchmark):
  for task, (dataset, metric) in gap_benchmark.TASKS.items():
    recipe = traverse_util.flatten_dict(presets.FEW_SHOT_RECIPES.get(dataset, {}), sep='.')
    assert (task == 'classification') == (not recipe)
    # What the README's gaps were measured with.
    assert {k: recipe.get(k) for k in ('optim.num_epochs', 'optim.learning_rate',
                                       'optim.head_lr_scale', 'model.neck_width')} == {
        'classification': {'optim.num_epochs': None, 'optim.learning_rate': None,
                           'optim.head_lr_scale': None, 'model.neck_width': None},
        'segmentation': {'optim.num_epochs': 30, 'optim.learning_rate': 0.01,
                         'optim.head_lr_scale': 10.0, 'model.neck_width': None},
        'detection': {'optim.num_epochs': 60, 'optim.learning_rate': 0.002,
                      'optim.head_lr_scale': 5.0, 'model.neck_width': 1 / 16}}[task]
    assert recipe.get('model.neck') == ('none' if task == 'detection' else None)
    for start in (*(e.name for e in ENTRIES), 'scratch'):
      config = gap_benchmark._config(task, start, 3, {'optim.num_epochs': 9})  # > any warm-up
      defaults.validate(config)
      experiment = experiments.specs.build(config)
      assert (experiment.data.dataset, experiment.imp.spec.num_rounds) == (dataset, 1)
      # --seeds=3 trains three runs of each start, whatever dense_seeds paper mode has.
      assert experiment.dense_seeds == experiment.seeds == (0, 1, 2)
      for field, value in recipe.items():   # the task's recipe, and the override on top
        assert config[field] == (9 if field == 'optim.num_epochs' else value), field
      assert experiment.pretrained.source == ('scratch' if start == 'scratch' else 'released')
      task_, info = experiments.wiring.task_and_data(experiment.data, dataset)
      assert task_.headline(info).key == metric
  # Scratch draws an init per seed, as paper mode's scratch does (not one θ_0 for all).
  model = create_model('resnet18', num_classes=5, stem='cifar', width_multiplier=0.125)
  start = experiments.sources.get('scratch').start(experiments.sources.Origin(model, 28, 0))
  kernels = [start(seed)['params']['conv1']['kernel'] for seed in (0, 1)]
  assert not np.array_equal(*kernels)
  np.testing.assert_array_equal(
      kernels[1], init_variables(model, jax.random.key(1), 28)['params']['conv1']['kernel'])


def test_the_gap_benchmark_trains_on_the_first_images_of_each_class_with_shots(gap_benchmark):
  name = gap_benchmark.variant('classification', shots=10)
  assert gap_benchmark.variant('classification', shots=10) == name == 'animal_mnist_b_few_10shot'
  assert gap_benchmark.variant('classification') == 'animal_mnist_b_few'
  config = gap_benchmark._config('classification', 'scratch', 3, {}, name)
  defaults.validate(config)
  few, full = (data_registry.get_info(n) for n in (name, 'animal_mnist_b_few'))
  ten, twenty = offline.arrays(few, 'train'), offline.arrays(full, 'train')
  assert len(ten['label']) == few.split_sizes['train'] == 50
  assert np.bincount(ten['label']).tolist() == [10] * 5
  # The first ten of each class of the 20-shot split, in its order; val and test unchanged.
  first = np.sort(np.concatenate([np.flatnonzero(twenty['label'] == k)[:10]
                                  for k in range(5)]))
  for field in ('image', 'label'):
    np.testing.assert_array_equal(ten[field], twenty[field][first])
  for split in ('val', 'test'):
    np.testing.assert_array_equal(offline.arrays(few, split)['label'],
                                  offline.arrays(full, split)['label'])
  # Classes 5-9 hold 700, 700, 699, 690 and 700 training images.
  most = gap_benchmark.variant('classification', shots=690)
  assert len(offline.arrays(data_registry.get_info(most), 'train')['label']) == 3450
  for shots in (-1, 691):
    with pytest.raises(ValueError, match=f'--shots={shots}: give from 1 to 690'):
      gap_benchmark.variant('classification', shots=shots)
  with pytest.raises(ValueError, match='--shots is for --task=classification'):
    gap_benchmark.variant('detection', shots=10)


def test_the_gap_benchmark_pastes_the_canvases_objects_at_the_sides_given(gap_benchmark):
  name = gap_benchmark.variant('detection', sides=(24, 40), dataset='animal_canvas_det_few')
  assert name == 'animal_canvas_det_few_sides24_40'
  info = data_registry.get_info(name)
  assert info.object_sides == (24, 40)
  assert dataclasses.replace(info, name='animal_canvas_det_few', object_sides=()) == (
      data_registry.get_info('animal_canvas_det_few'))
  config = gap_benchmark._config('detection', 'supervised', 3, {}, name)
  defaults.validate(config)
  assert config.data.dataset == name and config.optim.num_epochs == 60  # the task's recipe
  for sides in ((0, 40), (30, 24), (24, 57), (24,)):
    with pytest.raises(ValueError, match='--object_sides=.*1 <= MIN <= MAX <= 56'):
      gap_benchmark.variant('segmentation', sides=sides)
  with pytest.raises(ValueError, match='--object_sides is for the canvas tasks'):
    gap_benchmark.variant('classification', sides=(24, 40))


def test_the_gap_benchmark_trains_on_the_first_canvases_given(gap_benchmark):
  from lth_jax.data import canvases

  name = gap_benchmark.variant('detection', sides=(24, 40), canvases=50,
                               dataset='animal_canvas_det_few')
  assert name == 'animal_canvas_det_few_sides24_40_50canvases'
  few, sides = data_registry.get_info(name), gap_benchmark.variant(
      'detection', sides=(24, 40), dataset='animal_canvas_det_few')
  hundred = data_registry.get_info(sides)
  assert few.split_sizes == {**hundred.split_sizes, 'train': 50} and few.shuffle_buffer == 50
  # The first 50 of the task's 100 training canvases; val and test unchanged.
  for split, count in (('train', 50), ('val', 100), ('test', 500)):
    got, task = canvases.arrays(few, split), canvases.arrays(hundred, split)
    for field in ('image', 'boxes', 'classes'):
      np.testing.assert_array_equal(got[field], task[field][:count])
  config = gap_benchmark._config('detection', 'scratch', 3, {}, name)
  defaults.validate(config)
  for count in (-1, 2001):
    with pytest.raises(ValueError, match=f'--canvases={count}: give from 1 to 2000'):
      gap_benchmark.variant('segmentation', canvases=count)
  with pytest.raises(ValueError, match='--canvases is for the canvas tasks'):
    gap_benchmark.variant('classification', canvases=50)


def test_the_gap_benchmark_starts_from_another_dataset_of_the_task(gap_benchmark):
  """--dataset: detection on classes 5-9, with the detection task's recipe (classes 0-4)."""
  assert gap_benchmark.variant('detection', dataset='animal_canvas_det_few') == (
      'animal_canvas_det_few')
  assert gap_benchmark.variant('detection') == 'animal_a_canvas_det_few'
  name = gap_benchmark.variant('detection', sides=(12, 40))
  assert name == 'animal_a_canvas_det_few_sides12_40'
  assert gap_benchmark.folder('detection', name) == name
  assert gap_benchmark.folder('detection', 'animal_canvas_det_few') == 'animal_canvas_det_few'
  assert gap_benchmark.folder('detection', 'animal_a_canvas_det_few') == 'detection'
  info = data_registry.get_info(name)
  assert (info.derived_from, info.object_sides) == ('animal_mnist_a', (12, 40))
  for dataset in (name, 'animal_canvas_det_few'):
    config = gap_benchmark._config('detection', 'supervised', 3, {}, dataset)
    defaults.validate(config)
    assert config.data.dataset == dataset and config.optim.num_epochs == 60  # the recipe
    assert (config.model.neck, config.model.neck_width) == ('none', 1 / 16)
  # The reference's neck, as the README's earlier detection gaps were measured.
  config = gap_benchmark._config('detection', 'scratch', 3, {'model.neck': 'panet'},
                                 'animal_canvas_det_few')
  defaults.validate(config)
  assert config.model.neck == 'panet'
  with pytest.raises(ValueError, match="--dataset=animal_canvas_seg_few is a segmentation "
                     "dataset, not detection: give one of .*'animal_a_canvas_det_few'"):
    gap_benchmark.variant('detection', dataset='animal_canvas_seg_few')
