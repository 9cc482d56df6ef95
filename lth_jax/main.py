"""Command line: `python -m lth_jax.main --config=configs/<name>.py --workdir=DIR`.

Flags only; the work lives in `lth_jax.experiments.run`, which tests and notebooks
call directly. Override any config field with `--config.<field>=<value>`.
"""

from __future__ import annotations

import logging as std_logging
import os

# TensorFlow (the input pipeline) would otherwise print CUDA probing noise at import.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, masks, metrics and plots.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(std_logging.Filter):
  """Drops the per-file INFO chatter of checkpointing libraries from the console."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in ('/orbax/', '/tensorstore/', '/etils/'))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from lth_jax import experiments  # Imported late so that --help stays fast.
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  experiments.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
