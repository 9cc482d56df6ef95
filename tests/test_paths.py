"""The workdir's layout is spelled in `lth_jax.runtime.paths` only (read from the source)."""

from __future__ import annotations

import ast
import os
import pathlib

from lth_jax.runtime import paths

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'lth_jax'
_W, _X = 'WORKDIR', 'ARG'  # placeholders: what is left of a path is the layout's own
_JOINED = [
    paths.round_record(_W), paths.mask_dir(_W), paths.mask_torch(_W, 'npz'),
    paths.mask_torch(_W, 'pth'), paths.rewind_point(_W), paths.final_variables(_W),
    paths.transfer_dir(_W), paths.transfer_result(_W, _X, 0),
    paths.transfer_checkpoints(_W, _X, 0), paths.analysis_runs_dir(_W, 0),
    paths.pretrain_variables(_W), paths.pretrain_checkpoints(_W), paths.diverged_record(_W),
    paths.diverged_dir(_W, 0), paths.lmc_dir(_W), paths.upstream_dir(_W, _X),
    paths.random_mask(_W, _X), paths.theta_p_metric(_W), paths.released_checkpoint(_W),
    paths.results_table(_W),
    paths.extreme_sparsity_table(_W), paths.verdict_file(_W),
    os.path.join(_W, paths.EXPERIMENT_FILE), os.path.join(_W, paths.INPUTS_FILE),
    paths.round_masks_glob(_W), paths.imp_runs_glob(), paths.transfer_runs_glob(),
    paths.any_runs_glob(), *paths.pretrain_globs()]
# Folder names made from a number: rounds, seeds, the sizes of a perturbation sweep.
NUMBERED = ('round_', 'seed_', 'size_')
# Every name of the layout that a path could be joined from ('round.json', 'upstream', ...).
LAYOUT_NAMES = {part for path in _JOINED for part in path.split(os.sep)
                if part not in (_W, _X, '*', '**', '0') and not part.startswith(NUMBERED)}
# Calls whose string arguments are paths (os.path.join, glob.glob, pathlib.Path, ...).
PATH_CALLS = ('join', 'glob', 'iglob', 'Path', 'rglob')


def _is_layout(text: str) -> bool:
  """Whether a piece of a path is, or contains as a component, a name of the layout.

  (What the analysis writes inside its folder, e.g. its report, is its own: the layout
  names the folder, `paths.analysis_dir`.)
  """
  parts = [p for p in text.split('/') if p]
  return any(p in LAYOUT_NAMES or p.startswith(NUMBERED) or p.startswith('_vs_sparsity')
             or p == '_tensorboard' for p in parts)


def _looks_like_path(text: str) -> bool:
  """A constant spelled as a path: no blank, and components (a glob, 'a/b')."""
  return '/' in text and not any(c.isspace() for c in text)


