"""Tests for lth_jax.training and lth_jax.runtime.sharding.

Recipes, masked sharded steps, exact evaluation, resumable fit, several devices and
two processes joined by jax.distributed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from lth_jax import errors
from lth_jax.runtime import sharding
from lth_jax.runtime.scheduler import Scheduler
from lth_jax.tasks.classification import cross_entropy, evaluate
from lth_jax.training import loop as fit_lib
from lth_jax.training import optim
from lth_jax.training import steps as train
from lth_jax.models import create_model, init_variables

MODEL = dict(arch='resnet18', num_classes=10, stem='cifar', width_multiplier=0.125)
IMAGE = 16
BATCH = 16
SPE = 3  # steps per epoch


@pytest.fixture(scope='module')
def tiny():
  """A tiny CIFAR-stem ResNet-18, its variables and a random ~50% mask."""
  model = create_model(**MODEL)
  variables = init_variables(model, jax.random.key(0), IMAGE)
  return model, variables, random_masks(variables['params'], seed=0)


def random_masks(params, seed):
  """Random bool masks on the conv kernels of the residual stages, True elsewhere."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    prunable = x.ndim == 4 and jax.tree_util.keystr(path).startswith("['layer")
    return rng.random(x.shape) < 0.5 if prunable else np.ones(x.shape, bool)

  return jax.tree_util.tree_map_with_path(leaf, params)


def make_batch(seed, size=BATCH):
  rng = np.random.default_rng(seed)
  return {'image': rng.normal(size=(size, IMAGE, IMAGE, 3)).astype(np.float32),
          'label': rng.integers(0, 10, size).astype(np.int32)}


def recipe(**overrides):
  """A short recipe; tests that use it unchanged share one compiled step."""
  return optim.Recipe(**{'num_epochs': 3, 'milestones': (2,), 'weight_decay': 5e-3,
                         'nesterov': True, **overrides})


@contextlib.contextmanager
def compiled_functions():
  """Collects the names of functions XLA compiles inside the block."""
  names = []

  def listener(event, duration, **kwargs):
    del duration
    if event == '/jax/core/compile/backend_compile_duration':
      names.append(kwargs.get('fun_name', ''))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def run_steps(steps, variables, masks, batches):
  mesh = steps.mesh
  masks = sharding.replicate(masks, mesh)
  state = steps.init(sharding.replicate(variables['params'], mesh),
                     sharding.replicate(variables['batch_stats'], mesh), masks)
  metrics = []
  for batch in batches:
    state, m = steps.train(state, masks, sharding.shard_batch(batch, mesh))
    metrics.append(jax.device_get(m))
  return state, metrics


# ---------------------------------------------------------------------------------
# Recipes.
# ---------------------------------------------------------------------------------

def test_schedule_follows_reference_warmup_and_milestones():
  spe = 10
  config = recipe(num_epochs=6, milestones=(3, 5), learning_rate=0.1, warmup_epochs=1)
  schedule = optim.create_learning_rate_schedule(config, spe)
  for step in range(6 * spe):
    epoch = step // spe
    # The reference's warmup_lr (per batch) and MultiStepLR (per epoch).
    expected = (0.1 * (step + 1) / spe if epoch < 1
                else 0.1 * 0.1 ** sum(epoch >= m for m in (3, 5)))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6, err_msg=step)

  cosine = optim.create_learning_rate_schedule(recipe(schedule='cosine', num_epochs=5), spe)
  np.testing.assert_allclose(
      [float(cosine(s)) for s in (0, 9, 10, 30, 50)], [0.01, 0.1, 0.1, 0.05, 0.0], atol=1e-7)


