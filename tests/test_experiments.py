"""Experiments end to end on the shipped offline data: configs, IMP, transfer, CLI, resume."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import conftest
import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from lth_jax import errors, experiments, masks, pruning, training
from lth_jax.experiments import config as defaults
from lth_jax.experiments import transfer, wiring
from lth_jax.interop import checkpoints as convert
from lth_jax.lottery import iterative_pruning as imp, results, rounds
from lth_jax.runtime import workdir as workdir_lib
from lth_jax.models import init_variables

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / 'configs').glob('*.py'))
# The tiny demo, with mid-epoch checkpoints so that a kill lands inside a round.
TINY = ['--config.num_devices=1', '--config.checkpoint_every_steps=5']


def _model(config):
  experiment = experiments.specs.build(config)
  task, info = wiring.task_and_data(experiment.data, 'digits')
  return task.build_model(experiment.model, info)


def tiny(**overrides):
  c = defaults.load_config('demo:tiny')
  c.num_devices, c.checkpoint_every_steps = 1, 5
  c.update_from_flattened_dict(overrides)
  return c


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_every_config_has_its_command_line_and_validates(path, tmp_path):
  text = path.read_text()
  assert f'--config=configs/{path.name}' in text, 'the docstring must hold the command line'
  config = defaults.load_config(str(path))
  if config.pretrained.source not in ('random', 'pretrain', 'released'):  # read from a file
    config.pretrained.path = str(tmp_path / 'weights.pth')
    (tmp_path / 'weights.pth').write_bytes(b'')
  if config.mode == 'transfer' and config.transfer.variant != 'omp':
    config.transfer.imp_workdir = str(tmp_path)
  defaults.validate(config)


def _never(*args, **kwargs):
  raise AssertionError('a finished fine-tune ran again')


@pytest.mark.slow
def test_imp_experiment_writes_rounds_table_plot_and_extreme_sparsity_and_resumes(
    tmp_path, capsys, monkeypatch):
  """Imp mode's one real run (demo:tiny); its rerun is a resume that recomputes nothing."""
  workdir = str(tmp_path / 'imp')
  out = experiments.run(tiny(), workdir)
  curves = out['curves']
  # The tiny demo's dense runs stay within a few points of chance (README), or not, by the
  # CPU's rounding: whichever it is, the printout and every row of the table say the same.
  task, info = wiring.task_and_data(tiny().data, 'digits')
  note = results.untrained([r['test_accuracy'] for r in curves['magnitude'][0]['runs']],
                           task.headline(info))
  assert ('\nSmoke run: the dense runs reach' in capsys.readouterr().out) == bool(note)
  with open(os.path.join(workdir, 'results.csv')) as f:
    assert [r.get('note', '') for r in csv.DictReader(f)] == [note] * 6  # no column if none
  assert set(curves) == {'magnitude', 'random'}
  assert [round(r['sparsity'], 4) for r in curves['magnitude']] == [0.0, 0.2, 0.36]
  # The random baseline shares the dense round and prunes to the same sparsities.
  assert [round(r['sparsity'], 4) for r in curves['random']] == [0.0, 0.2, 0.36]
  assert curves['magnitude'][0]['num_seeds'] == 2 and curves['magnitude'][1]['num_seeds'] == 1
  assert all(0 < r['test_accuracy'] <= 1 for recs in curves.values() for r in recs)
  rows = json.load(open(os.path.join(workdir, 'results.json')))
  assert len(rows) == 6 and {r['method'] for r in rows} == {'magnitude', 'random'}
  header = open(os.path.join(workdir, 'results.csv')).readline().strip().split(',')
  assert {'method', 'round', 'sparsity', 'test_accuracy', 'matching', 'sparsity_layer4'} <= set(
      header)
  assert os.path.getsize(os.path.join(workdir, 'accuracy_vs_sparsity.png')) > 10_000
  assert set(out['extreme_sparsity']) == {'magnitude', 'random'}
  for method, recs in curves.items():
    dense = [r['test_accuracy'] for r in recs[0]['runs']]
    mean, std = np.mean(dense), np.std(dense, ddof=1)
    matching = [r['sparsity'] for r in recs[1:] if r['test_accuracy'] >= mean - std - 1e-9]
    assert out['extreme_sparsity'][method] == (max(matching) if matching else None)
  report = open(os.path.join(workdir, 'analysis', 'report.md')).read()
  assert 'magnitude' in report and 'random' in report
  ticket = rounds.load_round_mask(os.path.join(workdir, 'magnitude'), 2)
  assert masks.sparsity(ticket) == pytest.approx(0.36, abs=1e-4)

  # The rerun trains nothing: every fine-tune it would make fails.
  monkeypatch.setattr(wiring, 'make_finetune', lambda *a, **k: _never)
  again = experiments.run(tiny(), workdir)
  assert again['curves'] == out['curves']


