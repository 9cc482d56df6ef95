"""Command line: `python -m lth_jax.main --config=configs/<name>.py --workdir=DIR`.

`--config=<name>[:variant]` names a file of configs/ too (e.g. `--config=demo:tiny`): the
checkout's, or the copy inside the package where lth_jax was installed from a wheel.
`--config=DIR/experiment.json` reruns the config a workdir recorded (e.g. to resume it).

Flags only; the work lives in `lth_jax.experiments.run`, which tests and notebooks
call directly. Override any config field with `--config.<field>=<value>`.

Several processes (hosts): start the same command on every host with the same workdir.
JAX joins them itself where it detects the cluster (SLURM, Open MPI, TPU pods that set
TPU_WORKER_HOSTNAMES, or JAX_COORDINATOR_ADDRESS in the environment); otherwise pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (I = 0 .. N-1,
HOST:PORT a free port on process 0's host).

A problem the user can fix (a config that cannot load, a bad config value, an unusable
workdir, a missing dataset, checkpoint or optional package, a full disk, a diverged run)
ends with its message alone, one line, and exit status 2; `--verbosity=1` shows the
traceback too. The log shows lth_jax's own lines and every library's warnings and errors;
`--verbosity=1` shows every library's lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

# TensorFlow and XLA would otherwise print CUDA, oneDNN and TPU probing noise from C++ at
# import; their logging reads this before it starts.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from ml_collections.config_flags import config_path  # noqa: E402

from lth_jax import errors  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, masks, metrics and plots.')
config_flags.DEFINE_config_file(
    'config', None, 'Experiment config: configs/<name>.py[:variant], a name of configs/ '
    '(demo:tiny), or a workdir\'s experiment.json.')
flags.DEFINE_string('coordinator_address', None, 'Several processes: HOST:PORT of process 0 '
                    '(same on every process).')
flags.DEFINE_integer('num_processes', None, 'Several processes: how many.')
flags.DEFINE_integer('process_id', None, 'Several processes: this one\'s index, 0 .. N-1.')
flags.DEFINE_string('compilation_cache', os.path.join('~', '.cache', 'lth_jax', 'xla'),
                    'Directory of compiled XLA programs reused by later runs and processes '
                    '(the fine-tunes of an experiment compile the same steps); empty: off.')
flags.mark_flags_as_required(['config', 'workdir'])


class _ConfigFile(flags.ArgumentParser):
  """Loads `--config` with `load_config` and checks the fields its overrides name."""

  def flag_type(self) -> str:
    return 'config object'

  def parse(self, spec: str) -> ml_collections.ConfigDict:
    config = load_config(spec)
    # The overrides ml_collections applies next, read as it reads them (from sys.argv);
    # an unknown field would end the parsing with its KeyError's traceback.
    for arg in sys.argv:
      if re.match(r'--?(no)?config\.', arg):
        _check_field(config, arg.split('=', 1)[0].split('.', 1)[1])
    config.lock()
    return config


# ml_collections' own loader wraps what a config raises in its traceback and reads no
# names or records.
FLAGS['config'].parser = _ConfigFile()


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config a `--config` value names.

  Args:
    spec: a config file's path or a name in configs/, optionally with ':variant'
      (`configs/demo.py:tiny`, `demo:tiny`), or the `experiment.json` a workdir recorded.

  Returns:
    The config (unlocked).

  Raises:
    ConfigError: no such config file or record, or the config refused its variant.
    WorkdirError: the record cannot be parsed.
  """
  # Imported here: it imports jax, which `--help` does without.
  from lth_jax.experiments import config as config_lib
  from lth_jax.runtime import files
  from lth_jax.runtime import workdir as workdir_lib

  if spec.endswith('.json'):
    record = files.read_json(spec, fix='Pass the experiment.json of a workdir, whole.')
    if not isinstance(record, dict) or 'mode' not in record:
      what = 'no such file' if record is None else 'it records no experiment'
      raise errors.ConfigError(f'--config={spec}: {what}; pass the '
                               f'{workdir_lib.EXPERIMENT_FILE} that a workdir recorded '
                               f'(--config=WORKDIR/{workdir_lib.EXPERIMENT_FILE}).')
    return config_lib.from_record(record)
  try:
    return config_lib.load_config(spec)
  except FileNotFoundError as e:
    if e.filename is not None:  # a file the config itself reads, not the config file
      raise
    raise errors.ConfigError(f'--config={spec}: {e} E.g. --config=demo:tiny names '
                             'configs/demo.py with its variant tiny.') from e
  except ValueError as e:  # configs refuse an unknown variant so
    raise errors.ConfigError(f'--config={spec}: {e}') from e


