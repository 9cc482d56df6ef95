"""lth_jax where TensorFlow, tensorflow-datasets and clu are absent (a bare accelerator host).

The subprocesses see the venv's site-packages through a folder of links that leaves those
packages out, so to them (and to `importlib.util.find_spec`, which orbax's etils asks)
they are not installed.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ABSENT = ('tensorflow', 'tensorboard', 'tf_keras', 'keras', 'clu')
# What must not be imported: the absent packages, and (where they are installed) what
# imports them.
HEAVY = ('tensorflow', 'tensorflow_datasets', 'clu')


def _site_packages() -> pathlib.Path:
  return pathlib.Path(np.__file__).resolve().parents[1]


def _without(tmp_path: pathlib.Path) -> pathlib.Path:
  """A folder linking every entry of site-packages but the absent packages'."""
  shadow = tmp_path / 'site-packages'
  shadow.mkdir()
  for entry in _site_packages().iterdir():
    name = entry.name.lower()
    if not any(name == a or name.startswith((a + '-', a + '_')) for a in ABSENT):
      (shadow / entry.name).symlink_to(entry)
  return shadow


def _python(code: str, shadow: pathlib.Path | None, cwd: pathlib.Path
            ) -> subprocess.CompletedProcess:
  prelude = ''
  if shadow is not None:
    site = str(_site_packages())
    prelude = (f'import sys\nsys.path[:] = [p for p in sys.path if p.rstrip("/") != {site!r}]'
               f' + [{str(shadow)!r}, {str(ROOT)!r}]\n')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)}
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-c', prelude + code], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_library_and_the_experiment_layer_import_without_tensorflow(tmp_path):
  # TensorFlow is installed here: importing must still not load it (5-20 s).
  out = _python(
      'import sys\n'
      'import lth_jax.experiments, lth_jax.tasks, lth_jax.objectives, lth_jax.analysis\n'
      'import lth_jax.data.on_device, lth_jax.lottery, lth_jax.interop, lth_jax.main\n'
      f'print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))\n',
      None, tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == '[]'


@pytest.mark.slow
def test_the_demo_runs_where_tensorflow_and_clu_are_not_installed(tmp_path):
  workdir = tmp_path / 'demo'
  code = (
      'import importlib.util, sys\n'
      'assert importlib.util.find_spec("tensorflow") is None\n'
      'assert importlib.util.find_spec("clu") is None\n'
      'from absl import app\n'
      # The experiment layer (which the command line imports before reading data) names
      # settings as --config flags.
      'from lth_jax import data, experiments, main\n'
      'try:\n'
      '  data.train_batches("digits", batch_size=8, epoch=0, seed=0)\n'
      'except ImportError as e:\n'
      '  print("REFUSED", e)\n'
      # The dense round (one seed) and a pruned round of both branches.
      f'sys.argv = ["main", "--config=configs/demo.py:tiny", "--workdir={workdir}", '
      '"--config.imp.num_rounds=2", "--config.dense_seeds=1"]\n'
      'try:\n'
      '  app.run(main.main)\n'
      'except SystemExit as e:\n'
      f'  print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))\n'
      '  raise\n')
  out = _python(code, _without(tmp_path), ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  refused = next(line for line in out.stdout.splitlines() if line.startswith('REFUSED'))
  assert 'pip install tensorflow tensorflow-datasets' in refused
  assert '--config.data.pipeline=device' in refused
  assert out.stdout.strip().splitlines()[-1] == 'LOADED []'
  # 'auto' is the device-resident pipeline where tf.data cannot run, and is recorded so.
  assert json.loads((workdir / 'experiment.json').read_text())['data']['pipeline'] == 'device'
  rows = (workdir / 'results.csv').read_text().splitlines()
  assert rows[0].startswith('method,round,sparsity') and len(rows) == 1 + 2 * 2
  # Without clu the per-epoch scalars go to the log, and no TensorBoard folder is written.
  assert '] learning_rate=' in out.stderr and not list(workdir.rglob('*_tensorboard'))
  assert (workdir / 'accuracy_vs_sparsity.png').is_file()


@pytest.mark.slow
def test_a_classification_variant_trains_and_other_tasks_are_refused_before_the_claim(
    tmp_path):
  # The in-memory and device pipelines ask a task what labels it reads, not its name.
  code = (
      'import dataclasses\n'
      'from lth_jax import data, errors, experiments, tasks\n'
      'from lth_jax.tasks.classification import Classification\n'
      'class Smoothed(Classification):\n'
      '  name = "smoothed"\n'
      'tasks.register(Smoothed())\n'
      'data.register(dataclasses.replace(data.get_info("digits"), name="digits_smoothed",\n'
      '    task="smoothed", derived_from="digits", classes=tuple(range(10))))\n'
      'def config(dataset):\n'
      '  c = experiments.load_config("demo:tiny")\n'
      '  c.update_from_flattened_dict({"num_devices": 1, "data.dataset": dataset,\n'
      '      "imp.num_rounds": 1, "imp.random_baseline": False, "dense_seeds": 1})\n'
      '  return c\n'
      'try:\n'
      f'  experiments.run(config("digit_canvas_seg_small"), {str(tmp_path / "seg")!r})\n'
      'except errors.ConfigError as e:\n'
      '  print("REFUSED", e)\n'
      f'out = experiments.run(config("digits_smoothed"), {str(tmp_path / "smoothed")!r})\n'
      'print("ACCURACY", out["curves"]["magnitude"][0]["test_accuracy"])\n')
  out = _python(code, _without(tmp_path), ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert ("REFUSED Dataset 'digit_canvas_seg_small' needs tf.data (its task 'segmentation' "
          'reads pixels labels') in out.stdout
  assert not (tmp_path / 'seg').exists()
  assert 0 <= float(out.stdout.split('ACCURACY')[1]) <= 1
  record = json.loads((tmp_path / 'smoothed' / 'experiment.json').read_text())
  assert record['data']['pipeline'] == 'device'


def test_progress_is_logged_and_written_whether_or_not_clu_is_installed(caplog):
  # clu's ReportProgress printed only a "work unit notes" line, which the CLI hides.
  from absl import logging as absl_logging

  from lth_jax.training import reporting

  written = []

  class Writer(reporting.LogWriter):
    def write_scalars(self, step, scalars):
      written.append((step, dict(scalars)))

  progress = reporting.LogProgress(100, Writer(), every_s=0.0)
  absl_logging.set_verbosity(absl_logging.INFO)
  with caplog.at_level('INFO'):
    progress(10)  # starts the clock
    with progress.timed('eval'):
      pass
    progress(30)
  assert [step for step, _ in written] == [30] and written[0][1]['steps_per_sec'] > 0
  line = next(r.getMessage() for r in caplog.records if 'steps/s' in r.getMessage())
  assert '30.0% (30/100)' in line and 'ETA' in line
  assert caplog.records[-1].pathname.endswith('lth_jax/training/reporting.py')