@pytest.fixture(scope='module')
def fake_imp_run(tmp_path_factory):
  """demo:tiny's workdir as fake fine-tunes leave it (the rounds' masks and records)."""
  workdir = str(tmp_path_factory.mktemp('fake_imp'))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(wiring, 'make_finetune', conftest.FakeFinetunes())
    out = experiments.run(tiny(), workdir)
  return workdir, out


def test_transfer_of_imp_tickets_and_omp(fake_imp_run, fake_finetunes, tmp_path, monkeypatch):
  workdir, _ = fake_imp_run
  config = tiny(**{'mode': 'transfer', 'transfer.imp_workdir': os.path.join(workdir, 'magnitude'),
                   'transfer.datasets': 'digits'})
  said = []
  monkeypatch.setattr('lth_jax.runtime.console.say', said.append)
  out = experiments.run(config, str(tmp_path / 'transfer'))
  rows = out['digits']['rows']
  # dense + the 4 masks of the IMP run (rounds 0..3; round 3's mask is ready, untrained).
  assert [r['ticket'] for r in rows] == ['dense', 'round_00', 'round_01', 'round_02',
                                         'round_03']
  assert [round(r['sparsity'], 4) for r in rows] == [0.0, 0.0, 0.2, 0.36, 0.488]
  assert all(isinstance(r['matching'], bool) for r in rows)
  # One fine-tune per ticket and seed; the dense network has demo:tiny's two dense seeds.
  assert (config.num_seeds, config.dense_seeds) == (1, 2)
  assert [[run['seed'] for run in r['runs']] for r in rows] == [[0, 1]] + [[0]] * 4
  assert len(fake_finetunes.calls) == len(rows) + 1
  done = [line for line in said if line.lstrip().startswith('done ')]
  assert len(done) == 6 and done[-1].endswith('; 6/6 runs done')
  omp = experiments.run(tiny(**{'mode': 'transfer', 'transfer.variant': 'omp',
                                'transfer.omp_rounds': 2, 'transfer.datasets': 'digits'}),
                     str(tmp_path / 'omp'))
  assert [round(r['sparsity'], 4) for r in omp['digits']['rows']] == [0.0, 0.2, 0.36]


@pytest.mark.slow
def test_transfer_mode_fine_tunes_its_tickets_end_to_end(tmp_path):
  """Transfer mode's one real run: one-shot magnitude tickets of θ_p fine-tuned on a task."""
  config = tiny(**{'mode': 'transfer', 'transfer.variant': 'omp', 'transfer.omp_rounds': 1,
                   'transfer.datasets': 'digits', 'model.width_multiplier': 0.0625})
  out = experiments.run(config, str(tmp_path))
  rows = out['digits']['rows']
  assert [(r['ticket'], round(r['sparsity'], 4)) for r in rows] == [('dense', 0.0),
                                                                    ('omp_01', 0.2)]
  assert all(0 < r['test_accuracy'] <= 1 and isinstance(r['matching'], bool) for r in rows)
  # The band: the two dense runs' mean less their std (demo:tiny's dense_seeds=2).
  assert len(rows[0]['runs']) == 2 and len(rows[1]['runs']) == 1
  line = rows[0]['test_accuracy'] - rows[0]['test_accuracy_std']
  assert rows[1]['matching'] == (rows[1]['test_accuracy'] >= line - 1e-9)
  assert os.path.exists(tmp_path / 'results_digits.csv')
  again = experiments.run(config, str(tmp_path))  # finished: read back, not recomputed
  assert again['digits']['rows'] == rows


