"""Tests for lth_jax.experiments.sensitivity and `python -m lth_jax.analyze --perturb`.

The IMP workdir and the sweep's fine-tunes are fake (tests/conftest.py) in this process;
the command line's test fine-tunes for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import conftest
import jax
import numpy as np
import pytest

from lth_jax import experiments
from lth_jax.experiments import config as defaults
from lth_jax.experiments import sensitivity, wiring


class StartRecordingFinetunes(conftest.FakeFinetunes):
  """`FakeFinetunes` whose calls also keep the variables and mask each fine-tune got."""

  def __call__(self, *args, **kwargs):
    finetune = super().__call__(*args, **kwargs)

    def recording(variables, masks, **run):
      result = finetune(variables, masks, **run)
      self.calls[-1].update(variables=jax.device_get(dict(variables)),
                            masks=jax.device_get(masks))
      return result
    return recording


@pytest.fixture(scope='module')
def imp_workdir(tmp_path_factory):
  """demo:tiny's workdir (2 rounds, no random branch) as fake fine-tunes leave it."""
  workdir = str(tmp_path_factory.mktemp('imp'))
  config = defaults.load_config('demo:tiny')
  config.num_devices = 1
  config.imp.num_rounds = 2
  config.imp.random_baseline = False
  fake = StartRecordingFinetunes()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(wiring, 'make_finetune', fake)
    out = experiments.run(config, workdir)
  imp_round = next(c for c in fake.calls if c['dir'].endswith(
      os.path.join('magnitude', 'round_01', 'seed_0')))
  return workdir, out['curves']['magnitude'], imp_round


def _same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_sweep_and_connectivity_of_an_imp_ticket(imp_workdir, monkeypatch, tmp_path):
  workdir, records, imp_round = imp_workdir
  # A copy: the command line's test below finds no finished sweep in the workdir.
  workdir = shutil.copytree(workdir, tmp_path / 'imp')
  fake = StartRecordingFinetunes()
  monkeypatch.setattr(wiring, 'make_finetune', fake)
  perturbation, connectivity = sensitivity.run(
      workdir, sizes={'mask_swap': (0.0, 1.0), 'weight_reinit': (1.0,)}, seeds=(0,),
      lmc_seeds=(0, 1), num_points=3)
  name = 'magnitude round 1'
  swap = perturbation['mask_swap'][name]
  assert [r['size'] for r in swap] == [0.0, 1.0]
  # Size 0 is the ticket itself, fine-tuned exactly as IMP's round 1 (seed 0) was: the
  # same start, mask and seed.
  assert swap[0]['test_accuracy'] == records[1]['runs'][0]['test_accuracy']
  size_0 = next(c for c in fake.calls if os.path.join('mask_swap', 'size_0', 'seed_0') in c['dir'])
  assert size_0['seed'] == imp_round['seed'] == 0
  assert _same(size_0['masks'], imp_round['masks'])
  assert _same(size_0['variables'], imp_round['variables'])
  size_1 = next(c for c in fake.calls if os.path.join('mask_swap', 'size_1', 'seed_0') in c['dir'])
  assert not _same(size_1['masks'], imp_round['masks'])
  assert len(perturbation['weight_reinit'][name]) == 1
  lmc = connectivity[name]
  assert lmc['seeds'] == [0, 1] and lmc['alpha'] == [0.0, 0.5, 1.0]
  assert lmc['test_accuracy'][0] == records[1]['runs'][0]['test_accuracy']
  errors = lmc['error']
  assert lmc['barrier'] == pytest.approx(max(errors) - (errors[0] + errors[2]) / 2)
  # Finished runs are read back: a second call fine-tunes in the same folders (where `fit`
  # resumes a finished run, training nothing) and gives the same numbers.
  swept = [c['dir'] for c in fake.calls if 'mask_swap' in c['dir']]
  fake.calls.clear()
  again, _ = sensitivity.run(workdir, sizes={'mask_swap': (0.0, 1.0)}, seeds=(0,))
  assert again['mask_swap'][name] == swap and [c['dir'] for c in fake.calls] == swept


@pytest.mark.slow
def test_analyze_command_adds_the_sensitivity_sections(imp_workdir):
  workdir, _, _ = imp_workdir  # its sweep's two fine-tunes train for real
  subprocess.run([sys.executable, '-m', 'lth_jax.analyze', f'--workdir={workdir}',
                  '--perturb=mask_swap=0,1', '--seeds=0', '--level=1'], check=True,
                 env={**os.environ, 'JAX_DISABLE_MOST_OPTIMIZATIONS': 'true'})
  text = open(os.path.join(workdir, 'analysis', 'report.md')).read()
  assert '## Perturbation sensitivity' in text
  rows = json.load(open(os.path.join(workdir, 'analysis', 'perturbation_mask_swap.json')))
  assert [r['size'] for r in rows['magnitude round 1']] == [0.0, 1.0]


def test_bad_requests_say_what_to_change(imp_workdir, tmp_path):
  workdir, _, _ = imp_workdir
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


def test_a_workdir_of_a_mode_without_imp_rounds_is_refused(tmp_path):
  """The mode says whether its rounds can be perturbed (`Mode.perturbable`)."""
  config = defaults.base_config()
  config.mode = 'transfer'
  experiments.claim(str(tmp_path), config)
  with pytest.raises(ValueError, match=r"holds a 'transfer' experiment; .*\(mode imp\)"):
    sensitivity.experiment_config(str(tmp_path))
  config.mode = 'imp'
  experiments.claim(str(tmp_path / 'imp'), config)
  assert sensitivity.experiment_config(str(tmp_path / 'imp')).mode == 'imp'
