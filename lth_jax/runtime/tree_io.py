"""Pytrees of arrays on disk (orbax): masks, θ_p, rewind points.

    tree_io.save(path, tree)           # every process calls it; orbax writes one copy
    tree = tree_io.load(path, like)    # any process may call it on its own

Saving is collective: with several processes each one calls `save` and orbax writes the
files once, from the primary host. Loading is local to the calling process, so the chief
can read a tree alone (e.g. to write a report) without the others joining a barrier.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def save(path: str | os.PathLike, tree: Any, *, overwrite: bool = False) -> None:
  """Writes a tree of arrays (as host copies), every process taking part.

  Args:
    path: a directory to create.
    tree: the pytree (numpy or replicated jax arrays).
    overwrite: replace an existing checkpoint at `path`.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f'{path} already exists; pass overwrite=True to replace it.')
  with ocp.StandardCheckpointer() as checkpointer:
    # Host arrays: orbax writes them once whatever device each leaf lives on.
    checkpointer.save(path, jax.device_get(tree), force=overwrite)


def load(path: str | os.PathLike, like: Any = None) -> Any:
  """Reads a tree written by `save`, in this process alone.

  Args:
    path: the checkpoint directory.
    like: a tree of the structure (and dtypes) to restore; None: as saved.

  Returns:
    The tree, numpy leaves.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f'No checkpoint at {path}.')
  me = jax.process_index()
  options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  with ocp.StandardCheckpointer(multiprocessing_options=options) as checkpointer:
    return checkpointer.restore(path, None if like is None else jax.device_get(like))
