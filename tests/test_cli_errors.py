"""What the command line says when the user can fix the problem, and what its log holds.

Every user error is one line on stderr (what, where, the fix) with exit status 2; the
traceback shows with --verbosity=1. Most cases stop before any training, so each
subprocess costs only the imports.
"""

from __future__ import annotations

import dataclasses
import errno
import logging as std_logging
import os
import pathlib
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import test_train as fits  # its tiny model and fine-tuning run
from absl import logging

from lth_jax import errors, experiments
from lth_jax.experiments import modes
from lth_jax.models import create_model, init_variables

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
TINY = ['--config=demo:tiny', '--config.num_devices=1']
# The run's compilation cache (tests/conftest.py): programs compiled by an earlier run.
CACHE = os.environ['JAX_COMPILATION_CACHE_DIR']


def _main(*args: str, cwd: pathlib.Path = ROOT, prelude: str = ''
          ) -> subprocess.CompletedProcess:
  """`python -m lth_jax.main ARGS`, after `prelude` (Python) where one is given."""
  code = (f'{prelude}\nimport runpy, sys\nsys.argv = ["lth_jax.main", *{list(args)!r}]\n'
          'runpy.run_module("lth_jax.main", run_name="__main__", alter_sys=True)\n')
  return subprocess.run([sys.executable, '-c', code], cwd=cwd, env=ENV, capture_output=True,
                        text=True, timeout=600)


