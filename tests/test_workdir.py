"""Workdirs that never trap the user: what a rerun may change, divergence, atomic files."""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest

from lth_jax import errors, experiments
from lth_jax.experiments import config as defaults
from lth_jax.runtime import files as results
from lth_jax.runtime import workdir


def config(**overrides):
  c = defaults.load_config('demo:tiny')
  c.update_from_flattened_dict(overrides)
  return c


def claim(path, c, **kwargs):
  return experiments.claim(str(path), c, **kwargs)


def test_changes_that_cannot_change_a_result_resume(tmp_path):
  assert not claim(tmp_path, config())
  assert claim(tmp_path, config(**{'data.data_dir': '/elsewhere', 'num_devices': 2,
                                   'data.eval_batch_size': 32, 'checkpoint_every_steps': 7,
                                   'imp.num_rounds': 9, 'num_seeds': 3}))
  # The record follows the latest run.
  recorded = json.load(open(tmp_path / workdir.EXPERIMENT_FILE))
  assert recorded['num_seeds'] == 3 and recorded['data']['data_dir'] == '/elsewhere'


@pytest.mark.parametrize('field, value', [('imp.fraction', 0.3), ('num_seeds', 0),
                                          ('dense_seeds', 1), ('model.arch', 'resnet34'),
                                          ('optim.learning_rate', 0.5)])
def test_changes_of_the_experiment_are_refused_with_the_fields_named(tmp_path, field, value):
  claim(tmp_path, config(**{'num_seeds': 1, 'dense_seeds': 2}))
  with pytest.raises(errors.WorkdirError, match=f'{field}: .* -> {value!r}'):
    claim(tmp_path, config(**{'num_seeds': 1, 'dense_seeds': 2, field: value}))


def test_a_field_missing_from_an_older_record_counts_as_its_default(tmp_path):
  claim(tmp_path, config())
  path = tmp_path / workdir.EXPERIMENT_FILE
  recorded = json.load(open(path))
  del recorded['data']['val_from_train']  # written before the field existed
  del recorded['imp']['policy']
  path.write_text(json.dumps(recorded))
  assert claim(tmp_path, config())
  recorded['data'].pop('val_from_train', None)
  path.write_text(json.dumps(recorded))
  with pytest.raises(errors.WorkdirError, match='data.val_from_train: 10000 -> 5'):
    claim(tmp_path, config(**{'data.val_from_train': 5}))


def test_a_moved_checkpoint_is_the_same_input_a_different_one_is_not(tmp_path):
  first, moved, other = (tmp_path / name for name in ('a.npz', 'b.npz', 'c.npz'))
  first.write_bytes(b'weights')
  shutil.copy(first, moved)
  other.write_bytes(b'other weights')
  run = tmp_path / 'run'
  inputs = lambda p: {'pretrained.path': workdir.file_sha256(str(p))}
  c = lambda p: config(**{'pretrained.source': 'torchvision', 'pretrained.path': str(p)})
  claim(run, c(first), inputs=inputs(first))
  assert claim(run, c(moved), inputs=inputs(moved))
  with pytest.raises(errors.WorkdirError, match='pretrained.path'):
    claim(run, c(other), inputs=inputs(other))