@pytest.mark.parametrize('field, value, match', [
    ('imp.fraction', 1.5, 'imp.fraction=1.5: must be in \\(0, 1\\)'),
    ('data.dataset', 'mnist', "data.dataset='mnist': unknown dataset"),
    ('pretrained.source', 'torchvision', 'pretrained.path'),
    ('data.eval_batch_size', 500, 'multiple of the 8 devices'),
    ('imp.pruning', 'random', 'already prunes at random.*random_baseline=False'),
])
def test_bad_values_stop_before_any_compute(tmp_path, field, value, match):
  overrides = {field: value}
  if field == 'data.eval_batch_size':
    overrides['num_devices'] = 0
  with pytest.raises(ValueError, match=match):
    experiments.run(tiny(**overrides), str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w' / 'round_00')


def test_missing_checkpoint_file_and_foreign_workdir(fake_imp_run, tmp_path):
  with pytest.raises(ValueError, match='no such file'):
    experiments.run(tiny(**{'pretrained.source': 'moco',
                            'pretrained.path': str(tmp_path / 'nope.pth.tar')}),
                    str(tmp_path / 'w'))
  workdir, _ = fake_imp_run
  with pytest.raises(ValueError, match='holds another experiment.*imp.fraction'):
    experiments.run(tiny(**{'imp.fraction': 0.3}), workdir)


def _cli(workdir: str, *extra: str) -> list[str]:
  # The run's compilation cache (tests/conftest.py): programs compiled by an earlier run.
  cache = os.environ['JAX_COMPILATION_CACHE_DIR']
  return [sys.executable, '-m', 'lth_jax.main', f'--config={ROOT / "configs" / "demo.py"}:tiny',
          f'--workdir={workdir}', f'--compilation_cache={cache}', *TINY,
          '--config.imp.random_baseline=False', *extra]


def _kill_at_first_checkpoint(proc: subprocess.Popen, run: pathlib.Path,
                              timeout: float = 240) -> None:
  """SIGKILLs `proc` as soon as `run` (a fine-tuning run's folder) holds a checkpoint."""
  deadline = time.time() + timeout
  while not (run.is_dir() and any(p.name.isdigit() for p in run.iterdir())):
    assert proc.poll() is None, 'the run ended before it could be killed'
    assert time.time() < deadline, f'{run} never got a checkpoint'
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def test_cli_finds_a_config_by_its_name():
  from lth_jax import main  # defines the command line's flags; nothing else here reads them
  by_name = main.load_config('demo:tiny')
  assert by_name.to_dict() == main.load_config(f'{ROOT / "configs" / "demo.py"}:tiny').to_dict()
  assert by_name.data.dataset == 'digits' and main.load_config('paper_offline').mode == 'paper'


@pytest.mark.parametrize('overrides, match', [
    ({'imp.fraction': 0.0}, r'config\.imp\.fraction=0\.0: must be in \(0, 1\)'),
    ({'imp.num_rounds': 0}, r'config\.imp\.num_rounds=0: must be >= 1'),
    ({'imp.pruning': 'l1'}, r"config\.imp\.pruning='l1': .*'magnitude'"),
    ({'imp.rewind_scope': 'head'}, r"config\.imp\.rewind_scope='head': .*'prunable'"),
    ({'num_seeds': 0}, r'config\.num_seeds=0: '),
    ({'imp.rewind': 'step', 'imp.rewind_step': 3, 'imp.prune_first': True},
     r"config\.imp\.rewind='step': .*prune_first"),
    # Imp mode ignored the dense seeds of a run without a dense round.
    ({'dense_seeds': 2, 'imp.prune_first': True}, r'config\.imp\.prune_first=True: .*no round is dense'),
])
def test_imp_fields_are_checked_by_the_spec_and_named(overrides, match):
  with pytest.raises(errors.ConfigError, match=match):
    defaults.validate(tiny(**overrides))


def test_a_check_of_the_imp_spec_is_a_config_check(monkeypatch):
  """Validation happens once: the config's IMP checks are ImpSpec's, named by field."""
  original = imp.ImpSpec.__post_init__

  def stricter(self):
    original(self)
    if self.fraction > 0.5:
      raise ValueError('fraction must be at most 0.5 in this test.')

  monkeypatch.setattr(imp.ImpSpec, '__post_init__', stricter)
  with pytest.raises(errors.ConfigError,
                     match=r'config\.imp\.fraction=0\.6: must be at most 0\.5 in this test'):
    defaults.validate(tiny(**{'imp.fraction': 0.6}))
  defaults.validate(tiny(**{'imp.fraction': 0.4}))


def test_random_layerwise_names_the_ticket_baseline_only():
  # The IMP criterion (random scores, each layer's count) is 'layerwise_random', as
  # 'layerwise_magnitude'; 'random_layerwise' is the baseline with a ticket's layer profile.
  assert 'layerwise_random' in pruning.CRITERIA and 'random_layerwise' not in pruning.CRITERIA
  assert pruning.RANDOM_BASELINES == {'random_global': False, 'random_layerwise': True}
  assert 'random_layerwise' in transfer.VARIANTS
  no_branch = {'imp.random_baseline': False}
  # The old name of the criterion is accepted as it (a workdir recorded under it resumes).
  old = tiny(**{'imp.pruning': 'random_layerwise', **no_branch})
  defaults.validate(old)
  assert defaults.criterion(old) == 'layerwise_random'
  assert experiments.specs.build(old).imp.spec.pruning == 'layerwise_random'
  assert list(experiments.imp.branches(experiments.specs.build(old))) == ['random_layerwise']
  defaults.validate(tiny(**{'imp.pruning': 'layerwise_random', **no_branch}))
  for name in ('layerwise_random', 'random_layerwise', 'random'):
    with pytest.raises(errors.ConfigError, match='already prunes at random'):
      defaults.validate(tiny(**{'imp.pruning': name}))
  defaults.validate(tiny(**{'imp.pruning': 'snip'}))  # scores by the data: a baseline helps


@pytest.mark.slow
def test_cli_rejects_a_bad_value_with_a_message(tmp_path):
  proc = subprocess.run(_cli(str(tmp_path / 'w'), '--config.imp.fraction=1.5'), cwd=ROOT,
                        capture_output=True, text=True, env={**os.environ, 'XLA_FLAGS': ''})
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      'ConfigError: config.imp.fraction=1.5: must be in (0, 1), got 1.5: it is the share '
      'of surviving weights pruned each round (the paper uses 0.2).')
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'w').exists()
  verbose = subprocess.run(_cli(str(tmp_path / 'w'), '--config.imp.fraction=1.5',
                                '--verbosity=1'), cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, 'XLA_FLAGS': ''})
  assert verbose.returncode != 0 and 'Traceback' in verbose.stderr