@pytest.mark.parametrize('field,value,message', [
    ('schedule', 'step', 'Unknown schedule'),
    ('optimizer', 'adam', 'Unknown optimizer'),
    ('milestones', (2, 1), 'strictly increasing'),
    ('warmup_epochs', 3, 'below num_epochs'),
])
def test_bad_recipe_is_refused(field, value, message):
  with pytest.raises(ValueError, match=message):
    optim.create_optimizer(recipe(**{field: value}), 10)


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_matches_torch_sgd(nesterov):
  torch = pytest.importorskip('torch')
  spe = 4
  config = recipe(num_epochs=4, milestones=(2,), weight_decay=0.01, nesterov=nesterov)
  tx, schedule = optim.create_optimizer(config, spe), optim.create_learning_rate_schedule(
      config, spe)
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5, 3)).astype(np.float32)
  grads = rng.normal(size=(4 * spe, 5, 3)).astype(np.float32)

  params, opt_state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
  weight = torch.nn.Parameter(torch.tensor(w0))
  opt = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
  for step, g in enumerate(grads):
    updates, opt_state = tx.update(jnp.asarray(g), opt_state, params)
    params = optax.apply_updates(params, updates)
    for group in opt.param_groups:
      group['lr'] = float(schedule(step))
    weight.grad = torch.tensor(g)
    opt.step()
  np.testing.assert_allclose(np.asarray(params), weight.detach().numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------
# Masked steps.
# ---------------------------------------------------------------------------------

@pytest.mark.parametrize('optimizer', ['sgd', 'lars'])
def test_pruned_weights_and_momentum_stay_exactly_zero(tiny, optimizer):
  model, variables, masks = tiny
  steps = train.make_train_steps(model, recipe(optimizer=optimizer), SPE, objective=cross_entropy)
  # The variables are not pre-masked: init must zero the pruned entries itself.
  state, metrics = run_steps(steps, variables, masks, [make_batch(0)] * 20)

  assert metrics[-1]['loss'] < metrics[0]['loss']
  trace = optax.tree_utils.tree_get(state.opt_state, 'trace')
  flat = zip(jax.tree_util.tree_leaves_with_path(masks), jax.tree.leaves(state.params),
             jax.tree.leaves(trace), jax.tree.leaves(variables['params']))
  pruned_leaves = 0
  for (path, mask), new, momentum, old in flat:
    new, momentum, old = np.asarray(new), np.asarray(momentum), np.asarray(old)
    assert new.dtype == np.float32, path
    assert np.all(new[~mask] == 0) and np.all(momentum[~mask] == 0), path
    # LARS's small trust ratio leaves a few updates below float32 resolution.
    assert np.mean(new[mask] != old[mask]) > 0.99, path
    pruned_leaves += int((~mask).any())
  assert pruned_leaves == 19  # every residual-stage conv of ResNet-18


def test_half_precision_keeps_float32_params_and_zeros(tiny):
  _, variables, masks = tiny
  model = create_model(**MODEL, dtype=optim.compute_dtype(half_precision=True))
  steps = train.make_train_steps(model, recipe(), SPE, objective=cross_entropy)
  state, metrics = run_steps(steps, variables, masks, [make_batch(s) for s in range(3)])
  assert np.isfinite(metrics[-1]['loss'])
  for new, mask in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks)):
    assert new.dtype == jnp.float32 and np.all(np.asarray(new)[~mask] == 0)


def test_eight_devices_match_one_device(tiny):
  model, variables, masks = tiny
  assert jax.device_count() == 8
  batches = [make_batch(s) for s in range(3)]
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = sharding.make_mesh(devices)
    steps = train.make_train_steps(model, recipe(), SPE, mesh, objective=cross_entropy)
    state, metrics = run_steps(steps, variables, masks, batches)
    evaluation = evaluate(model, state.variables, batches[:2], mesh)
    results.append((jax.device_get(state.variables), metrics, evaluation))
  (vars8, metrics8, eval8), (vars1, metrics1, eval1) = results
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               vars8, vars1)
  for m8, m1 in zip(metrics8, metrics1):
    np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
    assert m8['accuracy'] == m1['accuracy']
  assert eval8['accuracy'] == eval1['accuracy']
  np.testing.assert_allclose(eval8['loss'], eval1['loss'], rtol=1e-5)


def test_padded_evaluation_is_exact(tiny):
  model, variables, _ = tiny
  real = make_batch(7, size=13)
  # Two batches of 8; the last holds 5 real examples and 3 padded with junk.
  padded = {'image': np.concatenate([real['image'], np.full((3, IMAGE, IMAGE, 3), 1e3,
                                                            np.float32)]),
            'label': np.concatenate([real['label'], np.full(3, 9, np.int32)]),
            'mask': np.concatenate([np.ones(13, np.float32), np.zeros(3, np.float32)])}
  batches = [{k: v[:8] for k, v in padded.items()}, {k: v[8:] for k, v in padded.items()}]
  result = evaluate(model, variables, batches)

  logits = model.apply(variables, real['image'], train=False)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, real['label'])
  assert result['accuracy'] == np.sum(np.argmax(logits, -1) == real['label']) / 13
  np.testing.assert_allclose(result['loss'], float(loss.mean()), rtol=1e-5)


