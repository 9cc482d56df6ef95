"""benchmarks/accelerator.py --smoke: runs without TF, clu or ml_collections; every part.

The benchmark is meant for a GPU machine that has only jax, flax, optax, orbax, numpy and
torch, so the subprocess makes tensorflow, tensorflow_datasets, clu and ml_collections
unimportable before the script starts. Its numbers are checked for being there, finite
and consistent, never for being fast.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'accelerator.py'
BLOCKED = ('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections')
PARTS = ('throughput', 'input_pipeline', 'prune', 'imp_extrapolation', 'finetune')

# Makes the blocked packages absent, then runs the script as `python SCRIPT ARGS` would:
# as __main__, its directory first on sys.path (it imports benchmarks/masked_step.py).
# A None in sys.modules is what an uninstalled package looks like to both `import`
# (ModuleNotFoundError) and `importlib.util.find_spec` (None); a meta-path finder that
# raises would instead break libraries that probe for tensorflow with find_spec (torch's
# dynamo, which torch.optim imports, does).
PRELUDE = f'''
import os, runpy, sys

for name in {BLOCKED!r}:
  sys.modules[name] = None
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def _finite_positive(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _run_smoke(out: pathlib.Path) -> subprocess.CompletedProcess:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3',
         # One CPU device (conftest asks for 8) and quick compiles: only the machinery
         # is tested here, not the speed.
         'XLA_FLAGS': '', 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}
  return subprocess.run([sys.executable, '-c', PRELUDE, str(SCRIPT), '--smoke', f'--json={out}'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_smoke_runs_without_tensorflow_and_reports_every_part(tmp_path):
  out = tmp_path / 'out.json'
  proc = _run_smoke(out)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  results = json.loads(out.read_text())
  sizes = results['sizes']
  assert results['mode'] == 'smoke'
  for part in PARTS:
    assert part in results, part
    assert math.isfinite(results['elapsed_s'][part]) and results['elapsed_s'][part] >= 0
  assert results['environment']['jax_backend'] == 'cpu'
  assert results['environment']['torch'], 'torch is installed here: its rows must be there'

  # 1. Every (framework, dtype, batch), timed; fp32 JAX and torch compute the same loss.
  rows = results['throughput']['rows']
  assert sorted((r['framework'], r['dtype'], r['batch']) for r in rows) == sorted(
      (f, d, b) for f in ('lth_jax', 'torch') for d in ('fp32', 'bf16') for b in sizes['batches'])
  for row in rows:
    for key in ('median_step_s', 'images_per_s', 'first_step_s', 'first_loss'):
      assert _finite_positive(row[key]), (row, key)
    assert math.isclose(row['images_per_s'], row['batch'] / row['median_step_s'])
    assert row['timed_steps'] == sizes['chunks'] * sizes['chunk_steps']
  first = {(r['framework'], r['dtype'], r['batch']): r['first_loss'] for r in rows}
  for batch in sizes['batches']:
    jax_loss, torch_loss = first['lth_jax', 'fp32', batch], first['torch', 'fp32', batch]
    assert abs(jax_loss - torch_loss) <= 1e-3 * abs(torch_loss), (batch, jax_loss, torch_loss)

  # 2. The pipeline's images/s and its ratio to the train step's at the same batch.
  pipeline = results['input_pipeline']['rows']
  assert [r['batch'] for r in pipeline] == sizes['batches']
  for row in pipeline:
    assert _finite_positive(row['images_per_s'])
    for dtype in ('fp32', 'bf16'):
      step = next(r for r in rows if (r['framework'], r['dtype'], r['batch'])
                  == ('lth_jax', dtype, row['batch']))
      assert math.isclose(row['train_images_per_s'][dtype], step['images_per_s'])
      assert math.isclose(row['ratio'][dtype], row['images_per_s'] / step['images_per_s'])

  # 3. Both prunes remove round(0.2 x weights); the masks agree up to ties.
  prune = results['prune']
  assert _finite_positive(prune['lth_jax']['median_s'])
  assert _finite_positive(prune['torch']['median_s'])
  assert prune['lth_jax']['pruned'] == prune['torch']['pruned'] == prune['expected_pruned']
  assert prune['masks']['differing'] == 0 or prune['masks']['differing_all_ties']

  # 4. The extrapolation is the stated formula of part 1's median step.
  imp = results['imp_extrapolation']
  assert imp['batch'] == sizes['batches'][0]
  assert imp['fine_tunes'] == 2 * 16 * 3
  assert {r['implementation'] for r in imp['rows']} >= {'lth_jax fp32', 'lth_jax bf16',
                                                         'reference (torch fp32)'}
  for row in imp['rows']:
    step = next(r for r in rows if (r['framework'], r['dtype'], r['batch'])
                == (row['framework'], row['dtype'], imp['batch']))['median_step_s']
    round_s = imp['epochs'] * (imp['train_images'] // imp['batch']) * step
    assert (imp['epochs'], imp['train_images']) == (182, 45_000)
    assert math.isclose(row['step_s'], step)
    assert math.isclose(row['round_s'], round_s)
    assert math.isclose(row['figure_s'], 2 * 16 * 3 * round_s)

  # 5. Two loss curves of the stated length and two test accuracies.
  finetune = results['finetune']
  assert finetune['steps'] == sizes['finetune_epochs'] * (
      sizes['finetune_train_images'] // sizes['finetune_batch'])
  for dtype in ('fp32', 'bf16'):
    run = finetune[dtype]
    assert len(run['curve']) == finetune['steps'] // finetune['loss_every'] > 0
    assert all(_finite_positive(x) for x in run['curve']), run['curve']
    assert 0 <= run['test_accuracy'] <= 1
    assert math.isfinite(run['test_loss'])

  # The tables were printed.
  for title in ('### 1. Masked training', '### 2. Device-resident input pipeline',
                '### 3. One global-magnitude prune', "### 4. The paper's CIFAR-10 IMP",
                '### 5. bf16 against fp32'):
    assert title in proc.stdout, title
  assert '| framework | dtype | batch | median step (ms) | images/s |' in proc.stdout