def _message(proc: subprocess.CompletedProcess) -> str:
  """The one line a user error ends with, checked to be all there is of it."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_config_file_that_is_not_there_lists_the_configs(tmp_path):
  # A wheel user's folder has no configs/: the command line copied from the README fails.
  proc = _main('--config=configs/demo.py:tiny', '--workdir=w', cwd=tmp_path)
  message = _message(proc)
  assert message.startswith('ConfigError: --config=configs/demo.py:tiny: No config file '
                            'configs/demo.py: name one of [')
  assert "'demo'" in message and "'paper_offline'" in message
  assert '--config=demo:tiny' in message
  assert not (tmp_path / 'w').exists()
  verbose = _main('--config=configs/demo.py:tiny', '--workdir=w', '--verbosity=1', cwd=tmp_path)
  assert verbose.returncode != 0 and 'Traceback' in verbose.stderr


@pytest.mark.slow
def test_a_variant_typo_is_the_configs_own_message(tmp_path):
  message = _message(_main('--config=demo:tyny', f'--workdir={tmp_path / "w"}'))
  assert message == ("ConfigError: --config=demo:tyny: Unknown demo variant 'tyny': use "
                     'configs/demo.py or configs/demo.py:tiny.')


@pytest.mark.slow
def test_a_field_typo_names_the_flag_and_the_field_meant(tmp_path):
  message = _message(_main(*TINY, '--config.optim.learning_rat=0.1',
                           f'--workdir={tmp_path / "w"}'))
  assert message == ("ConfigError: --config.optim.learning_rat: no such config field "
                     "('learning_rat'). Did you mean \"learning_rate\" instead of "
                     '"learning_rat"?')


@pytest.mark.parametrize('workdir, says', [
    ('', 'WorkdirError: --workdir is empty: pass the folder'),
    ('{file}', 'WorkdirError: --workdir={file}: {file} is a file, not a folder; pass'),
])
@pytest.mark.slow
def test_an_unusable_workdir_stops_before_anything_runs(tmp_path, workdir, says):
  file = tmp_path / 'notes.txt'
  file.write_text('not a folder')
  message = _message(_main(*TINY, f'--workdir={workdir.format(file=file)}'))
  assert message.startswith(says.format(file=file))
  assert os.listdir(tmp_path) == ['notes.txt']


@pytest.mark.parametrize('read_only, why', [(False, 'is not writable by this user'),
                                            (True, 'is on a read-only filesystem')])
def test_a_workdir_in_a_folder_that_cannot_be_written(tmp_path, monkeypatch, read_only, why):
  from lth_jax import main
  folder = tmp_path / 'locked'
  folder.mkdir()
  # What access(2) says of a folder of another user, or on a read-only mount (root too).
  monkeypatch.setattr(os, 'access', lambda path, mode: False)
  flags = os.ST_RDONLY if read_only else 0
  monkeypatch.setattr(os, 'statvfs', lambda path: os.statvfs_result((0,) * 8 + (flags, 255)))
  with pytest.raises(errors.WorkdirError) as caught:
    main.check_workdir(str(folder / 'run' / 'w'))
  assert str(caught.value) == (f'--workdir={folder}/run/w: {folder} {why}; pass a folder you '
                               'can write to.')
  assert errors.user_error(caught.value) is caught.value


@pytest.mark.slow
def test_a_pth_checkpoint_without_torch_says_how_to_install_it(tmp_path):
  checkpoint = tmp_path / 'resnet18.pth'
  checkpoint.write_bytes(b'PK\x03\x04 not really a zip archive')
  proc = _main(*TINY, '--config.pretrained.source=torchvision',
               f'--config.pretrained.path={checkpoint}', f'--workdir={tmp_path / "w"}',
               prelude='import sys\nsys.modules["torch"] = None  # torch not installed')
  message = _message(proc)
  assert message.startswith(f'ImportError: {checkpoint}: reading .pth/.pth.tar files needs '
                            'PyTorch')
  assert 'pip install torch==2.13.0' in message
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('half_precision', [False, True])
def test_the_divergence_advice_suggests_float32_only_after_bfloat16(tmp_path, monkeypatch,
                                                                  half_precision):
  workdir = tmp_path / 'w'
  real = modes.get('imp')

  def diverge(*args):
    raise errors.DivergenceError(str(workdir / 'magnitude' / 'round_00' / 'seed_0'), epoch=1,
                                 step=3, learning_rate=0.05)

  monkeypatch.setattr(modes, 'get', lambda name: dataclasses.replace(real, run=diverge))
  config = experiments.load_config('demo:tiny')
  config.num_devices = 1
  config.model.half_precision = half_precision
  with pytest.raises(errors.DivergenceError) as caught:
    experiments.run(config, str(workdir))
  advice = '--config.model.half_precision=False'
  assert (advice in str(caught.value)) is half_precision
  assert '--config.optim.learning_rate' in str(caught.value)


def test_the_library_names_settings_plainly_and_the_experiment_layer_as_flags(monkeypatch):
  error = errors.DivergenceError('run', epoch=1, step=2, learning_rate=0.1)
  assert '(--config.optim.learning_rate)' in str(error)  # lth_jax.experiments is imported
  monkeypatch.setattr(errors, '_spelling', list(errors._spelling))
  errors.spell_settings(lambda name: name)  # what the library says on its own
  assert '(optim.learning_rate)' in str(error) and '--config' not in str(error)


def test_no_space_left_is_one_message_naming_the_filesystem_and_the_file(tmp_path):
  echo = RuntimeError('Event loop is closed')
  echo.__cause__ = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / 'r.json'))
  full = errors.user_error(echo)
  assert isinstance(full, errors.NoSpaceError)
  assert str(full).startswith('No space left on the filesystem mounted at ')
  assert f'while writing {tmp_path / "r.json"}. Free some space there' in str(full)


@pytest.mark.parametrize('async_checkpoints', [False, True])
def test_a_full_disk_stops_fit_with_one_error_and_the_rerun_resumes(tmp_path, monkeypatch,
                                                                    async_checkpoints):
  model = create_model(**fits.MODEL)
  variables = init_variables(model, jax.random.key(0), fits.IMAGE)
  masks = fits.random_masks(variables['params'], seed=0)
  kwargs = dict(checkpoint_every_steps=2, async_checkpoints=async_checkpoints)
  straight = fits.run_fit(model, variables, masks, tmp_path / 'straight', fits.recipe(),
                          **kwargs)
  write = ocp.handlers.JsonCheckpointHandler._save_fn

  async def full_at_step_4(self, meta, directory):  # writes each checkpoint's meta
    if meta['step'] == 4:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    await write(self, meta, directory)

  monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, '_save_fn', full_at_step_4)
  run = tmp_path / 'run'
  with pytest.raises(errors.NoSpaceError) as caught:
    fits.run_fit(model, variables, masks, run, fits.recipe(), **kwargs)
  assert str(caught.value).startswith('No space left on the filesystem mounted at ')
  assert f'while writing {run}. Free some space there' in str(caught.value)
  # The failed checkpoint is gone before the error is reported: writes of its other items
  # cannot land where the rerun's orbax clears them.
  assert sorted(p.name for p in run.iterdir()) == ['3']
  monkeypatch.undo()  # space freed: the same call resumes from the checkpoint of step 3
  resumed = fits.run_fit(model, variables, masks, run, fits.recipe(), **kwargs)
  assert resumed.history == straight.history
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.variables),
               jax.device_get(straight.variables))


@pytest.mark.slow
def test_a_full_disk_ends_the_command_with_one_line_and_the_rerun_resumes(tmp_path):
  if shutil.which('unshare') is None:
    pytest.skip('needs unshare(1) to mount a small filesystem')
  # The dense round's two seeds, then one pruned round: three fine-tunes.
  disk, command = tmp_path / 'disk', [sys.executable, '-m', 'lth_jax.main', *TINY,
                                      '--config.imp.num_rounds=2',
                                      '--config.imp.random_baseline=False',
                                      f'--workdir={tmp_path / "disk" / "w"}',
                                      f'--compilation_cache={CACHE}']
  disk.mkdir()
  run = ' '.join(command)
  # A 3 MB disk fills up in round 0; the second run has the space to finish.
  script = (f'mount -t tmpfs -o size=3m tmpfs {disk} || exit 77\n'
            f'{run} > {tmp_path}/1.out 2> {tmp_path}/1.err; echo $? > {tmp_path}/1.rc\n'
            f'mount -o remount,size=100m {disk}\n'
            f'{run} > {tmp_path}/2.out 2> {tmp_path}/2.err; echo $? > {tmp_path}/2.rc\n')
  proc = subprocess.run(['unshare', '-m', 'bash', '-c', script], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=900)
  if not (tmp_path / '1.rc').exists():
    pytest.skip(f'cannot mount a small filesystem here (needs root): {proc.stderr[-300:]}')
  full = subprocess.CompletedProcess(command, int((tmp_path / '1.rc').read_text()), '',
                                     (tmp_path / '1.err').read_text())
  assert _message(full).startswith(f'NoSpaceError: No space left on the filesystem mounted '
                                   f'at {disk} while writing {disk}/w/')
  assert len(full.stderr.splitlines()) < 10  # not orbax's traceback of each failed write
  assert (tmp_path / '2.rc').read_text().strip() == '0', (tmp_path / '2.err').read_text()
  resumed = (tmp_path / '2.out').read_text()
  assert f'Resuming imp in {disk}/w' in resumed and 'Extreme matching sparsity' in resumed


def test_the_log_leaves_out_library_chatter_and_echoes_of_a_full_disk(monkeypatch):
  from lth_jax.runtime import console
  handler = logging.get_absl_handler()
  monkeypatch.setattr(handler, 'filters', [])
  monkeypatch.setattr(sys, 'meta_path', list(sys.meta_path))
  shown = []
  monkeypatch.setattr(sys, 'unraisablehook', shown.append)
  verbosity = logging.get_verbosity()
  try:
    console.show_log(verbose=False)
  finally:
    logging.set_verbosity(verbosity)

  def kept(path, level, raised=None):
    record = std_logging.LogRecord('x', level, path, 1, 'message', (), raised and (
        type(raised), raised, None))
    return bool(handler.filter(record))

  library, own = '/site-packages/orbax/checkpoint/future.py', console.__file__
  full = ValueError('RESOURCE_EXHAUSTED: Failed to write 106335 bytes to file 14: No space '
                    'left on device [os_error_code=\'28\']')
  assert kept(own, std_logging.INFO) and not kept(library, std_logging.INFO)
  assert kept(library, std_logging.WARNING) and kept(library, std_logging.ERROR, KeyError(1))
  assert not kept(library, std_logging.ERROR, full)
  for error in (RuntimeError('Event loop is closed'), RuntimeError('other')):
    sys.unraisablehook(types.SimpleNamespace(exc_value=error))
  assert [str(args.exc_value) for args in shown] == ['other']