def test_mismatched_masks_are_refused(tiny):
  _, variables, masks = tiny
  with pytest.raises(ValueError, match='same tree structure'):
    train.check_masks(variables['params'], {'conv1': masks['conv1']})
  bad = jax.tree.map(lambda m: m, masks)
  bad['fc']['kernel'] = np.ones((3, 3), bool)
  with pytest.raises(ValueError, match=r"\['fc'\]\['kernel'\]"):
    train.check_masks(variables['params'], bad)


# ---------------------------------------------------------------------------------
# fit: one compile for all rounds, resume.
# ---------------------------------------------------------------------------------

EVAL = 8


class SimulatedCrash(Exception):
  pass


def train_batches_fn(crash_at_step=None):
  def batches(epoch, start_step):
    for i in range(start_step, SPE):
      step = epoch * SPE + i
      if step == crash_at_step:
        raise SimulatedCrash(f'before step {step}')
      yield make_batch(1000 + step, size=8)
  return batches


def eval_batches(split):
  seed = {'val': 1, 'test': 2}[split]
  last = make_batch(seed + 10, size=EVAL)
  last['mask'] = (np.arange(EVAL) < 5).astype(np.float32)
  return [dict(make_batch(seed, size=EVAL), mask=np.ones(EVAL, np.float32)), last]


def evaluator(model):
  return lambda variables, split: evaluate(model, variables, eval_batches(split),
                                           sharding.make_mesh())


def run_fit(model, variables, masks, directory, config, crash_at_step=None, evaluate=None,
            **kwargs):
  return fit_lib.fit(model, variables, masks, config, evaluator=evaluate or evaluator(model),
                     metric='accuracy', objective=cross_entropy,
                     train_batches=train_batches_fn(crash_at_step), steps_per_epoch=SPE,
                     checkpoint_dir=str(directory), **kwargs)


def test_one_compile_serves_every_round(tiny, tmp_path):
  model, variables, masks = tiny
  with compiled_functions() as round1:
    first = run_fit(model, variables, masks, tmp_path / 'round1', recipe())
  with compiled_functions() as round2:
    second = run_fit(model, variables, random_masks(variables['params'], seed=1),
                     tmp_path / 'round2', recipe())
  # Other tests may have compiled the shared recipe's step already.
  assert round1.count('jit(_train_step)') <= 1
  assert round2 == []
  assert len(first.history) == len(second.history) == 3
  assert not np.array_equal(first.variables['params']['layer1_0']['conv1']['kernel'],
                            second.variables['params']['layer1_0']['conv1']['kernel'])


@pytest.mark.parametrize('async_checkpoints', [False, True])
def test_fit_resumes_bit_identically(tiny, tmp_path, async_checkpoints, monkeypatch):
  model, variables, masks = tiny
  config = recipe()
  # Background writes (the accelerator default) keep every checkpoint a crash needs.
  kwargs = dict(checkpoint_every_steps=2, rewind_step=4, async_checkpoints=async_checkpoints)
  tic = time.monotonic()
  straight = run_fit(model, variables, masks, tmp_path / 'straight', config, **kwargs)
  assert 0 < straight.seconds <= time.monotonic() - tic

  crashed = tmp_path / 'crashed'
  # Crash mid-epoch 0 (after the step-2 checkpoint), then mid-epoch 1 (after step 4).
  tic = time.monotonic()
  for crash_at in (2, 5):
    with pytest.raises(SimulatedCrash):
      run_fit(model, variables, masks, crashed, config, crash_at_step=crash_at, **kwargs)
  crashes_seconds = time.monotonic() - tic
  said = []
  monkeypatch.setattr('lth_jax.runtime.console.say', said.append)
  progress = Scheduler(None, total_runs=3)
  tic = time.monotonic()
  [resumed] = progress.map(lambda _, mesh: run_fit(model, variables, masks, crashed, config,
                                                   **kwargs), [0], names=['crashed'])
  resume_seconds = time.monotonic() - tic
  # A run resumed part-way took part of a run's time: no measure for the ETA.
  assert [re.sub(r'\d+m\d+s', 'T', line) for line in said] == [
      '  done crashed in T (resumed); 1/3 runs done, experiment ETA after the first whole run']
  # A finished run is returned from its checkpoint, without training.
  again = run_fit(model, variables, masks, crashed, config, crash_at_step=0, **kwargs)
  # The resumed run's time holds the killed processes' too, up to their checkpoints (each
  # counted once); a run returned finished from its checkpoint keeps it.
  assert resume_seconds < resumed.seconds <= resume_seconds + crashes_seconds
  assert again.seconds == resumed.seconds

  for result in (resumed, again):
    assert result.history == straight.history
    assert (result.best_val, result.best_epoch, result.test) == (
        straight.best_val, straight.best_epoch, straight.test)
    for got, want in ((result.variables, straight.variables),
                      (result.rewind_variables, straight.rewind_variables)):
      jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), jax.device_get(want))
  assert [r['epoch'] for r in straight.history] == [1, 2, 3]
  assert straight.history[0]['step'] == SPE
  assert [r['test_accuracy'] for r in straight.history if 'test_accuracy' in r] == [
      straight.test] == [straight.history[straight.best_epoch - 1]['test_accuracy']]
  assert not np.array_equal(straight.rewind_variables['params']['fc']['kernel'],
                            straight.variables['params']['fc']['kernel'])