def _check_field(config: ml_collections.ConfigDict, field: str) -> None:
  """Fails unless `--config.<field>` names a field of `config`.

  Raises:
    ConfigError: naming the flag, with ml_collections' hint at the field meant.
  """
  try:
    config_path.get_type(field, config)
  except (KeyError, AttributeError) as e:
    # ml_collections raises KeyError(text) or AttributeError(KeyError(text)), the text
    # "'name'\nDid you mean "other" instead of "name"?" where one is close.
    cause = e
    while cause.args and isinstance(cause.args[0], BaseException):
      cause = cause.args[0]
    what, _, hint = str(cause.args[0] if cause.args else cause).partition('\n')
    raise errors.ConfigError(f'--config.{field}: no such config field ({what}). '
                             f'{hint or "Check the names in the config file."}') from e


def _verbose(argv: list[str]) -> bool:
  """Whether argv asks for tracebacks (--verbosity >= 1), read before the other flags."""
  probe = flags.FlagValues()
  flags.DEFINE_integer('verbosity', -1, 'absl\'s --verbosity.', short_name='v',
                       flag_values=probe)
  try:
    probe(argv, known_only=True)
  except flags.Error:  # absl's own parsing reports a bad value
    return False
  return probe.verbosity >= 1


@contextlib.contextmanager
def _user_errors(verbose: bool, writing: str | None = None) -> Iterator[None]:
  """Ends a user error (`errors.user_error`) with its message and exit 2, unless verbose.

  Args:
    verbose: re-raise it instead, with its traceback.
    writing: where the block writes (a full disk's error may not say).
  """
  try:
    yield
  except Exception as e:  # noqa: BLE001 - only user errors are caught; the rest re-raise
    error = errors.user_error(e, writing)
    if verbose or error is None:
      raise
    print(f'{type(error).__name__}: {error}', file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, where a config that cannot load or be overridden is a user error.

  Args:
    argv: the command line, the program first.

  Returns:
    The program and the arguments that are not flags.
  """
  try:
    with _user_errors(_verbose(argv)):
      try:
        return FLAGS(argv)
      except flags.IllegalFlagValueError as e:
        # absl rewraps what a flag's parser raised; `load_config` raises user errors.
        if errors.user_error(e.__context__) is not None:
          raise e.__context__ from None
        raise
  except flags.Error:
    # Any other flag problem: absl's usage message and exit status.
    return app.parse_flags_with_usage(argv)


def check_workdir(path: str) -> None:
  """Fails unless the experiment can write `path`: a folder, or one it can make.

  Nothing is created: a run that stops before it claims the workdir leaves nothing behind.

  Args:
    path: the `--workdir` value.

  Raises:
    WorkdirError: the path is empty, a file, or in a folder this user cannot write
      (permissions or a read-only filesystem); the message names it and the fix.
  """
  if not path.strip():
    raise errors.WorkdirError('--workdir is empty: pass the folder the experiment writes '
                              'to, e.g. --workdir=/tmp/lth_demo.')
  existing = os.path.abspath(path)
  while not os.path.exists(existing):  # the workdir and its missing parents are made here
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise errors.WorkdirError(f'--workdir={path}: {existing} is a file, not a folder; pass '
                              'a new folder or one an experiment wrote.')
  if not os.access(existing, os.W_OK | os.X_OK):
    why = ('is on a read-only filesystem' if os.statvfs(existing).f_flag & os.ST_RDONLY
           else 'is not writable by this user')
    raise errors.WorkdirError(f'--workdir={path}: {existing} {why}; pass a folder you can '
                              'write to.')


def _join_processes() -> None:
  from lth_jax.runtime import sharding  # Imports jax; must run before any computation.
  given = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
  if any(v is not None for v in given):
    if any(v is None for v in given):
      raise app.UsageError('--coordinator_address, --num_processes and --process_id go '
                           'together: pass all three, on every process.')
    sharding.initialize_distributed(*given)
  elif sharding.cluster_detected():
    sharding.initialize_distributed()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  verbose = FLAGS.verbosity >= 1
  with _user_errors(verbose, writing=FLAGS.workdir):
    check_workdir(FLAGS.workdir)
    # Imported late so that --help stays fast.
    from lth_jax.runtime import console
    console.show_log(verbose)
    _join_processes()
    if FLAGS.compilation_cache:
      import jax
      jax.config.update('jax_compilation_cache_dir',
                        os.path.expanduser(FLAGS.compilation_cache))
    from lth_jax import experiments
    from lth_jax.runtime import sharding
    sharding.log_processes()
    experiments.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
