"""Command line: `python -m lth_jax.main --config=configs/<name>.py --workdir=DIR`.

`--config=<name>[:variant]` names a file of configs/ too (e.g. `--config=demo:tiny`): the
checkout's, or the copy inside the package where lth_jax was installed from a wheel.

Flags only; the work lives in `lth_jax.experiments.run`, which tests and notebooks
call directly. Override any config field with `--config.<field>=<value>`.

Several processes (hosts): start the same command on every host with the same workdir.
JAX joins them itself where it detects the cluster (SLURM, Open MPI, TPU pods that set
TPU_WORKER_HOSTNAMES, or JAX_COORDINATOR_ADDRESS in the environment); otherwise pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (I = 0 .. N-1,
HOST:PORT a free port on process 0's host).

A problem the user can fix (a bad config value, a missing dataset or checkpoint, a
workdir holding another experiment, a diverged run) ends with its message alone and exit
status 2; `--verbosity=1` shows the traceback too.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

# TensorFlow (the input pipeline) would otherwise print CUDA probing noise at import.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, masks, metrics and plots.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('coordinator_address', None, 'Several processes: HOST:PORT of process 0 '
                    '(same on every process).')
flags.DEFINE_integer('num_processes', None, 'Several processes: how many.')
flags.DEFINE_integer('process_id', None, 'Several processes: this one\'s index, 0 .. N-1.')
flags.DEFINE_string('compilation_cache', os.path.join('~', '.cache', 'lth_jax', 'xla'),
                    'Directory of compiled XLA programs reused by later runs and processes '
                    '(the fine-tunes of an experiment compile the same steps); empty: off.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(std_logging.Filter):
  """Drops the per-file INFO chatter of checkpointing libraries from the console."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in ('/orbax/', '/tensorstore/', '/etils/'))


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
  _join_processes()
  if FLAGS.compilation_cache:
    import jax
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.compilation_cache))
  # Imported late so that --help stays fast.
  from lth_jax import errors, experiments
  from lth_jax.runtime import sharding
  logging.set_verbosity(logging.DEBUG if verbose else logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  sharding.log_processes()
  try:
    experiments.run(FLAGS.config, FLAGS.workdir)
  except errors.USER_ERRORS as e:
    if verbose:
      raise
    print(f'{type(e).__name__}: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


def config_by_name(argv: list[str]) -> list[str]:
  """`argv` with a `--config` value that names a config (`demo`, `demo:tiny`) as its path.

  Args:
    argv: the command line.

  Returns:
    The command line with `--config=<name>[:variant]` replaced by the path of
    configs/<name>.py (plus `:variant`) where no file of that name exists here.
  """
  out = list(argv)
  for i, arg in enumerate(out):
    given = arg.partition('=')[2] if arg.startswith('--config=') else (
        out[i + 1] if arg == '--config' and i + 1 < len(out) else None)
    if given is None or os.sep in given or os.path.isfile(given.partition(':')[0]):
      continue
    from lth_jax.experiments.config import CONFIG_DIR  # only when a name needs finding
    name, colon, variant = given.partition(':')
    path = CONFIG_DIR / f'{name.removesuffix(".py")}.py'
    if path.is_file():
      value = f'{path}{colon}{variant}'
      if arg == '--config':
        out[i + 1] = value
      else:
        out[i] = f'--config={value}'
  return out


if __name__ == '__main__':
  app.run(main, argv=config_by_name(sys.argv))