def test_a_run_checkpointed_in_the_accuracy_only_format_resumes(tiny, tmp_path):
  """Mid-run checkpoints written before metrics were named by the task resume exactly."""
  model, variables, masks = tiny
  config = recipe()
  straight = run_fit(model, variables, masks, tmp_path / 'straight', config)
  old, (recording, every_epoch) = tmp_path / 'old', evaluator_testing_every_epoch(model)
  with pytest.raises(SimulatedCrash):
    run_fit(model, variables, masks, old, config, crash_at_step=SPE + 1, evaluate=recording)
  (meta_file,) = old.glob('*/meta/metadata')
  meta = json.loads(meta_file.read_text())
  # That format tested each improvement at once (here the first epoch's test accuracy),
  # and saved no best variables.
  del meta['test_pending'], meta['test_metrics'], meta['seconds']  # (nor timed its runs)
  shutil.rmtree(meta_file.parent.parent / 'best')
  test = every_epoch[0]['accuracy']
  best = meta.pop('best_val')
  meta.update(best_val_accuracy=best, test_accuracy=test)  # the accuracy-only format's keys
  meta_file.write_text(json.dumps(meta))
  tic = time.monotonic()
  resumed = run_fit(model, variables, masks, old, config)
  assert 0 < resumed.seconds <= time.monotonic() - tic  # the time before counts as 0
  assert (resumed.best_val, resumed.best_epoch, resumed.test) == (
      straight.best_val, straight.best_epoch, straight.test)
  assert resumed.history == straight.history


def evaluator_testing_every_epoch(model, val_accuracies=None):
  """An evaluator that also records what testing each validated epoch would give, and
  optionally reports the given validation accuracies (epoch by epoch) instead of the real."""
  real, every_epoch = evaluator(model), []

  def evaluate(variables, split):
    if split == 'test':
      return real(variables, 'test')
    every_epoch.append(real(variables, 'test'))
    if val_accuracies is None:
      return real(variables, 'val')
    return {'accuracy': val_accuracies[len(every_epoch) - 1]}

  return evaluate, every_epoch


class RecordingWriter:
  """A metric writer that keeps what it is given."""

  def __init__(self):
    self.written = []

  def write_scalars(self, step, scalars):
    self.written.append((step, dict(scalars)))

  def flush(self):
    pass


