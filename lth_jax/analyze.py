"""Command line: `python -m lth_jax.analyze --workdir=DIR [--compare=DIR2,DIR3]`.

Reads the IMP runs under the workdirs (every folder with round_XX/mask), compares them
at equal sparsity and writes DIR/analysis/report.md with its figures and data. With
`--perturb` (and `--lmc_seeds`) it first fine-tunes perturbed copies of one ticket of
DIR's IMP run and adds the sensitivity plots, e.g.

    python -m lth_jax.analyze --workdir=/tmp/lth_demo --perturb=mask_swap \
        --perturb=weight_noise=0,1,2 --seeds=0,1,2 --lmc_seeds=0,1

Flags only; the work lives in `lth_jax.analysis.analyze_workdirs` and
`lth_jax.experiments.sensitivity.run`.
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
flags.DEFINE_multi_string('perturb', [], 'Perturbation sweep of the workdir\'s ticket: KIND or '
                          'KIND=SIZE,SIZE,... (kinds: mask_swap, mask_shuffle, weight_noise, '
                          'weight_reinit); repeat the flag for several kinds.')
flags.DEFINE_list('seeds', ['0'], 'Seeds of each perturbation size.')
flags.DEFINE_list('lmc_seeds', [], 'Two seeds: also measure linear mode connectivity.')
flags.DEFINE_integer('level', None, 'IMP round whose ticket is perturbed; default: the last.')
flags.mark_flag_as_required('workdir')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from lth_jax import analysis  # Imported late so that --help stays fast.
  from lth_jax.experiments import sensitivity
  from lth_jax.runtime import console
  console.show_log(FLAGS.verbosity >= 1)
  perturbation, connectivity = None, None
  if FLAGS.perturb or FLAGS.lmc_seeds:
    perturbation, connectivity = sensitivity.run(
        FLAGS.workdir, level=FLAGS.level, sizes=sensitivity.parse_sizes(FLAGS.perturb),
        seeds=[int(s) for s in FLAGS.seeds], lmc_seeds=[int(s) for s in FLAGS.lmc_seeds])
  path = analysis.analyze_workdirs([FLAGS.workdir, *FLAGS.compare], sparsity=FLAGS.sparsity,
                                   heatmap_layer=FLAGS.heatmap_layer, policy=FLAGS.policy,
                                   perturbation=perturbation, connectivity=connectivity)
  logging.info('Report written to %s', path)
  print(path)


if __name__ == '__main__':
  app.run(main)
