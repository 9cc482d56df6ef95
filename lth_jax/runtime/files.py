"""Files written atomically, so that a crash or a concurrent writer never leaves half a file.

    files.write_json(path, value)       # also write_npz, write_table (CSV + JSON), save_figure

Each write goes to a uniquely named temporary file in the target's folder and is then
renamed over the target: readers see the old file or the new one, and processes or
threads writing the same path never share a temporary file.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import numpy as np


def atomic_write(path: str, write: Callable[[IO[Any]], None], mode: str = 'w') -> str:
  """Writes a file atomically: into a uniquely named temporary file, then renamed.

  A crash leaves no half-written file, and processes or threads writing the same path
  never share a temporary file.

  Args:
    path: the file to write; its folder is created.
    write: called with the open temporary file.
    mode: 'w' (text) or 'wb'.

  Returns:
    `path`.
  """
  folder = os.path.dirname(path) or '.'
  os.makedirs(folder, exist_ok=True)
  handle, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.',
                                 suffix='.tmp')
  try:
    with os.fdopen(handle, mode, **({'newline': ''} if 'b' not in mode else {})) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_json(path: str, value: Any) -> str:
  """Writes `value` as JSON atomically (see `atomic_write`).

  Args:
    path: the file to write; its folder is created.
    value: JSON-compatible data (numpy scalars become floats).

  Returns:
    `path`.
  """
  return atomic_write(path, lambda f: json.dump(value, f, indent=1, default=float))


def write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> str:
  """Writes arrays as a compressed `.npz` atomically (see `atomic_write`).

  Args:
    path: the file to write (ending in .npz).
    arrays: name -> array.

  Returns:
    `path`.
  """
  return atomic_write(path, lambda f: np.savez_compressed(f, **arrays), mode='wb')


def save_figure(fig: Any, path: str, dpi: int = 120) -> str:
  """Saves a matplotlib figure atomically, in the format of the path's extension.

  Args:
    fig: the figure.
    path: e.g. 'plot.png' or 'plot.pdf'.
    dpi: resolution of raster formats.

  Returns:
    `path`.
  """
  fmt = os.path.splitext(path)[1].lstrip('.') or 'png'
  return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi), mode='wb')


def write_table(path_stem: str, rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
  """Writes rows as `<stem>.csv` and `<stem>.json` (atomically, see `atomic_write`).

  Args:
    path_stem: output path without extension.
    rows: dicts; the CSV holds their scalar fields (header: the union of keys in
      first-seen order), the JSON everything.

  Returns:
    The two paths written.
  """
  fields: list[str] = []
  for row in rows:
    fields += [k for k, v in row.items()
               if k not in fields and not isinstance(v, (list, tuple, dict))]

  def write_csv(f: IO[str]) -> None:
    # Nested values (per-seed runs) go to the JSON file only.
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)

  csv_path = atomic_write(f'{path_stem}.csv', write_csv)
  return csv_path, write_json(f'{path_stem}.json', list(rows))
