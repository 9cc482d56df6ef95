"""The benchmarks' `--set FIELD=VALUE ...` overrides of config fields."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any


def parse(items: Sequence[str]) -> list[tuple[str, Any]]:
  """`['optim.num_epochs=40', 'data.dataset=digits']` -> [(field, value), ...].

  Args:
    items: 'FIELD=VALUE' strings; a value is a Python literal where it reads as one
      (40, 0.1, True, (1, 2)), else the string itself.

  Returns:
    (field, value) pairs in the given order.
  """
  pairs = []
  for item in items:
    field, text = item.split('=', 1)
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    pairs.append((field, value))
  return pairs