@pytest.mark.slow
def test_divergence_stops_with_a_message_records_nothing_and_a_fixed_rerun_resumes(
    tmp_path, fake_finetunes):
  workdir = tmp_path / 'w'
  proc = subprocess.run(_cli(str(workdir), '--config.optim.learning_rate=1e4'), cwd=ROOT,
                        capture_output=True, text=True, env={**os.environ, 'XLA_FLAGS': ''})
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  message = proc.stderr.strip().splitlines()[-1]
  assert message.startswith('DivergenceError: Training diverged (mode imp, magnitude round 0, '
                            'seed 0, epoch 1, step ')
  assert 'at learning rate' in message and '--config.optim.learning_rate' in message
  assert not list(workdir.glob('**/round.json'))  # no accuracy of a diverged run anywhere
  assert not list(workdir.glob('results.*'))
  assert not (workdir / 'magnitude' / 'round_00' / 'seed_0').exists()
  log = json.load(open(workdir / 'diverged.json'))
  assert len(log) == 1 and (workdir / log[0]['moved_to']).is_dir()
  # The fix, as the message says: the same command with a lower learning rate (in this
  # process, on fake fine-tunes: what is tested is that the workdir takes it).
  out = experiments.run(tiny(**{'imp.random_baseline': False}), str(workdir))
  records = out['curves']['magnitude']
  assert [r['round'] for r in records] == [0, 1, 2]
  assert all(0.1 < r['test_accuracy'] <= 1 for r in records)
  trained = [os.path.relpath(c['dir'], workdir) for c in fake_finetunes.calls]
  assert trained[0] == os.path.join('magnitude', 'round_00', 'seed_0')  # the diverged run


# -------------------------------------------------- experiments wired to a fake fine-tune

class FakeFinetunes:
  """Stands in for `finetune.make_finetune`: records every call, trains nothing.

  A 'trained' network is its start plus 0.1 per round of its checkpoint folder; the
  late-rewinding point is the start plus 1.
  """

  def __init__(self):
    self.calls = []

  def __call__(self, experiment, model, *args, **kwargs):
    def finetune(variables, masks_, *, seed, checkpoint_dir, rewind_step=None,
                 continue_from=None):
      variables = jax.device_get(dict(variables))
      self.calls.append({'dir': os.path.relpath(checkpoint_dir, config_root[0]), 'seed': seed,
                         'variables': variables})
      shifted = lambda by: {'params': jax.tree.map(lambda x: np.asarray(x) + by,
                                                   variables['params']),
                            'batch_stats': variables['batch_stats']}
      accuracy = 0.5 + 0.01 * seed
      return training.FitResult(
          metric='accuracy', best_val=accuracy, best_epoch=1, test=accuracy,
          test_metrics={'accuracy': accuracy}, history=[], variables=shifted(np.float32(0.1)),
          rewind_variables=shifted(np.float32(1.0)) if rewind_step is not None else None)
    return finetune


config_root = ['']


@pytest.fixture
def fake(monkeypatch, tmp_path):
  config_root[0] = str(tmp_path)
  recorder = FakeFinetunes()
  monkeypatch.setattr(wiring, 'make_finetune', recorder)
  return recorder


def _leaf(variables, *path):
  node = variables['params']
  for key in path:
    node = node[key]
  return np.asarray(node)


def test_dense_seeds_draw_their_own_head_from_one_theta_p(fake, tmp_path):
  config = tiny(**{'pretrained.source': 'pretrain', 'imp.num_rounds': 1,
                   'imp.random_baseline': False, 'dense_seeds': 3})
  experiments.run(config, str(tmp_path))
  dense = {c['seed']: c['variables'] for c in fake.calls if c['dir'].startswith('magnitude')}
  assert sorted(dense) == [0, 1, 2]
  for seed in (1, 2):
    # The task's fresh head differs between seeds; every pre-trained weight is θ_p's.
    assert not np.array_equal(_leaf(dense[0], 'fc', 'kernel'), _leaf(dense[seed], 'fc', 'kernel'))
    for path in (('conv1', 'kernel'), ('layer1_0', 'conv1', 'kernel'),
                 ('layer4_1', 'conv2', 'kernel')):
      np.testing.assert_array_equal(_leaf(dense[0], *path), _leaf(dense[seed], *path))


