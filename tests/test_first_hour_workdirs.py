"""Workdirs in a user's first hour: bad values stop before the claim, records cut short by a
crash, the device count and package versions, an unused data_dir, file permissions."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat

import flax
import jax
import jaxlib
import pytest

from lth_jax import errors, experiments, training
from lth_jax.analysis import imp_runs
from lth_jax.experiments import config as config_lib
from lth_jax.lottery import ticket_transfer as transfer
from lth_jax.models import create_model, init_variables
from lth_jax.runtime import files
from lth_jax.runtime import workdir as workdir_lib

# Values that passed validation and failed only once training started, after the claim.
BAD_VALUES = {
    'data.batch_size': (100000, r"config\.data\.batch_size=100000: must be in \[1, 1266\] "
                                r"\(the train split of 'digits'\)"),
    'optim.warmup_epochs': (5, r'config\.optim: warmup_epochs \(5\) must be >= 0 and below '
                               r'num_epochs \(1\)'),
    'optim.schedule': ('multistep', r'config\.optim: milestones \[91, 136\] must be strictly '
                                    r'increasing epochs .* num_epochs \(1\)'),
}


def tiny(**overrides):
  """demo:tiny on one device, one round of one seed, half its width: the fastest real run."""
  c = config_lib.load_config('demo:tiny')
  c.num_devices = 1
  c.update_from_flattened_dict({'imp.num_rounds': 1, 'imp.random_baseline': False,
                                'dense_seeds': 0, 'model.width_multiplier': 0.0625,
                                **overrides})
  return c


def truncate(path):
  """Cuts a file in half, as a crash of the machine or a full disk may leave it."""
  text = path.read_bytes()
  path.write_bytes(text[:len(text) // 2])


@pytest.fixture(scope='module')
def after_bad_values(tmp_path_factory):
  """Each bad value tried in one workdir, then the run with the fix there (the one real run).

  Returns:
    (workdir, {field: the ConfigError's message}, whether experiment.json existed before
    the fixed run, the fixed run's output).
  """
  run = tmp_path_factory.mktemp('first_hour') / 'run'
  messages = {}
  for field, (value, _) in BAD_VALUES.items():
    with pytest.raises(errors.ConfigError) as e:
      experiments.run(tiny(**{field: value}), str(run))
    messages[field] = str(e.value)
  claimed = (run / workdir_lib.EXPERIMENT_FILE).exists()
  return run, messages, claimed, experiments.run(tiny(), str(run))


def copy_of(run, tmp_path):
  target = tmp_path / 'copy'
  shutil.copytree(run, target)
  return target


# ------------------------------------------------------- values checked before the claim

def test_values_that_failed_after_the_claim_stop_before_it_and_the_fix_runs(after_bad_values):
  run, messages, claimed, out = after_bad_values
  for field, (_, pattern) in BAD_VALUES.items():
    assert re.search(pattern, messages[field]), (field, messages[field])
  # None of them claimed the workdir, so the run with the fix started there.
  assert not claimed
  assert out['curves']['magnitude'][0]['sparsity'] == 0
  assert (run / 'magnitude' / 'round_00' / 'round.json').exists()


def test_the_pretraining_recipe_is_checked_on_its_dataset():
  c = tiny(**{'pretrained.source': 'pretrain', 'pretrain.dataset': 'digits',
              'pretrain.optim.schedule': 'cosine', 'pretrain.optim.num_epochs': 3,
              'pretrain.optim.warmup_epochs': 5})
  with pytest.raises(errors.ConfigError, match=r"config\.pretrain\.optim: warmup_epochs \(5\)"
                     r".*θ_p's pre-training on 'digits'"):
    config_lib.validate(c)


def test_the_paper_modes_tasks_and_upstream_experiments_are_checked():
  c = config_lib.load_config('paper_offline:tiny')
  c.data.batch_size = 5000
  with pytest.raises(errors.ConfigError, match=r"config\.data\.batch_size=5000: must be in "
                     r"\[1, 1266\] \(the train split of 'digits'\)"):
    config_lib.validate(c)
  # The upstream experiments keep their recipe's batch of 128: too large for this set.
  c = config_lib.load_config('paper_offline:tiny')
  c.pretrain.dataset = 'animal_mnist_b_few'
  with pytest.raises(errors.ConfigError, match=r"upstream experiment of 'supervised' "
                     r".*batch_size=128: must be in \[1, 100\].*animal_mnist_b_few"):
    config_lib.validate(c)


def test_the_paper_modes_upstream_batches_must_split_over_the_devices(tmp_path):
  # The paper config's batch of 60 does; the upstream recipe's 128 does not.
  c = config_lib.load_config('paper_offline:tiny')
  c.num_devices, c.data.batch_size, c.data.eval_batch_size = 3, 60, 60
  with pytest.raises(errors.ConfigError, match=r"upstream experiment of 'supervised' .*"
                     r"batch_size=128 must be a multiple of the 3 devices"):
    experiments.run(c, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_imp_specs_and_the_rewind_step_are_checked():
  with pytest.raises(errors.ConfigError,
                     match=r'config\.imp\.rewind=\'step\': rewind="step" needs rewind_step'):
    config_lib.validate(tiny(**{'imp.rewind': 'step', 'imp.rewind_step': 0}))
  # demo:tiny's round 0 is one epoch of 1266 // 64 = 19 batches.
  with pytest.raises(errors.ConfigError, match=r'config\.imp\.rewind_step=20: must be at most '
                     r'the 19 steps of round 0'):
    config_lib.validate(tiny(**{'imp.rewind': 'step', 'imp.rewind_step': 20}))
  config_lib.validate(tiny(**{'imp.rewind': 'step', 'imp.rewind_step': 19}))


# ------------------------------------------------------------- records cut short by a crash

def test_a_record_cut_short_names_the_file_and_the_fix_or_counts_as_missing(tmp_path, caplog):
  path = tmp_path / 'record.json'
  files.write_json(str(path), {'a': [1, 2, 3]})
  assert files.read_json(str(path)) == {'a': [1, 2, 3]}
  assert files.read_json(str(tmp_path / 'absent.json'), []) == []
  truncate(path)
  with pytest.raises(errors.WorkdirError,
                     match=f'{re.escape(str(path))} cannot be read .*cut short.*Do this'):
    files.read_json(str(path), fix='Do this.')
  with caplog.at_level(logging.WARNING):
    assert files.read_json(str(path), 'missing') == 'missing'
  assert str(path) in caplog.text and 'recomputed' in caplog.text


def test_an_experiment_json_cut_short_stops_with_the_file_and_the_fix(tmp_path):
  c = tiny()
  experiments.claim(str(tmp_path), c)
  truncate(tmp_path / workdir_lib.EXPERIMENT_FILE)
  with pytest.raises(errors.WorkdirError, match=r'experiment\.json cannot be read .*delete it '
                     'and rerun the command the workdir was started with'):
    experiments.claim(str(tmp_path), c)


@pytest.mark.slow
def test_a_round_json_cut_short_is_recorded_again_from_its_checkpoints(after_bad_values,
                                                                         tmp_path):
  run = copy_of(after_bad_values[0], tmp_path)
  path = run / 'magnitude' / 'round_00' / 'round.json'
  before = json.loads(path.read_text())
  checkpoints = lambda: {str(p): p.stat().st_mtime_ns
                         for p in (path.parent / 'seed_0').rglob('*') if p.is_file()}
  saved = checkpoints()
  truncate(path)
  # The analysis of the workdir names the file and the fix.
  with pytest.raises(errors.WorkdirError,
                     match=f'{re.escape(str(path))} cannot be read.*Rerun the command'):
    imp_runs.round_record(str(path.parent))
  out = experiments.run(tiny(), str(run))
  after = json.loads(path.read_text())
  drop = lambda record: {k: v for k, v in record.items() if k != 'seconds'}
  assert drop(after) == drop(before) == drop(out['curves']['magnitude'][0])
  # Nothing was trained again: the finished checkpoint gave the run's result.
  assert checkpoints() == saved


def test_a_transfer_result_cut_short_is_recorded_again_by_its_run(tmp_path):
  model = create_model('resnet18', num_classes=10, stem='cifar', width_multiplier=0.125)
  start = jax.device_get(init_variables(model, jax.random.key(0), 16))
  calls = []

  def finetune(variables, masks, *, seed, checkpoint_dir, rewind_step=None):
    # Stands in for `fit`, which returns a finished run's result from its checkpoints.
    del masks, rewind_step
    calls.append(checkpoint_dir)
    return training.FitResult(metric='accuracy', best_val=0.5, best_epoch=1, test=0.75,
                              test_metrics={'accuracy': 0.75}, history=[],
                              variables=variables, rewind_variables=None)

  run = lambda: transfer.run_transfer(str(tmp_path), {}, start, finetune, [0],
                                      metric='accuracy')
  before = run()
  path = tmp_path / transfer.DENSE / 'seed_0' / 'result.json'
  truncate(path)
  assert run() == before and len(calls) == 2
  assert json.loads(path.read_text()) == before[0]['runs'][0]


# ------------------------------------------------------------- device count and versions

def test_experiment_json_records_the_device_counts_and_versions(after_bad_values):
  recorded = json.loads((after_bad_values[0] / workdir_lib.EXPERIMENT_FILE).read_text())
  assert recorded[workdir_lib.ENVIRONMENT] == {
      'devices': {'mesh': 1, 'per_run': 1},
      'versions': {'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
                   'flax': flax.__version__},
      'machine': {'backend': 'cpu', 'device_kind': jax.devices()[0].device_kind,
                  'cpu': workdir_lib.machine()['cpu']}}
  assert recorded[workdir_lib.ENVIRONMENT]['machine']['cpu']  # a model name, not ''
  # The config read back from the record leaves the environment out.
  assert config_lib.from_record(recorded).num_devices == 1


def test_a_resume_on_another_device_count_is_refused_with_both_and_the_ways_on(
    after_bad_values, tmp_path):
  run = copy_of(after_bad_values[0], tmp_path)
  with pytest.raises(errors.WorkdirError, match=r'trained on 1 device\(s\) and this run would '
                     r'train on 2 device\(s\).*Resume it on 1 device\(s\) '
                     r'\(--config\.num_devices=1\), or use a new --workdir'):
    experiments.run(tiny(num_devices=2), str(run))


def test_runs_side_by_side_record_their_own_count(tmp_path):
  c = tiny()
  claim = lambda devices: experiments.claim(str(tmp_path), c, devices=devices)
  claim({'mesh': 8, 'per_run': 2})
  with pytest.raises(errors.WorkdirError, match=r'8 device\(s\) \(2 a run, side by side\).*'
                     r'--config\.num_devices=8 --config\.devices_per_run=2'):
    claim({'mesh': 8, 'per_run': 1})
  assert claim({'mesh': 8, 'per_run': 2})


def test_a_workdir_recorded_before_the_device_count_resumes_on_any(tmp_path):
  c = tiny()
  claim = lambda devices: experiments.claim(str(tmp_path), c, devices=devices)
  claim({'mesh': 1, 'per_run': 1})
  path = tmp_path / workdir_lib.EXPERIMENT_FILE
  recorded = json.loads(path.read_text())
  del recorded[workdir_lib.ENVIRONMENT]  # written before the field existed
  path.write_text(json.dumps(recorded))
  assert claim({'mesh': 2, 'per_run': 2})
  # From now on the count is recorded.
  assert json.loads(path.read_text())[workdir_lib.ENVIRONMENT]['devices'] == {
      'mesh': 2, 'per_run': 2}


def test_a_resume_under_other_versions_warns_naming_both_and_goes_on(tmp_path, caplog):
  c = tiny()
  experiments.claim(str(tmp_path), c)
  path = tmp_path / workdir_lib.EXPERIMENT_FILE
  recorded = json.loads(path.read_text())
  recorded[workdir_lib.ENVIRONMENT]['versions']['jax'] = '0.0.1'
  path.write_text(json.dumps(recorded))
  with caplog.at_level(logging.WARNING):
    assert experiments.claim(str(tmp_path), c)
  assert 'jax 0.0.1' in caplog.text and f'jax {jax.__version__}' in caplog.text
  # The record keeps the versions the workdir was started under.
  assert json.loads(path.read_text())[workdir_lib.ENVIRONMENT]['versions']['jax'] == '0.0.1'


def test_a_resume_on_another_machine_warns_naming_both_and_goes_on(tmp_path, caplog):
  c = tiny()
  experiments.claim(str(tmp_path), c)
  path = tmp_path / workdir_lib.EXPERIMENT_FILE
  recorded = json.loads(path.read_text())
  here = recorded[workdir_lib.ENVIRONMENT]['machine']
  assert here == workdir_lib.machine()
  with caplog.at_level(logging.WARNING):
    assert experiments.claim(str(tmp_path), c)
  assert 'machines' not in caplog.text  # the same machine: nothing to say
  recorded[workdir_lib.ENVIRONMENT]['machine'] = {**here, 'cpu': 'Other CPU 9000'}
  path.write_text(json.dumps(recorded))
  with caplog.at_level(logging.WARNING):
    assert experiments.claim(str(tmp_path), c)
  assert 'cpu Other CPU 9000' in caplog.text and f'cpu {here["cpu"]}' in caplog.text
  assert 'results may differ between machines' in caplog.text
  # The record keeps the machine the workdir was started on; one written before the
  # machine was recorded resumes without a word about it.
  assert json.loads(path.read_text())[workdir_lib.ENVIRONMENT]['machine']['cpu'] == (
      'Other CPU 9000')
  del recorded[workdir_lib.ENVIRONMENT]['machine']
  path.write_text(json.dumps(recorded))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert experiments.claim(str(tmp_path), c)
  assert 'machines' not in caplog.text


# ------------------------------------------------------------------------ unused data_dir

def test_a_data_dir_that_no_dataset_reads_is_refused(tmp_path):
  with pytest.raises(errors.ConfigError, match=re.escape(
      "config.data.data_dir='/nonexistent' is not used: every dataset this experiment reads "
      '(digits) ships with lth_jax; remove it')):
    experiments.run(tiny(**{'data.data_dir': '/nonexistent'}), str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / workdir_lib.EXPERIMENT_FILE).exists()


def test_a_data_dir_is_kept_where_a_dataset_reads_it(tmp_path):
  c = tiny(**{'mode': 'transfer', 'transfer.variant': 'omp',
              'transfer.datasets': 'digits,cifar10', 'data.data_dir': str(tmp_path)})
  # cifar10 is looked for there (ImportError: where tensorflow-datasets is not installed).
  with pytest.raises((errors.DatasetNotFoundError, ImportError)):
    experiments.run(c, str(tmp_path / 'run'))


# ---------------------------------------------------------------------------- permissions

@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
  old = os.umask(umask)
  try:
    path = files.write_json(str(tmp_path / 'record.json'), {'a': 1})
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(path).st_mode) == mode
  assert os.listdir(tmp_path) == ['record.json']  # no temporary file left behind
