"""The package stays readable in pieces: no module over 400 lines, no function over 80.

The limits a newcomer's review set (a module read in one sitting, a function on one
screen); read from the source, so a module or function that grows past them fails here
with its name, not in a later review.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'lth_jax'
MODULE_LINES = 400
FUNCTION_LINES = 80  # from `def` to the last line, the docstring included


def _modules() -> list[pathlib.Path]:
  modules = sorted(PACKAGE.rglob('*.py'))
  assert len(modules) > 50, PACKAGE  # the package, not an empty folder
  return modules


def test_no_module_is_over_400_lines():
  long = {str(p.relative_to(PACKAGE)): n for p in _modules()
          if (n := len(p.read_text().splitlines())) > MODULE_LINES}
  assert not long, f'split these modules (lines): {long}'


def test_no_function_is_over_80_lines():
  long = {}
  for path in _modules():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > FUNCTION_LINES:
          long[f'{path.relative_to(PACKAGE)}:{node.name}'] = lines
  assert not long, f'split these functions (lines): {long}'
