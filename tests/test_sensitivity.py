"""Tests for lth_jax.experiments.sensitivity and `python -m lth_jax.analyze --perturb`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lth_jax import experiments
from lth_jax.experiments import config as defaults
from lth_jax.experiments import sensitivity


@pytest.fixture(scope='module')
def imp_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('imp'))
  config = defaults.load_config('demo:tiny')
  config.num_devices = 1
  config.imp.num_rounds = 2
  config.imp.random_baseline = False
  out = experiments.run(config, workdir)
  return workdir, out['curves']['magnitude']


@pytest.mark.slow
def test_sweep_and_connectivity_of_an_imp_ticket(imp_workdir):
  workdir, records = imp_workdir
  perturbation, connectivity = sensitivity.run(
      workdir, sizes={'mask_swap': (0.0, 1.0), 'weight_reinit': (1.0,)}, seeds=(0,),
      lmc_seeds=(0, 1), num_points=3)
  name = 'magnitude round 1'
  swap = perturbation['mask_swap'][name]
  assert [r['size'] for r in swap] == [0.0, 1.0]
  # Size 0 is the ticket itself, fine-tuned exactly as IMP's round 1 (seed 0) was.
  assert swap[0]['test_accuracy'] == records[1]['runs'][0]['test_accuracy']
  assert len(perturbation['weight_reinit'][name]) == 1
  lmc = connectivity[name]
  assert lmc['seeds'] == [0, 1] and lmc['alpha'] == [0.0, 0.5, 1.0]
  assert lmc['test_accuracy'][0] == records[1]['runs'][0]['test_accuracy']
  errors = lmc['error']
  assert lmc['barrier'] == pytest.approx(max(errors) - (errors[0] + errors[2]) / 2)
  # Finished runs are read back: a second call gives the same numbers.
  again, _ = sensitivity.run(workdir, sizes={'mask_swap': (0.0, 1.0)}, seeds=(0,))
  assert again['mask_swap'][name] == swap


@pytest.mark.slow
def test_analyze_command_adds_the_sensitivity_sections(imp_workdir):
  workdir, _ = imp_workdir
  subprocess.run([sys.executable, '-m', 'lth_jax.analyze', f'--workdir={workdir}',
                  '--perturb=mask_swap=0,1', '--seeds=0', '--level=1'], check=True,
                 env={**os.environ, 'JAX_DISABLE_MOST_OPTIMIZATIONS': 'true'})
  text = open(os.path.join(workdir, 'analysis', 'report.md')).read()
  assert '## Perturbation sensitivity' in text
  rows = json.load(open(os.path.join(workdir, 'analysis', 'perturbation_mask_swap.json')))
  assert [r['size'] for r in rows['magnitude round 1']] == [0.0, 1.0]


@pytest.mark.slow
def test_bad_requests_say_what_to_change(imp_workdir, tmp_path):
  workdir, _ = imp_workdir
  with pytest.raises(ValueError, match='no round 7'):
    sensitivity.run(workdir, level=7)
  with pytest.raises(ValueError, match='Unknown perturbation'):
    sensitivity.parse_sizes(['mask_flip'])
  with pytest.raises(ValueError, match='KIND=SIZE,SIZE'):
    sensitivity.parse_sizes(['mask_swap=a,b'])
  assert sensitivity.parse_sizes(['mask_swap', 'weight_noise=0,2']) == {
      'mask_swap': sensitivity.DEFAULT_SIZES['mask_swap'], 'weight_noise': (0.0, 2.0)}
  with pytest.raises(FileNotFoundError, match='experiment.json'):
    sensitivity.run(str(tmp_path))
