"""The Colab notebooks run headless on CPU with their fast settings, and are committed clean.

Each colab/*.ipynb executes in a fresh IPython kernel of this interpreter with
LTH_NOTEBOOK_FAST=1 (tiny settings), one CPU device and its own WORKDIR; a failing cell
fails the test with the cell's traceback. Those runs are marked `notebook`: CI runs them in
its Colab lane (the Python, jax and flax of Colab), and the README's test command leaves
them out (`-m "not notebook"`); `python -m pytest tests/test_notebooks.py` runs them here.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

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


@pytest.mark.slow
@pytest.mark.notebook
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


def _cells(path: pathlib.Path) -> tuple[str, str]:
  """The parameters cell and the install cell of a notebook."""
  sources = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == 'code']
  return sources[0], next(s for s in sources if 'pip' in s and 'import lth_jax\n' in s)


def _run_install_cell(path: pathlib.Path, source: str, prelude: str, cwd: pathlib.Path,
                      after: str = '') -> subprocess.CompletedProcess:
  """Runs the parameters and install cells (then `after`) in a fresh interpreter where
  lth_jax is not importable until `prelude`'s stand-in for pip says so."""
  parameters, install = _cells(path)
  blocked = "import sys\nsys.modules['lth_jax'] = None  # not installed\n"
  return subprocess.run(
      [sys.executable, '-c', '\n'.join([blocked, prelude, parameters, install, after])],
      env={**os.environ, 'LTH_JAX_SOURCE': source, 'PYTHONPATH': '', 'JAX_PLATFORMS': 'cpu'},
      cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
@pytest.mark.parametrize('source', ['not_a_checkout', 'missing.whl'])
def test_install_cell_refuses_a_source_it_cannot_install_and_says_what_to_set(
    path, source, tmp_path):
  (tmp_path / 'not_a_checkout').mkdir()
  no_pip = 'import subprocess\nsubprocess.run = lambda *a, **k: sys.exit("pip ran")\n'
  out = _run_install_cell(path, str(tmp_path / source), no_pip, tmp_path)
  assert out.returncode != 0 and 'pip ran' not in out.stderr
  message = out.stderr.strip().splitlines()[-1]
  assert message.startswith('RuntimeError: lth_jax is not installed')
  assert str(tmp_path / source) in message and 'set LTH_JAX_SOURCE' in message.replace(
      'Set', 'set')


# Python as on Colab before the install, and after a runtime restart ahead of an editable
# install's finder: 'lth_jax' is only the checkout folder in the working directory (an
# empty namespace package). The stand-in for pip records its arguments and lifts that.
WORKING_DIRECTORY_ONLY = """\
del sys.modules['lth_jax']
import os
import subprocess
from importlib.machinery import PathFinder
class WorkingDirectoryOnly:
  @staticmethod
  def find_spec(name, path=None, target=None):
    return PathFinder.find_spec(name, [os.getcwd()]) if name == 'lth_jax' else None
sys.meta_path.insert(0, WorkingDirectoryOnly)
def fake_pip(cmd, **kw):
  print('PIP', cmd[3:])
  sys.meta_path.remove(WorkingDirectoryOnly)
  return subprocess.CompletedProcess(cmd, 0)
subprocess.run = fake_pip
"""


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_from_the_checkouts_parent_folder_installs_the_checkout(path, tmp_path):
  # Colab's layout: the working directory /content holds the checkout /content/lth_jax.
  checkout = tmp_path / 'lth_jax'
  checkout.symlink_to(ROOT, target_is_directory=True)
  out = _run_install_cell(path, str(checkout), WORKING_DIRECTORY_ONLY, tmp_path,
                          after='print("FILE", lth_jax.__file__)')
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"PIP ['install', '-q', '-e', {str(checkout)!r}]" in out.stdout
  assert f'FILE {checkout / "lth_jax" / "__init__.py"}' in out.stdout
  assert 'lth_jax 0.' in out.stdout  # the version line


@pytest.mark.parametrize('url, name', [('https://github.com/someone/my_fork.git', 'my_fork'),
                                       ('git@github.com:someone/lth-copy', 'lth-copy')])
def test_install_cell_clones_a_git_url_into_a_folder_of_its_name(url, name, tmp_path):
  # The clone is a link to this checkout; a clone anywhere else stops before it is made.
  fake = ('import os\nimport subprocess\n'
          'def fake_run(cmd, **kw):\n'
          '  if cmd[:2] == ["git", "clone"]:\n'
          f'    if cmd[-1] != os.path.join(os.getcwd(), {name!r}):\n'
          '      sys.exit(f"cloned into {cmd[-1]}")\n'
          f'    os.symlink({str(ROOT)!r}, cmd[-1])\n'
          '  else:\n'
          '    print("PIP", cmd[3:])\n'
          '    del sys.modules["lth_jax"]\n'
          '  return subprocess.CompletedProcess(cmd, 0)\n'
          'subprocess.run = fake_run\n')
  out = _run_install_cell(NOTEBOOKS[0], url, fake, tmp_path,
                          after='print("FILE", lth_jax.__file__)')
  assert out.returncode == 0, out.stderr[-3000:]
  clone = os.path.join(os.path.realpath(tmp_path), name)
  assert f"PIP ['install', '-q', '-e', {clone!r}]" in out.stdout
  assert f'FILE {os.path.join(clone, "lth_jax", "__init__.py")}' in out.stdout


@pytest.mark.slow
def test_install_cell_installs_a_wheel_that_carries_the_configs(tmp_path):
  # Built from a copy of the repository's files: a build/ folder in the checkout could hold
  # stale files, and the checkout stays as it is.
  source, wheels = tmp_path / 'source', tmp_path / 'wheels'
  listed = subprocess.run(['git', '-C', str(ROOT), 'ls-files', '-z', '--cached', '--others',
                           '--exclude-standard'], check=True, capture_output=True).stdout
  for name in filter(None, listed.decode().split('\0')):
    if (ROOT / name).is_file():
      (source / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / name, source / name)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
                  '--no-build-isolation', '-w', str(wheels), str(source)], check=True,
                 capture_output=True, timeout=300)
  wheel, = wheels.glob('lth_jax-*.whl')
  # pip into a folder of its own (this interpreter keeps its packages); the cell does the rest.
  target = tmp_path / 'site'
  pip = ('import subprocess\n_run = subprocess.run\n'
         'def fake_pip(cmd, **kw):\n'
         '  if cmd[1:4] != ["-m", "pip", "install"]:\n'
         '    return _run(cmd, **kw)\n'
         '  assert cmd[-1].endswith(".whl"), cmd\n'
         f'  _run([*cmd[:-1], "--no-deps", "--target", {str(target)!r}, cmd[-1]], **kw)\n'
         f'  sys.path.insert(0, {str(target)!r})\n'
         '  del sys.modules["lth_jax"]\n'
         '  subprocess.run = _run\n'
         'subprocess.run = fake_pip\n')
  check = ('\nfrom lth_jax.experiments import load_config\n'
           'print("FILE", lth_jax.__file__)\nprint("MODE", load_config("demo:tiny").mode)\n')
  out = _run_install_cell(NOTEBOOKS[0], str(wheel), pip, tmp_path, after=check)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'FILE {target}' in out.stdout and 'MODE imp' in out.stdout
  assert (target / 'lth_jax' / 'configs' / 'demo.py').is_file()
  assert (target / 'lth_jax' / 'data' / 'offline' / 'mnist5k.npz').is_file()
  # The command line finds a config by name in the installed package too.
  cli = subprocess.run(
      [sys.executable, '-m', 'lth_jax.main', '--config=demo:tiny', '--workdir=w',
       '--config.imp.num_rounds=0'], env={**os.environ, 'PYTHONPATH': str(target),
                                           'JAX_PLATFORMS': 'cpu'},
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert cli.returncode == 2 and 'config.imp.num_rounds=0: must be >= 1' in cli.stderr
  assert not (tmp_path / 'w').exists()