def _spellings(source: str) -> list[tuple[int, str]]:
  """Where a module builds a layout name itself: (line, what)."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.JoinedStr):  # f'round_{k:02d}'
      for a, b in zip(node.values, node.values[1:]):
        if (isinstance(a, ast.Constant) and isinstance(b, ast.FormattedValue)
            and str(a.value).endswith(NUMBERED)):
          found.append((node.lineno, f'f-string {a.value!r}{{...}}'))
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
        node.value == '_tensorboard'
        or _looks_like_path(node.value) and _is_layout(node.value)):  # '*/round_*/seed_*'
      found.append((node.lineno, repr(node.value)))
    args = []
    if isinstance(node, ast.Call):
      name = getattr(node.func, 'attr', getattr(node.func, 'id', None))
      if name in PATH_CALLS:  # os.path.join(run_dir, 'round.json')
        args = [(name, a) for a in node.args]
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # path / 'mask'
      args = [('/', node.right)]
    for name, arg in args:
      pieces = ([arg] if isinstance(arg, ast.Constant)  # f'results{suffix}' too
                else arg.values if isinstance(arg, ast.JoinedStr) else [])
      for piece in pieces:
        if (isinstance(piece, ast.Constant) and isinstance(piece.value, str)
            and not _looks_like_path(piece.value) and _is_layout(piece.value)):
          found.append((node.lineno, f'{name}(..., {piece.value!r})'))
  return found


def test_the_spelling_check_finds_what_it_looks_for():
  source = ('import os\n'
            "a = os.path.join(run, f'round_{k:02d}', 'round.json')\n"
            "b = glob.glob(os.path.join(root, '**', 'round_*', 'mask'))\n"
            "c = d + '_tensorboard'\n"
            "trained = ('*/round_*/seed_*', '**/pretrain/train', 'transfer/**/seed_*')\n"
            "e = os.path.join(workdir, f'results{suffix}')\n"
            "f = pathlib.Path(w) / 'upstream'\n"
            "g = os.path.join(w, 'theta_p.json'), os.path.join(root, 'lmc')\n"
            "h = os.path.join(w, 'random_masks', f'{m}_{t}')\n"
            "i = os.path.join(w, f'{metric.file}_vs_sparsity{suffix}.png')\n"
            # Messages are not paths, even when they name one.
            "logging.info('Round %d of seed %d: see round_XX/mask', k, s)\n"
            "say(f'Tickets: {run_dir}/round_XX/mask (and mask_torch.npz)')\n"
            "j = os.path.join(data_dir, 'images')\n")
  assert sorted(_spellings(source)) == [
      (2, "f-string 'round_'{...}"), (2, "join(..., 'round.json')"),
      (2, "join(..., 'round_')"), (3, "join(..., 'mask')"), (3, "join(..., 'round_*')"),
      (4, "'_tensorboard'"), (5, "'**/pretrain/train'"), (5, "'*/round_*/seed_*'"),
      (5, "'transfer/**/seed_*'"),
      (6, "join(..., 'results')"), (7, "/(..., 'upstream')"),
      (8, "join(..., 'lmc')"), (8, "join(..., 'theta_p.json')"),
      (9, "join(..., 'random_masks')"), (10, "join(..., '_vs_sparsity')")]


def test_no_module_but_paths_spells_a_name_of_the_workdir():
  found = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    if path != PACKAGE / 'runtime' / 'paths.py':
      spelled = _spellings(path.read_text(encoding='utf-8'))
      if spelled:
        found[str(path.relative_to(PACKAGE.parent))] = spelled
  assert not found, f'Ask lth_jax.runtime.paths for these names instead: {found}'


def test_paths_join_the_layout_of_todays_workdirs():
  run = os.path.join('w', 'magnitude')
  assert paths.round_dir(run, 3) == os.path.join(run, 'round_03')
  assert paths.round_dir(run, 120) == os.path.join(run, 'round_120')
  assert paths.seed_dir(paths.round_dir(run, 3), 1) == os.path.join(run, 'round_03', 'seed_1')
  assert paths.round_record('r') == os.path.join('r', 'round.json')
  assert paths.mask_dir('r') == os.path.join('r', 'mask')
  assert paths.mask_torch('r', 'pth') == os.path.join('r', 'mask_torch.pth')
  assert paths.rewind_point(run) == os.path.join(run, 'rewind_point')
  assert paths.final_variables('s') == os.path.join('s', 'final_variables')
  assert paths.tensorboard_dir('a/seed_0/') == 'a/seed_0_tensorboard'
  assert paths.transfer_result('t', 'round_02', 4) == os.path.join(
      't', 'round_02', 'seed_4', 'result.json')
  assert paths.transfer_checkpoints('t', 'dense', 0) == os.path.join(
      't', 'dense', 'seed_0', 'train')
  assert paths.transfer_dir('w', 'cifar10') == os.path.join('w', 'transfer', 'cifar10')
  assert paths.analysis_runs_dir('w', 2) == os.path.join('w', 'analysis', 'runs', 'round_02')
  assert paths.perturbation_dir('r', 'weight_noise', 0.5) == os.path.join(
      'r', 'weight_noise', 'size_0.5')
  assert paths.imp_runs_glob() == os.path.join('*', 'round_*', 'seed_*')
  assert paths.transfer_runs_glob() == os.path.join('transfer', '**', 'seed_*')
  assert paths.any_runs_glob() == os.path.join('**', 'seed_*')
  assert paths.pretrain_globs() == (os.path.join('**', 'pretrain', 'train'),
                                    os.path.join('**', 'pretrain', 'variables'))
  assert paths.upstream_dir('w', 'moco') == os.path.join('w', 'upstream', 'moco')
  assert paths.random_mask('w', 'random_global_round_02') == os.path.join(
      'w', 'random_masks', 'random_global_round_02')
  assert paths.theta_p_metric('w') == os.path.join('w', 'theta_p.json')
  assert paths.lmc_dir('r') == os.path.join('r', 'lmc')
  assert paths.results_table('w') == os.path.join('w', 'results')
  assert paths.results_table('w', '_cifar10') == os.path.join('w', 'results_cifar10')
  assert paths.results_plot('w', 'accuracy', '_svhn') == os.path.join(
      'w', 'accuracy_vs_sparsity_svhn.png')
  assert paths.extreme_sparsity_table('w') == os.path.join('w', 'extreme_sparsity')
  assert paths.verdict_file('w') == os.path.join('w', 'verdict.txt')
  # Discovery of the rounds a workdir holds is the one place a name is read back.
  assert [paths.round_index(n) for n in ('round_07', os.path.join('x', 'round_12'),
                                         'round_7x', 'seed_0')] == [7, 12, None, None]