def test_random_baseline_rewinds_where_the_imp_run_does(fake, tmp_path):
  config = tiny(**{'imp.num_rounds': 3, 'imp.rewind': 'step', 'imp.rewind_step': 2})
  experiments.run(config, str(tmp_path))
  theta_k = rounds.load_rewind_point(str(tmp_path / 'magnitude'),
                                  fake.calls[0]['variables'])
  # θ_k is the dense run's early weights (the fake's start + 1), not θ_p.
  np.testing.assert_allclose(_leaf(theta_k, 'layer1_0', 'conv1', 'kernel'),
                             _leaf(fake.calls[0]['variables'], 'layer1_0', 'conv1', 'kernel')
                             + 1, rtol=1e-6)
  later = [c for c in fake.calls if 'round_00' not in c['dir']]
  assert {c['dir'].split(os.sep)[0] for c in later} == {'magnitude', 'random'}
  for call in later:
    round_mask = rounds.load_round_mask(str(tmp_path / call['dir'].split(os.sep)[0]),
                                     int(call['dir'].split(os.sep)[1][6:]))
    want = masks.apply(theta_k['params'], round_mask)
    for got, expected in zip(jax.tree.leaves(call['variables']['params']),
                             jax.tree.leaves(want)):
      np.testing.assert_array_equal(got, expected)


def test_random_baseline_starts_every_round_afresh_under_prunable_rewind_scope(fake, tmp_path):
  """The reference's train_random.py: each sparsity prunes θ_p at random and trains a fresh
  head, while its detection IMP continues the head from the round before."""
  config = tiny(**{'imp.num_rounds': 4, 'imp.rewind_scope': 'prunable', 'dense_seeds': 0})
  experiments.run(config, str(tmp_path))
  calls = {tuple(c['dir'].split(os.sep)[:2]): c['variables'] for c in fake.calls}
  start = calls['magnitude', 'round_00']
  # The fake adds 0.1 per fine-tune: a head's offset from its start counts the rounds of
  # training it carries.
  carried = {(method, int(k[6:])): round(float(np.mean(
      _leaf(v, 'fc', 'kernel') - _leaf(start, 'fc', 'kernel'))) / 0.1)
             for (method, k), v in calls.items()}
  assert carried == {('magnitude', 0): 0, ('magnitude', 1): 1, ('magnitude', 2): 2,
                     ('magnitude', 3): 3, ('random', 1): 0, ('random', 2): 0, ('random', 3): 0}
  for k in (1, 2, 3):
    got = calls['random', f'round_{k:02d}']
    want = masks.apply(start['params'], rounds.load_round_mask(str(tmp_path / 'random'), k))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves({**start, 'params': want})):
      np.testing.assert_array_equal(a, b)


def test_more_seeds_train_only_the_new_seeds_and_keep_the_old(fake, tmp_path):
  experiments.run(tiny(**{'imp.random_baseline': False, 'dense_seeds': 0}), str(tmp_path))
  first = {(c['dir'], c['seed']) for c in fake.calls}
  masks_before = [rounds.load_round_mask(str(tmp_path / 'magnitude'), k) for k in range(4)]
  fake.calls.clear()
  out = experiments.run(tiny(**{'imp.random_baseline': False, 'dense_seeds': 0,
                                'num_seeds': 2}), str(tmp_path))
  assert {c['seed'] for c in fake.calls} == {1}
  assert sorted(c['dir'] for c in fake.calls) == sorted(
      d.replace('seed_0', 'seed_1') for d, _ in first)
  for k, record in enumerate(out['curves']['magnitude']):
    assert [r['seed'] for r in record['runs']] == [0, 1]
    assert record['test_accuracy'] == pytest.approx(0.505)
    after = rounds.load_round_mask(str(tmp_path / 'magnitude'), k)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after),
                                                    jax.tree.leaves(masks_before[k])))
  with pytest.raises(errors.WorkdirError, match='num_seeds: 2 -> 1'):
    experiments.run(tiny(**{'imp.random_baseline': False, 'dense_seeds': 0}), str(tmp_path))


