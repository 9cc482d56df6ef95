"""The registry pattern every kind of choice uses: name -> part.

    CRITERIA = Registry('pruning criterion')
    CRITERIA.register('magnitude', Criterion(...))
    CRITERIA.get('magnitude')      # an unknown name lists the registered ones

Pruning criteria, pre-training objectives, tasks and experiment modes are each one
`Registry`; adding one is one module and one `register` call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar('T')


class Registry(Generic[T]):
  """Named parts of one kind, in registration order.

  Attributes:
    kind: what the parts are, for error messages ('pruning criterion', 'task', ...).
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._parts: dict[str, T] = {}

  def register(self, name: str, part: T) -> T:
    """Adds `part` under `name`.

    Args:
      name: the key configs and callers use.
      part: the registered object.

    Returns:
      `part`.

    Raises:
      ValueError: the name is taken.
    """
    if name in self._parts:
      raise ValueError(f'A {self.kind} named {name!r} exists already.')
    self._parts[name] = part
    return part

  def unregister(self, name: str) -> None:
    """Removes a part (tests that register a double remove it again)."""
    del self._parts[name]

  def get(self, name: str) -> T:
    """The part registered as `name`.

    Raises:
      ValueError: unknown name, listing the registered ones.
    """
    if name not in self._parts:
      raise ValueError(f'Unknown {self.kind} {name!r}; choose one of {sorted(self._parts)}.')
    return self._parts[name]

  def __contains__(self, name: object) -> bool:
    return name in self._parts

  def __iter__(self) -> Iterator[str]:
    return iter(self._parts)

  def values(self) -> list[T]:
    """The parts, in registration order."""
    return list(self._parts.values())
