"""The checkpoints of one `fit` run: its orbax manager, what a save holds, how a resume
reads it back.

A save holds the train state, the run's meta (epoch, step, history, the best validation
value and epoch, its test metrics or `test_pending`, the train sums of the epoch under
way), the late-rewinding point when there is one, and the best epoch's variables while
they are untested. Meta in the formats of older lth_jax still resumes (`upgrade_meta`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from lth_jax.errors import no_space
from lth_jax.runtime import sharding
from lth_jax.training.steps import TrainState


def fresh_meta() -> dict[str, Any]:
  """The meta of a run that has not trained yet (`test_pending`: the best epoch's
  variables are saved with the state, not yet tested; `seconds`: the time `fit` spent on
  the run up to the save, over every process that trained it)."""
  return {'epoch': 0, 'step': 0, 'history': [], 'best_val': None, 'best_epoch': 0,
          'test_metrics': {}, 'test_pending': False, 'train_sums': {}, 'has_rewind': False,
          'seconds': 0.0}


def upgrade_meta(meta: dict[str, Any], metric: str) -> dict[str, Any]:
  """`meta` in today's keys, also when it is in the accuracy-only format.

  Checkpoints written before metrics were named by the task (classification only) kept
  `best_val_accuracy` (-1 before the first epoch) and `test_accuracy` (None before it)
  where today's keep `best_val` and `test_metrics`; such runs still resume. Those written
  while each improvement was tested at once have no `test_pending`: their best epoch's
  test metrics are in `test_metrics`. Those written before runs were timed have no
  `seconds`: the time before them is not known, and counts as 0.

  Args:
    meta: the meta a checkpoint holds (changed in place).
    metric: the run's headline metric (the key of an accuracy-only format's test value).

  Returns:
    `meta`.
  """
  meta.setdefault('test_pending', False)
  meta.setdefault('seconds', 0.0)
  if 'best_val_accuracy' in meta:
    best, test = meta.pop('best_val_accuracy'), meta.pop('test_accuracy')
    meta['best_val'] = None if best < 0 else best
    meta['test_metrics'] = {} if test is None else {metric: test}
  return meta


def save(manager: ocp.CheckpointManager, state: TrainState, meta: dict[str, Any],
         rewind: Any | None, best: Any | None) -> None:
  """Saves a checkpoint at `meta['step']`.

  Args:
    manager: the run's manager (`opened`).
    state: the train state.
    meta: the run's meta.
    rewind: the late-rewinding variables, or None.
    best: the best epoch's untested variables, or None.
  """
  # Host copies: the state is replicated, so one copy is the whole checkpoint, and
  # orbax then need not slice every replicated device array (several times slower).
  items = {'state': ocp.args.StandardSave(jax.device_get(state)),
           'meta': ocp.args.JsonSave(meta)}
  for name, variables in (('rewind', rewind), ('best', best)):
    if variables is not None:
      items[name] = ocp.args.StandardSave(jax.device_get(variables))
  manager.save(meta['step'], args=ocp.args.Composite(**items), force=True)


def restore(manager: ocp.CheckpointManager, state: TrainState, mesh: Mesh, metric: str
            ) -> tuple[TrainState, dict[str, Any], Any | None, Any | None]:
  """The latest checkpoint's state, meta, rewind point and untested best variables.

  Args:
    manager: the run's manager, holding a checkpoint.
    state: a train state of the run's structure.
    mesh: the mesh the restored arrays are replicated over.
    metric: the run's headline metric (see `upgrade_meta`).

  Returns:
    (state, meta, rewind variables or None, untested best variables or None).
  """
  step = manager.latest_step()
  meta = upgrade_meta(
      manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'],
      metric)
  host_state = jax.device_get(state)
  items = {'state': ocp.args.StandardRestore(host_state)}
  for name, present in (('rewind', meta['has_rewind']), ('best', meta['test_pending'])):
    if present:
      items[name] = ocp.args.StandardRestore(host_state.variables)
  restored = sharding.replicate(dict(manager.restore(step, args=ocp.args.Composite(**items))),
                                mesh)
  return restored['state'], meta, restored.get('rewind'), restored.get('best')


def final_state(checkpoint_dir: str, like: TrainState, mesh: Mesh,
                metric: str) -> TrainState:
  """The last state a finished (or interrupted) `fit` saved in `checkpoint_dir`.

  Args:
    checkpoint_dir: the earlier run's checkpoints (`fit`'s carry_from).
    like: a train state of the run's structure.
    mesh: the mesh the state is replicated over.
    metric: the run's headline metric.

  Returns:
    The state.

  Raises:
    ValueError: the folder holds no checkpoint.
  """
  manager = ocp.CheckpointManager(os.path.abspath(checkpoint_dir))
  try:
    if manager.latest_step() is None:
      raise ValueError(f'carry_from={checkpoint_dir!r} holds no checkpoint of a previous '
                       'run; pass the checkpoint_dir of a run that has trained.')
    return restore(manager, like, mesh, metric)[0]
  finally:
    manager.close()


@contextlib.contextmanager
def opened(checkpoint_dir: str, async_checkpoints: bool | None
           ) -> Iterator[ocp.CheckpointManager]:
  """An orbax CheckpointManager whose writes have all ended when the block does.

  Args:
    checkpoint_dir: the run's checkpoints (the latest one is kept).
    async_checkpoints: write in the background; None: on accelerators only (see `fit`).

  Yields:
    The manager.

  Raises:
    NoSpaceError: the disk filled up during a write, in the block or in the background;
      once, in place of orbax's errors (and the checkpoint that failed is not kept).
  """
  if async_checkpoints is None:
    async_checkpoints = jax.default_backend() != 'cpu'
  manager = ocp.CheckpointManager(
      os.path.abspath(checkpoint_dir),
      options=ocp.CheckpointManagerOptions(max_to_keep=1,
                                           enable_async_checkpointing=async_checkpoints))
  try:
    try:
      yield manager
    finally:
      # Nothing is left in flight when fit returns or raises: a DivergenceError keeps the
      # last finite checkpoint whole, and a finished run's files are all written.
      manager.wait_until_finished()
      manager.close()
  except Exception as e:
    full = no_space(e, writing=checkpoint_dir)
    if full is None:
      raise
    _discard_unfinished(checkpoint_dir)
    if full is e:
      raise
    raise full from e


def _discard_unfinished(checkpoint_dir: str, quiet_s: float = 0.2,
                        limit_s: float = 60.) -> None:
  """Removes the temporary folders of the checkpoint whose save failed.

  Once one item of a save fails, orbax stops awaiting the others, and their writes may
  still be landing in its temporary folder; a rerun in the same process would race them
  when orbax clears that folder. So the folders are removed until they stay gone for
  `quiet_s` (at most `limit_s`).
  """
  if jax.process_index() != 0:
    return
  pattern = os.path.join(glob.escape(checkpoint_dir), '*.orbax-checkpoint-tmp*')
  deadline = time.monotonic() + limit_s
  while time.monotonic() < deadline:
    unfinished = glob.glob(pattern)
    if not unfinished:
      time.sleep(quiet_s)
      if not glob.glob(pattern):
        return
    for path in unfinished:
      shutil.rmtree(path, ignore_errors=True)
  logging.warning('Writes into the unfinished checkpoint in %s went on for %.0f s after its '
                  'save failed; orbax removes it at the next save.', checkpoint_dir, limit_s)