def test_a_new_recipe_only_after_a_divergence_and_before_training_used_the_old(tmp_path):
  claim(tmp_path, config())  # mode imp: optim.* trained */round_*/seed_*
  fixed = config(**{'optim.learning_rate': 0.01})
  with pytest.raises(errors.WorkdirError, match='only after a run in it diverged'):
    claim(tmp_path, fixed)
  run = tmp_path / 'magnitude' / 'round_00' / 'seed_0'
  run.mkdir(parents=True)
  (run / 'checkpoint').write_text('trained with the old recipe')
  error = errors.DivergenceError(str(run), epoch=1, step=3, learning_rate=0.5)
  moved = workdir.record_divergence(str(tmp_path), error)
  assert not run.exists() and os.path.isfile(os.path.join(moved, 'checkpoint'))
  assert moved == str(tmp_path / 'diverged' / '0' / 'magnitude' / 'round_00' / 'seed_0')
  log = json.load(open(tmp_path / workdir.DIVERGED_FILE))
  assert log[0]['step'] == 3 and log[0]['moved_to'] == 'diverged/0/magnitude/round_00/seed_0'
  assert claim(tmp_path, fixed)  # nothing trained with 0.05 is left
  # Once the new recipe has trained something, another change would mix recipes.
  run.mkdir(parents=True)
  with pytest.raises(errors.WorkdirError, match='mix two recipes'):
    claim(tmp_path, config(**{'optim.learning_rate': 0.001}))


def test_workdir_for_names_a_folder_per_config(tmp_path):
  a, b = config(), config(**{'imp.num_rounds': 2})
  named = lambda c: experiments.workdir_for(str(tmp_path), c)
  assert named(a) == named(config()) != named(b)
  assert os.path.dirname(named(a)) == str(tmp_path)
  assert os.path.basename(named(a)).startswith('imp_digits_')


def test_the_runtime_claims_plain_records_by_the_rules_it_is_given(tmp_path):
  # The runtime knows no setting: which fields may change comes with the call.
  record = {'run': {'rounds': 2, 'cache': '/a'}, 'lr': 0.1}
  rules = workdir.ResumeRules(neutral=('run.cache',),
                              growing={'run.rounds': lambda old, new: new['run.rounds'] >=
                                       old['run.rounds']},
                              rerun_fix=lambda path: f'rerun with {path}')
  assert not workdir.claim(str(tmp_path), record, rules=rules)
  assert workdir.claim(str(tmp_path), {'run': {'rounds': 3, 'cache': '/b'}, 'lr': 0.1},
                       rules=rules)
  for changed, field in (({'rounds': 2, 'cache': '/b'}, 'run.rounds: 3 -> 2'),
                         ({'rounds': 3, 'cache': '/b', 'new': 1}, 'run.new: None -> 1')):
    with pytest.raises(errors.WorkdirError, match=f'{field}.*rerun with .*experiment.json'):
      workdir.claim(str(tmp_path), {'run': changed, 'lr': 0.1}, rules=rules)
  # A field the record lacks counts as its default.
  assert workdir.claim(str(tmp_path), {'run': {'rounds': 3, 'cache': '/b', 'new': 1},
                                       'lr': 0.1}, rules=rules, defaults={'run': {'new': 1}})
  with pytest.raises(errors.WorkdirError, match=r'lr: 0\.1 -> 0\.2'):
    workdir.claim(str(tmp_path), {'run': {'rounds': 3, 'cache': '/b', 'new': 1}, 'lr': 0.2},
                  rules=rules)


def test_no_module_below_the_experiment_layer_reads_a_config():
  root = os.path.dirname(os.path.dirname(os.path.abspath(experiments.__file__)))
  readers = []
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      relative = os.path.relpath(path, root)
      if (not name.endswith('.py') or relative.startswith('experiments' + os.sep)
          or relative in ('main.py', 'analyze.py')):
        continue
      text = open(path).read()
      if 'ml_collections' in text or 'ConfigDict' in text:
        readers.append(relative)
  assert not readers


def test_concurrent_writers_of_one_file_never_share_a_temporary_file(tmp_path):
  path = str(tmp_path / 'shared.json')
  failures = []

  def write(i):
    try:
      for j in range(60):
        results.write_json(path, {'writer': i, 'n': j, 'pad': 'x' * 2000})
    except Exception as e:  # noqa: BLE001 -- any failure of a writer fails the test
      failures.append(e)

  threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not failures
  assert json.load(open(path))['n'] == 59
  assert os.listdir(tmp_path) == ['shared.json']  # no temporary file left behind
