"""Command line: `python -m lth_jax.main --config=configs/<name>.py --workdir=DIR`.

Flags only; the work lives in `lth_jax.experiments.run`, which tests and notebooks
call directly. Override any config field with `--config.<field>=<value>`.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, masks, metrics and plots.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from lth_jax import experiments  # Imported late so that --help stays fast.
  logging.set_verbosity(logging.INFO)
  experiments.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