def test_a_workdir_recorded_under_the_old_criterion_name_resumes_unchanged(fake, tmp_path):
  """`imp.pruning='random_layerwise'` (now 'layerwise_random') keeps its folder, label and
  masks: its workdir resumes with nothing retrained."""
  overrides = {'imp.random_baseline': False, 'dense_seeds': 0, 'imp.num_rounds': 3}
  old = tmp_path / 'old'
  first = experiments.run(tiny(**{'imp.pruning': 'random_layerwise', **overrides}), str(old))
  assert (old / 'random_layerwise' / 'round_02').is_dir()
  assert not (old / 'layerwise_random').exists()
  recorded = json.loads((old / 'experiment.json').read_text())
  assert recorded['imp']['pruning'] == 'random_layerwise'
  trained = len(fake.calls)
  again = experiments.run(tiny(**{'imp.pruning': 'random_layerwise', **overrides}), str(old))
  assert len(fake.calls) == trained  # nothing retrained
  summary = lambda out: [(r['round'], r['sparsity'], r['test_accuracy'])
                         for r in out['curves']['random_layerwise']]
  assert summary(again) == summary(first) and len(summary(first)) == 3
  # The same masks as the criterion under its new name.
  experiments.run(tiny(**{'imp.pruning': 'layerwise_random', **overrides}),
                  str(tmp_path / 'new'))
  for k in range(3):
    a = rounds.load_round_mask(str(old / 'random_layerwise'), k)
    b = rounds.load_round_mask(str(tmp_path / 'new' / 'layerwise_random'), k)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_the_specs_hold_every_value_a_run_reads_from_the_config():
  """The config is read once, into specs (the modes and the wiring read only these)."""
  config = tiny(**{'seed': 3, 'num_seeds': 2, 'dense_seeds': 3, 'imp.fraction': 0.3,
                   'imp.pruning': 'random_layerwise', 'imp.random_baseline': False,
                   'pretrained.source': 'pretrain', 'pretrain.optim.num_epochs': 2,
                   'pretrain.optim.schedule': 'cosine',
                   'model.half_precision': True, 'data.batch_size': 32})
  defaults.validate(config)
  experiment = experiments.specs.build(config)
  search = experiment.imp.spec
  assert experiment.seeds == search.seeds == (3, 4) and search.dense_seeds == (3, 4, 5)
  assert search.pruning_seed == 3 and search.fraction == 0.3
  # The criterion under its new name; its folder keeps the name given.
  assert (search.pruning, experiment.imp.pruning) == ('layerwise_random', 'random_layerwise')
  assert experiment.recipe == defaults.recipe(config.optim)
  assert experiment.pretrained.recipe.num_epochs == 2
  assert experiment.pretrained.datasets == (config.pretrain.dataset,)
  assert experiment.datasets == ('digits',) and experiment.data.batch_size == 32
  assert experiment.model.dtype == training.compute_dtype(True)
  assert experiment.section is None  # mode 'imp' has no section of its own


def test_a_run_that_stops_on_a_missing_or_bad_input_leaves_nothing_behind(fake, tmp_path):
  run = tmp_path / 'w'
  with pytest.raises(errors.DatasetNotFoundError, match="'cifar10' is not prepared"):
    experiments.run(tiny(**{'data.dataset': 'cifar10', 'data.data_dir': str(tmp_path)}),
                    str(run))
  assert not run.exists()
  config = tiny(**{'pretrained.source': 'torchvision'})
  model = _model(config)
  wider = _model(tiny(**{'model.width_multiplier': 0.25}))
  for name, source in (('wrong_width.npz', wider), ('good.npz', model)):
    variables = init_variables(source, jax.random.key(0), 8)
    np.savez(tmp_path / name, **convert.to_pytorch(jax.device_get(variables)))
  config.pretrained.path = str(tmp_path / 'wrong_width.npz')
  with pytest.raises(errors.CheckpointError, match='width_multiplier=0.25'):
    experiments.run(config, str(run))
  assert not run.exists()
  # Fixed: the same workdir is claimed now, with the checkpoint's fingerprint.
  config.pretrained.path = str(tmp_path / 'good.npz')
  experiments.run(config, str(run))
  inputs = json.load(open(run / 'inputs.json'))
  assert inputs == {'pretrained.path': workdir_lib.file_sha256(
      str(tmp_path / 'good.npz'))}


def test_tickets_sharing_a_file_name_are_all_kept_under_distinct_names(tmp_path):
  model = _model(tiny())
  params = init_variables(model, jax.random.key(0), 8)['params']
  written = {}
  for k, fraction in ((2, 0.36), (4, 0.59)):
    ticket = pruning.to_sparsity(params, masks.init(params), fraction)
    rounds.save_round_mask(str(tmp_path / 'run' / f'round_{k:02d}'), ticket)
    written[k] = ticket
  files = [str(tmp_path / 'run' / f'round_{k:02d}' / 'mask_torch.npz') for k in (2, 4)]
  folder = str(tmp_path / 'run' / 'round_02' / 'mask')
  assert transfer.ticket_names(files + [folder]) == [
      'round_02/mask_torch', 'round_04/mask_torch', 'round_02']
  config = tiny(**{'mode': 'transfer', 'transfer.masks': ','.join(files)})
  tickets = transfer.load_tickets(transfer.spec(config))
  assert list(tickets) == ['round_02/mask_torch', 'round_04/mask_torch']
  for k, name in ((2, 'round_02/mask_torch'), (4, 'round_04/mask_torch')):
    assert masks.sparsity(tickets[name]) == pytest.approx(masks.sparsity(written[k]))
  with pytest.raises(errors.ConfigError, match='lists .*round_02/mask_torch.npz.* and '
                                               '.*round_02/mask_torch.npz'):
    transfer.load_tickets(transfer.spec(tiny(**{
        'mode': 'transfer', 'transfer.masks': ','.join([files[0], files[0]])})))
  with pytest.raises(errors.ConfigError, match="both be named 'round_02'"):
    transfer.load_tickets(transfer.spec(tiny(**{
        'mode': 'transfer', 'transfer.masks': folder,
        'transfer.imp_workdir': str(tmp_path / 'run')})))


