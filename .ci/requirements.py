"""Prints the project's dependencies and those of the extras named, one per line.

CI installs these into the main lane's venv while the Colab lane installs its own, then
installs the project itself (`pip install -e`) once that is done, so that two pips never
build the project from the same folder at once. An extra that names the project's own
extras (`lth_jax[rebuild-data]`) is expanded.

    python3 .ci/requirements.py torch test
"""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parents[1] / 'pyproject.toml').read_text())['project']


def extras_requirements(extras: list[str]) -> list[str]:
  found = []
  for extra in extras:
    for requirement in project['optional-dependencies'][extra]:
      own = re.fullmatch(rf"{project['name']}\[(.+)\]", requirement)
      found += extras_requirements(own[1].split(',')) if own else [requirement]
  return found


if __name__ == '__main__':
  print('\n'.join(dict.fromkeys(project['dependencies'] + extras_requirements(sys.argv[1:]))))
