"""Command line: `python -m lth_jax.analyze --workdir=DIR [--compare=DIR2,DIR3]`.

Reads the IMP runs under the workdirs (every folder with round_XX/mask), compares them
at equal sparsity and writes DIR/analysis/report.md with its figures and data. Flags
only; the work lives in `lth_jax.analysis.analyze_workdirs`.
"""

from __future__ import annotations

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Experiment folder whose runs are analysed; the '
                    'report goes to <workdir>/analysis.')
flags.DEFINE_list('compare', [], 'Further experiment folders whose runs are compared with '
                  'the workdir\'s (e.g. the same task from another pre-training).')
flags.DEFINE_float('sparsity', None, 'Focus level of the detailed sections (the nearest '
                   'level found); default: the highest level shared by the most runs.')
flags.DEFINE_string('heatmap_layer', None, 'Layer drawn kernel by kernel, e.g. '
                    'layer4_0/conv2/kernel; default: the one with the most empty kernels.')
flags.DEFINE_string('policy', None, 'Regex of the prunable leaves; default: every conv '
                    'kernel of the residual stages.')
flags.mark_flag_as_required('workdir')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from lth_jax import analysis  # Imported late so that --help stays fast.
  logging.set_verbosity(logging.INFO)
  path = analysis.analyze_workdirs([FLAGS.workdir, *FLAGS.compare], sparsity=FLAGS.sparsity,
                                   heatmap_layer=FLAGS.heatmap_layer, policy=FLAGS.policy)
  logging.info('Report written to %s', path)
  print(path)


if __name__ == '__main__':
  app.run(main)