def test_tickets_differing_only_in_extension_get_distinct_relative_names(tmp_path):
  model = _model(tiny())
  params = init_variables(model, jax.random.key(0), 8)['params']
  rounds.save_round_mask(str(tmp_path / 'a' / 'round_02'),
                      pruning.to_sparsity(params, masks.init(params), 0.36))
  npz = tmp_path / 'a' / 'round_02' / 'mask_torch.npz'
  save_file(dict(np.load(npz)), str(npz.with_suffix('.safetensors')))
  config = tiny(**{'mode': 'transfer',
                   'transfer.masks': f'{npz},{npz.with_suffix(".safetensors")}'})
  tickets = transfer.load_tickets(transfer.spec(config))
  assert list(tickets) == ['mask_torch.npz', 'mask_torch.safetensors']
  assert all(masks.sparsity(t) == pytest.approx(0.36, abs=1e-3) for t in tickets.values())
  listed = ['a/round_02.pth', 'a/round_02.npz', 'b/round_02.pth', 'mask-1.pt',
            'mask-1.pth.tar', 'x/r']
  for name in listed:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).touch()
  # A file whose path ends with x/r's whole path: x/r is named by all of it.
  inner = tmp_path.joinpath(*(tmp_path / 'x' / 'r').parts[1:])
  inner.parent.mkdir(parents=True)
  inner.touch()
  (tmp_path / 'round_04' / 'mask').mkdir(parents=True)
  names = transfer.ticket_names([str(tmp_path / p) for p in listed]
                                + [str(inner), str(tmp_path / 'round_04' / 'mask')])
  whole = str(tmp_path / 'x' / 'r').lstrip(os.sep)
  assert names == ['round_02.pth', 'round_02.npz', 'round_02', 'mask-1.pt', 'mask-1.pth.tar',
                   whole, f'{tmp_path.name}/{whole}', 'round_04']
  # Every name is a relative path that stays under the folder of the runs.
  for name in names:
    assert os.path.normpath(os.path.join('runs', name)).startswith('runs' + os.sep), name
  # An orbax folder x/mask and a folder x would share a name: refused, both named.
  with pytest.raises(errors.ConfigError, match=r"lists '.*/round_04/mask' and '.*/round_04', "
                                               r"which would both be named '.*/round_04'"):
    transfer.ticket_names([str(tmp_path / 'round_04'), str(tmp_path / 'round_04' / 'mask')])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _files(root: pathlib.Path) -> list[str]:
  """The files under a workdir; an orbax checkpoint (its inner files are named by content
  and process) and TensorBoard event files (named by host and time) count as one each."""
  names = []
  for folder, dirs, files in os.walk(root):
    rel = os.path.relpath(folder, root)
    if '_CHECKPOINT_METADATA' in files:
      names.append(f'{rel}/<orbax>')
      dirs.clear()
      continue
    names += [f'{rel}/<events>' if 'tfevents' in f else f'{rel}/{f}' for f in files]
  return sorted(set(names))


def _run_cli(workdir: pathlib.Path, *extra: str, devices: int = 2, process: str = '',
             wait: bool = True) -> subprocess.Popen:
  """`python -m lth_jax.main` on demo:tiny's dense round (one seed) and one pruned round of
  both branches (three fine-tunes) on `devices` CPU devices; `process` adds the flags of
  one process of several."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  proc = subprocess.Popen(
      [*_cli(str(workdir), '--config.imp.num_rounds=2', '--config.dense_seeds=1',
             '--config.num_devices=0', '--config.imp.random_baseline=True', *extra),
       *process.split()], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  if wait:
    proc.out, proc.err = proc.communicate(timeout=600)
    assert proc.returncode == 0, proc.err[-3000:]
  return proc


def _results(workdir: pathlib.Path) -> list[dict]:
  rows = json.load(open(workdir / 'results.json'))
  for row in rows:
    row.pop('seconds')
  return rows


def _same_masks(a: pathlib.Path, b: pathlib.Path, count: int = 3) -> None:
  """Each branch's masks of the first `count` rounds (the last one made, not trained)."""
  for method in ('magnitude', 'random'):
    for k in range(1 if method == 'random' else 0, count):
      ma, mb = (rounds.load_round_mask(str(root / method), k) for root in (a, b))
      assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(ma), jax.tree.leaves(mb)))


