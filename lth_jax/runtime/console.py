"""What the person at the console reads: progress lines (chief process only) and tables.

    console.say('round 3: sparsity 48.80%')
    print(console.format_table(rows, ['round', 'sparsity', 'test_accuracy']))

Printed rather than logged, so that notebooks and terminals show them whatever the
absl verbosity; on several hosts only process 0 prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lth_jax.runtime import sharding


def say(message: str) -> None:
  """Prints one progress message on the chief process.

  Args:
    message: the text.
  """
  if sharding.is_chief():
    print(message, flush=True)


def cell(value: Any) -> str:
  """A table cell: floats to 4 decimals, shapes as 3x3x16x16, None as '-'."""
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.4f}'
  if isinstance(value, tuple):
    return 'x'.join(map(str, value))
  return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """Formats rows as a fixed-width text table, the first column left-aligned.

  Args:
    rows: dicts holding the columns (a missing one shows as '-').
    columns: the columns to show, in order.

  Returns:
    The table, a header line then one line per row.
  """
  body = [[cell(r.get(c)) for c in columns] for r in rows]
  widths = [max([len(c), *(len(b[i]) for b in body)]) for i, c in enumerate(columns)]
  lines = [list(columns)] + body
  return '\n'.join('  '.join(v.ljust(w) if i == 0 else v.rjust(w)
                             for i, (v, w) in enumerate(zip(line, widths))).rstrip()
                   for line in lines)
