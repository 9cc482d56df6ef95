"""The Colab notebooks run headless on CPU with their fast settings, and are committed clean.

Each colab/*.ipynb executes in a fresh IPython kernel of this interpreter with
LTH_NOTEBOOK_FAST=1 (tiny settings), one CPU device and its own WORKDIR; a failing cell
fails the test with the cell's traceback.
"""

from __future__ import annotations

import os
import pathlib

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'colab').glob('*.ipynb'))
CELL_TIMEOUT_S = 600
KERNEL = 'python3'


def test_the_colab_folder_has_the_notebooks():
  assert {'quickstart', 'inspect_masks'} <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_valid_and_has_no_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == KERNEL
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None, (
          f'{path.name}: clear the outputs of cell {cell.id!r} before committing.')
  sources = [c.source for c in nb.cells if c.cell_type == 'code']
  assert sum("os.environ.get('LTH_NOTEBOOK_FAST')" in s for s in sources) == 1, (
      'one parameters cell reads LTH_NOTEBOOK_FAST')


@pytest.fixture(scope='module')
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
  """Kernel specs holding only 'python3' = this interpreter (not whatever is installed)."""
  kernels = tmp_path_factory.mktemp('kernels')
  write_kernel_spec(kernels / KERNEL)
  return KernelSpecManager(kernel_dirs=[str(kernels)])


def _execute(nb: nbformat.NotebookNode, root: pathlib.Path, tmp_path: pathlib.Path,
             kernel_specs: KernelSpecManager) -> nbformat.NotebookNode:
  # The checkout under test comes first on the path, so the install cell never installs.
  path_entries = [str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])]
  env = {**os.environ, 'LTH_NOTEBOOK_FAST': '1', 'LTH_NOTEBOOK_WORKDIR': str(root),
         'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu', 'MPLBACKEND': 'Agg',
         'PYTHONPATH': os.pathsep.join(path_entries)}
  km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
  client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                          resources={'metadata': {'path': str(tmp_path)}})
  client.execute(cleanup_kc=True, env=env)
  return nb


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless_on_cpu(path, tmp_path, kernel_specs):
  root = tmp_path / 'workdirs'
  nb = _execute(nbformat.read(path, as_version=4), root, tmp_path, kernel_specs)
  images = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.outputs
            if o.output_type == 'display_data' and 'image/png' in o.data]
  assert images, 'the notebook shows its plots'
  # It ran an IMP experiment in a folder of the given root (never a default location).
  experiments = list(root.glob('*/experiment.json'))
  assert len(experiments) == 1
  assert (experiments[0].parent / 'magnitude' / 'round_01' / 'round.json').is_file()
  if path.stem == 'quickstart':
    # Run again with another setting, as a user does: a folder of its own, no refusal.
    for cell in nb.cells:
      if cell.cell_type == 'code' and 'NUM_ROUNDS = None' in cell.source:
        cell.source = cell.source.replace('NUM_ROUNDS = None', 'NUM_ROUNDS = 2')
    _execute(nb, root, tmp_path, kernel_specs)
    folders = sorted(p.parent for p in root.glob('*/experiment.json'))
    rounds = sorted(len(list(f.glob('magnitude/round_*/round.json'))) for f in folders)
    assert rounds == [2, 3]
