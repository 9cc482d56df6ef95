"""Mode 'pretrain': θ_p alone, measured and written as a released checkpoint.

    python -m lth_jax.main --config=configs/pretrain_offline.py:moco --workdir=/tmp/theta_moco

Pre-trains the model on `config.data.dataset` with the objective of `config.upstream`
(its views, temperature, queue) and the recipe `config.pretrain.optim`, as upstream mode's
source 'pretrain' does (`lth_jax.experiments.upstream.theta_p`), then measures θ_p by the
weighted kNN top-1 accuracy of its pooled backbone features (the train split as memory
bank, `upstream.knn_*`) and by a linear probe on them (a softmax classifier fitted to the
frozen train features, SimCLR's and MoCo's linear evaluation) on the val and test splits,
whatever its objective (so that the three pre-trainings compare), and by the objective's
own metric. It writes:

    pretrain/variables        θ_p (its checkpoints in pretrain/train/ while it trains)
    theta_p.npz               θ_p as its objective's released checkpoint
                              (`lth_jax.interop.checkpoints.to_released`: torchvision,
                              SimCLR or MoCo v2 keys), which `pretrained.source` reads
    theta_p.json              its metrics, the checkpoint's format and SHA-256, written
                              last: a finished workdir is read back, not written again

The θ_p lth_jax ships (`lth_jax.released`) were made this way.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from jax.sharding import Mesh

from lth_jax import objectives
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import modes, specs, upstream
from lth_jax.interop import checkpoints
from lth_jax.runtime import console, files, paths, sharding
from lth_jax.runtime import workdir as workdir_lib


def measure(experiment: specs.Experiment, model: Any, variables: Any,
            mesh: Mesh) -> dict[str, float]:
  """θ_p's kNN and linear-probe top-1 and its objective's own metric on val and test.

  Args:
    experiment: the experiment (its section an `upstream.Spec`).
    model: the model with the objective's head.
    variables: θ_p.
    mesh: the device mesh.

  Returns:
    {'knn_val', 'knn_test', 'probe_val', 'probe_test', 'probe_weight_decay' (the probe's
    L2 penalty, chosen on val), 'objective_val', 'objective_test'} (fractions).
  """
  # Placed once: the kNN bank and the probe's fit are kept for the same device arrays,
  # so val and test share them (numpy variables would be placed anew on every call).
  variables = sharding.replicate(dict(variables), mesh)
  knn = upstream.make_evaluator(experiment, model, mesh, metric=objectives.KNN_TOP1)
  probe = upstream.make_evaluator(experiment, model, mesh, metric=objectives.LINEAR_PROBE)
  metrics = {f'knn_{split}': knn(variables, split)['accuracy'] for split in ('val', 'test')}
  probed = {split: probe(variables, split) for split in ('val', 'test')}
  metrics.update({f'probe_{split}': probed[split]['accuracy'] for split in probed},
                 probe_weight_decay=probed['val']['weight_decay'])
  if objectives.get(experiment.section.objective).evaluator is objectives.KNN_TOP1:
    own = lambda split: metrics[f'knn_{split}']  # the same measurement: made once
  else:
    evaluator = upstream.make_evaluator(experiment, model, mesh)
    own = lambda split: evaluator(variables, split)['accuracy']
  return {**metrics, **{f'objective_{split}': own(split) for split in ('val', 'test')}}


def run(experiment: specs.Experiment, workdir: str, mesh: Mesh) -> dict[str, Any]:
  """Pre-trains θ_p, measures it and writes it as a released checkpoint.

  Args:
    experiment: the experiment (mode 'pretrain', its section an `upstream.Spec`).
    workdir: the experiment's workdir.
    mesh: the device mesh.

  Returns:
    The record written to theta_p.json: {'objective', 'dataset', 'format', 'metrics',
    'sha256'}.
  """
  u, dataset = experiment.section, experiment.data.dataset
  spec = objectives.get(u.objective)
  record = files.read_json(paths.theta_p_metric(workdir))
  if record is None:
    record = _pretrain_and_write(experiment, workdir, mesh)
  path, metrics = paths.released_checkpoint(workdir), record['metrics']
  # A workdir finished before the probe existed has no probe metrics: it is read as is.
  probe = ('' if 'probe_test' not in metrics else
           f', linear-probe top-1 test {100 * metrics["probe_test"]:.2f}% '
           f'(val {100 * metrics["probe_val"]:.2f}%)')
  own = ('' if spec.evaluator is objectives.KNN_TOP1 else
         f', {spec.evaluator.label} test {100 * metrics["objective_test"]:.2f}%')
  console.say(
      f'θ_p ({u.objective} on {dataset}): kNN top-1 test {100 * metrics["knn_test"]:.2f}% '
      f'(val {100 * metrics["knn_val"]:.2f}%){probe}{own}.\nReleased checkpoint '
      f'({spec.checkpoint_source} format, SHA-256 {record["sha256"]}): {path}\n  '
      f'--config.pretrained.source={spec.checkpoint_source} --config.pretrained.path={path}')
  return record


def _pretrain_and_write(experiment: specs.Experiment, workdir: str,
                        mesh: Mesh) -> dict[str, Any]:
  """Pre-trains and measures θ_p, writes the checkpoint, then its record (`run`'s)."""
  u, dataset = experiment.section, experiment.data.dataset
  spec = objectives.get(u.objective)
  model = upstream.build_model(experiment)
  variables = upstream.start_variables(
      experiment, model, upstream.make_evaluator(experiment, model, mesh), workdir, mesh)
  metrics = measure(experiment, model, variables, mesh)
  path = paths.released_checkpoint(workdir)
  if sharding.is_chief():
    files.write_npz(path, checkpoints.to_released(variables, spec.checkpoint_source))
  sharding.sync(f'released θ_p of {workdir}')
  record = {'objective': u.objective, 'dataset': dataset, 'format': spec.checkpoint_source,
            'metrics': metrics, 'sha256': workdir_lib.file_sha256(path)}
  if sharding.is_chief():
    files.write_json(paths.theta_p_metric(workdir), record)
  sharding.sync(f'the record of θ_p in {workdir}')
  return record


def validate(config: ml_collections.ConfigDict) -> None:
  """The checks of mode 'pretrain': the objective's, and θ_p trained here on the data.

  Args:
    config: the experiment config.

  Raises:
    ConfigError: naming the field and the fix.
  """
  upstream.validate_objective(config)
  if config.pretrained.source != 'pretrain':
    config_lib.fail('pretrained.source', config.pretrained.source,
                    "mode 'pretrain' pre-trains θ_p itself: set it to 'pretrain'.")
  if config.pretrain.dataset != config.data.dataset:
    config_lib.fail('pretrain.dataset', config.pretrain.dataset,
                    f'set it to data.dataset ({config.data.dataset!r}): θ_p is pre-trained and '
                    'measured on one dataset.')


modes.register(modes.Mode(
    'pretrain', run=run, validate=validate, spec=upstream.spec, reads=('upstream',),
    datasets=lambda c: [c.data.dataset], model=upstream.build_model, trained=(),
    training=lambda c: [('pretrain.optim', c.pretrain.dataset)]))