@pytest.mark.slow
def test_the_command_line_gives_one_result_on_two_processes_and_after_a_kill(tmp_path):
  """One tiny IMP run from the command line three ways, on two CPU devices: in one
  process (the reference), in two processes of one device each, and killed mid-round and
  rerun from the config its workdir recorded (with an override). The reference's log holds
  only lth_jax's lines."""
  one, two, crashed = tmp_path / 'one', tmp_path / 'two', tmp_path / 'crashed'
  reference = _run_cli(one)
  lines = reference.err.splitlines()
  own = {p.name for p in (ROOT / 'lth_jax').rglob('*.py')}
  files = [re.match(r'[IWEF]\d{4} [\d:.]+ +\d+ (\S+):\d+\] ', line) for line in lines]
  others = [line for line, f in zip(lines, files) if not (f and f[1] in own)]
  assert lines and not others, f'{len(others)} of {len(lines)} lines: {others[:5]}'
  assert len(_results(one)) == 4

  # Two processes train the dense round only (the reference's first two rows) and prune
  # round 1.
  port = _free_port()
  workers = [_run_cli(two, '--config.imp.num_rounds=1', devices=1, wait=False, process=(
      f'--coordinator_address=127.0.0.1:{port} --num_processes=2 --process_id={i}'))
      for i in range(2)]
  logs = [w.communicate(timeout=600) for w in workers]
  for worker, (out, err) in zip(workers, logs):
    assert worker.returncode == 0, err[-3000:]
  assert 'Process 1 of 2' in logs[1][1] and '2 global cpu device(s)' in logs[1][1]
  reference = {(r['method'], r['round']): r for r in _results(one)}
  rows = {(r['method'], r['round']): r for r in _results(two)}
  assert set(rows) == {key for key in reference if key[1] == 0}
  for key, row in rows.items():
    assert row['sparsity'] == reference[key]['sparsity']
    for run_a, run_b in zip(row['runs'], reference[key]['runs'], strict=True):
      # within one of the 355 test digits
      assert abs(run_a['test_accuracy'] - run_b['test_accuracy']) <= 1 / 355 + 1e-9
  _same_masks(one, two, count=2)
  # Only the chief wrote the shared files: files the one process wrote, none left over.
  assert set(_files(two)) <= set(_files(one))

  # Killed inside round 1 right after a mid-epoch checkpoint (round 0 done), and rerun by
  # the command that reruns the config the workdir recorded, an override on top: the
  # reference's results and masks. (A run stopped inside round 0 and rerun is
  # test_cli_errors.py's full disk.)
  _kill_at_first_checkpoint(_run_cli(crashed, wait=False),
                            crashed / 'magnitude' / 'round_01' / 'seed_0')
  assert (crashed / 'magnitude' / 'round_00' / 'round.json').exists()
  assert not (crashed / 'magnitude' / 'round_01' / 'round.json').exists()
  rerun = subprocess.run(
      [sys.executable, '-m', 'lth_jax.main', f'--config={crashed / "experiment.json"}',
       '--config.checkpoint_every_steps=7', f'--workdir={crashed}',
       f'--compilation_cache={os.environ["JAX_COMPILATION_CACHE_DIR"]}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f'Resuming imp in {crashed}' in rerun.stdout
  assert json.loads((crashed / 'experiment.json').read_text())['checkpoint_every_steps'] == 7
  assert _results(crashed) == _results(one)
  _same_masks(crashed, one)


def test_an_input_error_stops_before_theta_p_is_pretrained(tmp_path):
  # θ_p pre-trained in the workdir: a missing ticket file must stop the run before that work
  # is spent and before the workdir is claimed, so the fixed rerun is accepted.
  run = tmp_path / 'w'
  missing = str(tmp_path / 'round_02.npz')
  config = tiny(**{'mode': 'transfer', 'transfer.masks': missing,
                   'pretrained.source': 'pretrain', 'pretrain.dataset': 'digits'})
  with pytest.raises((errors.ConfigError, FileNotFoundError), match='round_02.npz'):
    experiments.run(config, str(run))
  assert not run.exists()


@pytest.mark.parametrize('env, joins', [
    ({}, False),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, False),   # one task: nothing to join
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}, True),
    ({'OMPI_MCA_orte_hnp_uri': 'x'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, False),        # a single-host TPU VM
    ({'TPU_WORKER_HOSTNAMES': 't1,t2,t3,t4'}, True),       # a pod slice
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
])
def test_a_detected_cluster_is_joined_without_flags(monkeypatch, env, joins):
  from lth_jax.runtime import sharding
  for name in ('SLURM_JOB_ID', 'SLURM_NTASKS', 'OMPI_MCA_orte_hnp_uri', 'TPU_WORKER_HOSTNAMES',
               'TPU_PROCESS_ADDRESSES', 'JAX_COORDINATOR_ADDRESS'):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert sharding.cluster_detected() is joins
