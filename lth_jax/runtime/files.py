"""Files written atomically, so that a crash or a concurrent writer never leaves half a file.

    files.write_json(path, value)       # also write_npz, write_table (CSV + JSON), save_figure
    files.read_json(path, default)      # a record, or an error that names it and the fix

Each write goes to a uniquely named temporary file in the target's folder, reaches the
disk, and is then renamed over the target: readers see the old file or the new one, and
processes or threads writing the same path never share a temporary file. Files get the
permissions the umask allows (0644 under the usual 022), so that every host and user of
a shared filesystem can read a workdir.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import numpy as np
from absl import logging

from lth_jax.errors import WorkdirError


def atomic_write(path: str, write: Callable[[IO[Any]], None], mode: str = 'w') -> str:
  """Writes a file atomically: into a uniquely named temporary file, then renamed.

  A crash leaves no half-written file, and processes or threads writing the same path
  never share a temporary file. The file's permissions are 0666 less the umask, as for
  any file a program creates.

  Args:
    path: the file to write; its folder is created.
    write: called with the open temporary file.
    mode: 'w' (text) or 'wb'.

  Returns:
    `path`.
  """
  folder = os.path.dirname(path) or '.'
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, f'.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp')
  # os.open applies the umask to 0o666 (tempfile.mkstemp would make it 0600, locking the
  # other hosts and users of a shared workdir out); O_EXCL keeps the name ours alone.
  handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    # Text in UTF-8 whatever the locale: tables and verdicts name θ_p.
    text = {'newline': '', 'encoding': 'utf-8'} if 'b' not in mode else {}
    with os.fdopen(handle, mode, **text) as f:
      write(f)
      # On the disk before the rename: a machine that crashes right after it must not
      # leave the target empty or cut short.
      f.flush()
      os.fsync(f.fileno())
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


def read_json(path: str, default: Any = None, *, fix: str | None = None) -> Any:
  """Reads a JSON record (written by `write_json`), or `default` where there is none.

  A record that a crash of the machine or a full disk cut short cannot be parsed. Where
  its writer recomputes a missing record (`fix` None) it counts as missing, with a
  warning; otherwise reading stops with an error that names the file and what to do.

  Args:
    path: the file.
    default: what a missing file reads as (and an unreadable one, when `fix` is None).
    fix: what the user should do about the file when it cannot be read, e.g. 'delete
      it and rerun'; None: the caller recomputes it.

  Returns:
    The parsed JSON, or `default`.

  Raises:
    WorkdirError: the file cannot be parsed and `fix` is given; the message names the
      file, why and `fix`.
  """
  if not os.path.exists(path):
    return default
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
    why = (f'{path} cannot be read ({type(e).__name__}: {e}): it was cut short or '
           'corrupted, e.g. by a crash of the machine or a full disk')
    if fix is None:
      logging.warning('%s; it is recomputed.', why)
      return default
    raise WorkdirError(f'{why}. {fix}') from None


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
