"""Experiments end to end on the shipped offline data: configs, IMP, transfer, CLI, resume."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lth_jax import defaults, experiments, imp, masks

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / 'configs').glob('*.py'))
# The tiny demo, with mid-epoch checkpoints so that a kill lands inside a round.
TINY = ['--config.num_devices=1', '--config.checkpoint_every_steps=5']


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
  if config.pretrained.source not in ('random', 'pretrain'):
    config.pretrained.path = str(tmp_path / 'weights.pth')
    (tmp_path / 'weights.pth').write_bytes(b'')
  if config.mode == 'transfer' and config.transfer.variant != 'omp':
    config.transfer.imp_workdir = str(tmp_path)
  defaults.validate(config, tuple(experiments.data.DATASETS))


@pytest.fixture(scope='module')
def imp_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('imp'))
  out = experiments.run(tiny(), workdir)
  return workdir, out


def test_imp_experiment_writes_rounds_table_plot_and_extreme_sparsity(imp_run):
  workdir, out = imp_run
  curves = out['curves']
  assert set(curves) == {'magnitude', 'random'}
  assert [round(r['sparsity'], 4) for r in curves['magnitude']] == [0.0, 0.2, 0.36]
  # The random baseline shares the dense round and prunes to the same sparsities.
  assert [round(r['sparsity'], 4) for r in curves['random']] == [0.0, 0.2, 0.36]
  assert curves['magnitude'][0]['num_seeds'] == 2 and curves['magnitude'][1]['num_seeds'] == 1
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
  ticket = imp.load_round_mask(os.path.join(workdir, 'magnitude'), 2)
  assert masks.sparsity(ticket) == pytest.approx(0.36, abs=1e-4)


def test_rerun_is_a_resume_that_recomputes_nothing(imp_run):
  workdir, out = imp_run
  tic = time.time()
  again = experiments.run(tiny(), workdir)
  assert time.time() - tic < 30
  assert again['curves'] == out['curves']


def test_transfer_of_imp_tickets_and_omp(imp_run, tmp_path):
  workdir, _ = imp_run
  config = tiny(**{'mode': 'transfer', 'transfer.imp_workdir': os.path.join(workdir, 'magnitude'),
                   'transfer.datasets': 'digits'})
  out = experiments.run(config, str(tmp_path / 'transfer'))
  rows = out['digits']['rows']
  # dense + the 4 masks of the IMP run (rounds 0..3; round 3's mask is ready, untrained).
  assert [r['ticket'] for r in rows] == ['dense', 'round_00', 'round_01', 'round_02',
                                         'round_03']
  assert [round(r['sparsity'], 4) for r in rows] == [0.0, 0.0, 0.2, 0.36, 0.488]
  assert all(isinstance(r['matching'], bool) for r in rows)
  omp = experiments.run(tiny(**{'mode': 'transfer', 'transfer.variant': 'omp',
                                'transfer.omp_rounds': 2, 'transfer.datasets': 'digits'}),
                     str(tmp_path / 'omp'))
  assert [round(r['sparsity'], 4) for r in omp['digits']['rows']] == [0.0, 0.2, 0.36]


@pytest.mark.parametrize('field, value, match', [
    ('imp.fraction', 1.5, 'imp.fraction=1.5: must be in \\(0, 1\\)'),
    ('data.dataset', 'mnist', "data.dataset='mnist': unknown dataset"),
    ('pretrained.source', 'torchvision', 'pretrained.path'),
    ('data.eval_batch_size', 500, 'multiple of the 8 devices'),
])
def test_bad_values_stop_before_any_compute(tmp_path, field, value, match):
  overrides = {field: value}
  if field == 'data.eval_batch_size':
    overrides['num_devices'] = 0
  with pytest.raises(ValueError, match=match):
    experiments.run(tiny(**overrides), str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w' / 'round_00')


def test_missing_checkpoint_file_and_foreign_workdir(imp_run, tmp_path):
  with pytest.raises(ValueError, match='no such file'):
    experiments.run(tiny(**{'pretrained.source': 'moco',
                            'pretrained.path': str(tmp_path / 'nope.pth.tar')}),
                    str(tmp_path / 'w'))
  workdir, _ = imp_run
  with pytest.raises(ValueError, match='holds another experiment.*imp.fraction'):
    experiments.run(tiny(**{'imp.fraction': 0.3}), workdir)


def _cli(workdir: str, *extra: str) -> list[str]:
  return [sys.executable, '-m', 'lth_jax.main', f'--config={ROOT / "configs" / "demo.py"}:tiny',
          f'--workdir={workdir}', *TINY, '--config.imp.random_baseline=False', *extra]


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


def test_cli_killed_twice_mid_round_resumes_to_the_same_result(tmp_path):
  env = {**os.environ, 'XLA_FLAGS': ''}
  crashed, clean = tmp_path / 'crashed', tmp_path / 'clean'
  # Kill once inside round 1, once inside round 2, each right after a mid-epoch checkpoint.
  for run in ('magnitude/round_01/seed_0', 'magnitude/round_02/seed_0'):
    proc = subprocess.Popen(_cli(str(crashed)), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_at_first_checkpoint(proc, crashed / run)
  assert not (crashed / 'magnitude' / 'round_02' / 'round.json').exists()
  subprocess.run(_cli(str(crashed)), env=env, cwd=ROOT, check=True, capture_output=True)
  subprocess.run(_cli(str(clean)), env=env, cwd=ROOT, check=True, capture_output=True)
  a = json.load(open(crashed / 'results.json'))
  b = json.load(open(clean / 'results.json'))
  for row in a + b:
    row.pop('seconds')
  assert a == b
  for k in range(4):
    ma = imp.load_round_mask(str(crashed / 'magnitude'), k)
    mb = imp.load_round_mask(str(clean / 'magnitude'), k)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(ma), jax.tree.leaves(mb)))


def test_cli_rejects_a_bad_value_with_a_message(tmp_path):
  proc = subprocess.run(_cli(str(tmp_path / 'w'), '--config.imp.fraction=1.5'), cwd=ROOT,
                        capture_output=True, text=True, env={**os.environ, 'XLA_FLAGS': ''})
  assert proc.returncode != 0
  assert 'config.imp.fraction=1.5: must be in (0, 1)' in proc.stderr
  assert not (tmp_path / 'w').exists()