def test_the_test_split_is_evaluated_once_on_the_best_epochs_variables(tiny, tmp_path):
  model, variables, masks = tiny
  # Validation peaks at epoch 2.
  recording, every_epoch = evaluator_testing_every_epoch(model, val_accuracies=[0.5, 0.9, 0.1])
  calls = []

  def rigged(v, split):
    calls.append(split)
    return recording(v, split)

  run = lambda directory, crash_at_step=None, **kwargs: run_fit(
      model, variables, masks, directory, kwargs.pop('config', recipe()), crash_at_step,
      evaluate=rigged, **kwargs)

  writer = RecordingWriter()
  straight = run(tmp_path / 'straight', writer=writer)
  assert calls == ['val'] * 3 + ['test'] and straight.best_epoch == 2
  assert every_epoch[1] != every_epoch[2]  # the last epoch's variables would test otherwise
  assert straight.test_metrics == every_epoch[1] and straight.test == every_epoch[1]['accuracy']
  assert [r['epoch'] for r in straight.history if 'test_accuracy' in r] == [2]
  # TensorBoard gets the test metrics once, at the best epoch's step.
  assert [(step, scalars) for step, scalars in writer.written
          if any(k.startswith('test_') for k in scalars)] == [
              (2 * SPE, {f'test_{k}': v for k, v in every_epoch[1].items()})]
  # Killed in epoch 3, the untested best variables come back from the checkpoint.
  for format in ('today', 'tested at once'):
    crashed = tmp_path / format
    calls.clear(), every_epoch.clear()
    with pytest.raises(SimulatedCrash):
      run(crashed, crash_at_step=2 * SPE + 1)
    if format == 'tested at once':  # a checkpoint of lth_jax before tests waited for the end
      (meta_file,) = crashed.glob('*/meta/metadata')
      meta = json.loads(meta_file.read_text())
      assert meta.pop('test_pending') and meta['best_epoch'] == 2
      meta_file.write_text(json.dumps({**meta, 'test_metrics': every_epoch[1]}))
      shutil.rmtree(meta_file.parent.parent / 'best')  # that loop saved no best variables
    calls.clear()
    resumed = run(crashed)
    assert calls == ['val'] + (['test'] if format == 'today' else [])
    assert (resumed.best_epoch, resumed.test_metrics) == (2, straight.test_metrics)
    untested = lambda history: [{k: v for k, v in r.items() if not k.startswith('test_')}
                                for r in history]
    assert (resumed.history if format == 'today' else untested(resumed.history)) == (
        straight.history if format == 'today' else untested(straight.history))
  # Resumed with no epoch left to run (fewer epochs than it was stopped after), the best
  # epoch is still tested.
  stopped = tmp_path / 'stopped'
  every_epoch.clear()
  with pytest.raises(SimulatedCrash):
    run(stopped, crash_at_step=2 * SPE + 1)
  calls.clear()
  shorter = run(stopped, config=recipe(num_epochs=2, milestones=()))
  assert calls == ['test'] and shorter.test_metrics == straight.test_metrics


def test_divergence_stops_before_anything_is_saved_or_evaluated(tiny, tmp_path):
  model, variables, masks = tiny
  config = recipe()

  def poisoned(epoch, start_step):  # step 5 (1-based, epoch 2) sees a NaN image
    for batch, i in zip(train_batches_fn()(epoch, start_step), range(start_step, SPE)):
      if epoch * SPE + i == 4:
        batch['image'][0, 0, 0, 0] = np.nan
      yield batch

  with pytest.raises(errors.DivergenceError) as caught:
    fit_lib.fit(model, variables, masks, config, train_batches=poisoned,
                evaluator=evaluator(model), metric='accuracy', objective=cross_entropy,
                steps_per_epoch=SPE, checkpoint_dir=str(tmp_path / 'run'),
                checkpoint_every_steps=1)
  error = caught.value
  assert (error.epoch, error.step) == (2, 5)
  schedule = optim.create_learning_rate_schedule(config, SPE)
  assert error.learning_rate == pytest.approx(float(schedule(4)))
  assert 'epoch 2, step 5' in str(error) and 'learning rate' in str(error)
  # The last checkpoint is the finite state after step 4; nothing after it was kept.
  manager = ocp.CheckpointManager(str(tmp_path / 'run'))
  assert manager.latest_step() == 4
  meta = manager.restore(4, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  assert meta['epoch'] == 1 and len(meta['history']) == 1
  assert all(np.isfinite(v) for v in meta['history'][0].values())


# ---------------------------------------------------------------------------------
# Sharding: batches, replication, two processes.
# ---------------------------------------------------------------------------------

def test_shard_batch_splits_the_first_dimension():
  mesh = sharding.make_mesh()
  batch = {'image': np.arange(16 * 2, dtype=np.float32).reshape(16, 2),
           'label': np.arange(16, dtype=np.int32)}
  placed = sharding.shard_batch(batch, mesh)
  assert placed['image'].sharding == sharding.batch_sharding(mesh)
  assert [s.data.shape for s in placed['label'].addressable_shards] == [(2,)] * 8
  np.testing.assert_array_equal(np.asarray(placed['image']), batch['image'])
  with pytest.raises(ValueError, match='multiple of 8'):
    sharding.shard_batch({'label': np.zeros(12, np.int32)}, mesh)


def test_replicate_places_once_and_keeps_placed_arrays():
  mesh = sharding.make_mesh()
  tree = sharding.replicate({'w': np.ones((3, 2), np.float32)}, mesh)
  assert tree['w'].sharding.is_fully_replicated and len(tree['w'].devices()) == 8
  assert sharding.replicate(tree, mesh)['w'] is tree['w']


# Each worker owns 4 CPU devices (8 in all) and feeds its half of every global batch.
WORKER = r'''
import json, sys
import numpy as np
from lth_jax.runtime import sharding
port, process_id, data_path, out_path, settings = sys.argv[1:]
process_id, settings = int(process_id), json.loads(settings)
sharding.initialize_distributed(f'127.0.0.1:{port}', num_processes=2,
                                process_id=process_id)
import jax
jax.config.update('jax_disable_most_optimizations', True)
from lth_jax.models import create_model
from lth_jax.tasks.classification import cross_entropy, evaluate
from lth_jax.training import optim, steps as train

model = create_model(**settings['model'])
data = np.load(data_path)
shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), data['image'][:1, 0]))
treedef = jax.tree.structure({'variables': shapes, 'masks': shapes['params']})
tree = jax.tree.unflatten(treedef, [data[f'leaf{i}'] for i in range(treedef.num_leaves)])
mesh = sharding.make_mesh()
assert mesh.size == 8 and len(jax.local_devices()) == 4
steps = train.make_train_steps(model, optim.Recipe(**settings['recipe']),
                               settings['steps_per_epoch'], mesh, objective=cross_entropy)
masks = sharding.replicate(tree['masks'], mesh)
state = steps.init(sharding.replicate(tree['variables']['params'], mesh),
                   sharding.replicate(tree['variables']['batch_stats'], mesh), masks)
losses = []
for image, label in zip(data['image'], data['label']):
  half = slice(process_id * len(image) // 2, (process_id + 1) * len(image) // 2)
  local = {'image': image[half], 'label': label[half]}
  state, metrics = steps.train(state, masks, sharding.shard_batch(local, mesh))
  losses.append(float(metrics['loss']))
evaluation = evaluate(model, state.variables, [local], mesh)
np.savez(out_path, losses=np.array(losses), accuracy=evaluation['accuracy'],
         **{f'leaf{i}': np.asarray(x) for i, x in enumerate(jax.tree.leaves(state.params))})
'''


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one(tiny, tmp_path):
  model, variables, masks = tiny
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, BATCH, IMAGE, IMAGE, 3)).astype(np.float32)
  labels = rng.integers(0, 10, (3, BATCH)).astype(np.int32)
  leaves = jax.tree.leaves({'variables': variables, 'masks': masks})
  np.savez(tmp_path / 'data.npz', image=images, label=labels,
           **{f'leaf{i}': np.asarray(x) for i, x in enumerate(leaves)})

  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  port = _free_port()
  settings = json.dumps({'model': MODEL, 'recipe': dataclasses.asdict(recipe()),
                         'steps_per_epoch': SPE})
  workers = [subprocess.Popen(
      [sys.executable, '-c', WORKER, str(port), str(i), str(tmp_path / 'data.npz'),
       str(tmp_path / f'out{i}.npz'), settings],
      env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  for worker in workers:
    output, _ = worker.communicate(timeout=240)
    assert worker.returncode == 0, output[-3000:]
  outs = [np.load(tmp_path / f'out{i}.npz') for i in range(2)]

  # The same steps in this single process, on its 8 devices.
  steps = train.make_train_steps(model, recipe(), SPE, objective=cross_entropy)
  batches = [{'image': i, 'label': l} for i, l in zip(images, labels)]
  state, metrics = run_steps(steps, variables, masks, batches)
  single = [np.asarray(x) for x in jax.tree.leaves(state.params)]
  for name in outs[0].files:
    np.testing.assert_array_equal(outs[0][name], outs[1][name], err_msg=name)
  np.testing.assert_allclose(outs[0]['losses'], [m['loss'] for m in metrics], rtol=1e-5)
  for i, want in enumerate(single):
    np.testing.assert_allclose(outs[0][f'leaf{i}'], want, rtol=1e-4, atol=1e-5)
  # The two halves of the last batch, evaluated as one global batch.
  assert float(outs[0]['accuracy']) == evaluate(model, state.variables,
                                                      batches[-1:])['accuracy']
