"""The errors lth_jax raises for problems a user can fix, each with the fix in its message.

`python -m lth_jax.main` prints the message of these alone (no traceback; add
`--verbosity=1` for it) and exits with status 2; `user_error` says which errors those are.
Everything else is a bug and keeps its traceback.

A message that names a setting to change names it through `setting('data.pipeline=host')`:
the library knows settings by their dotted names only, and the layer that reads configs
says how its users spell them (`spell_settings`; `lth_jax.experiments` spells them as the
command line's config flags).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

# How `setting` spells a setting: as the library knows it, until a layer above says how
# its users set it (one slot, so that `spell_settings` needs no `global`).
_spelling: list[Callable[[str], str]] = [lambda name: name]


def spell_settings(spelling: Callable[[str], str]) -> None:
  """Sets how messages name a setting from now on (see `setting`).

  Args:
    spelling: 'field' or 'field=value' (dotted, e.g. 'optim.learning_rate') -> the text
      that sets it where the user sets it (e.g. a command-line flag).
  """
  _spelling[0] = spelling


def setting(name: str) -> str:
  """A setting as messages name it: `name` ('data.pipeline=host') as the user spells it."""
  return _spelling[0](name)


class ConfigError(ValueError):
  """A config value that cannot run: the message names the field, the value and the fix."""


class WorkdirError(ValueError):
  """A workdir that holds another experiment, or a change that would mix two recipes."""


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit the model; the message says why."""


class DatasetNotFoundError(FileNotFoundError):
  """A dataset that is not on disk (lth_jax never downloads at run time)."""


class DivergenceError(RuntimeError):
  """A fine-tuning run whose loss or weights became non-finite.

  Attributes:
    checkpoint_dir: the run's checkpoint folder (its last checkpoint is finite).
    epoch: the (1-based) epoch in which it happened.
    step: the first optimizer step (1-based) after which it was non-finite.
    learning_rate: the learning rate of that step.
    where: what the layers above the training loop know of the run (mode, round, seed),
      outermost first.
    moved_to: where the experiment layer moved the run's checkpoints (None: in place).
    half_precision: whether the run computed in bfloat16 (None: not known here); the
      advice suggests float32 only where it did.
    recipe: the config section of the recipe it trained with, which the advice names
      ('optim'; a paper task's own: 'paper.task_recipes.<task>.optim').
  """

  def __init__(self, checkpoint_dir: str, epoch: int, step: int, learning_rate: float):
    super().__init__(checkpoint_dir, epoch, step, learning_rate)
    self.checkpoint_dir = checkpoint_dir
    self.epoch = epoch
    self.step = step
    self.learning_rate = learning_rate
    self.where: list[str] = []
    self.moved_to: str | None = None
    self.half_precision: bool | None = None
    self.recipe = 'optim'

  def within(self, context: str) -> DivergenceError:
    """Adds what an outer layer knows of the run (e.g. 'round 3, seed 0'); returns self."""
    self.where.insert(0, context)
    return self

  def __str__(self) -> str:
    run = ', '.join([*self.where, f'epoch {self.epoch}, step {self.step}'])
    folder = self.moved_to or self.checkpoint_dir
    fixes = [f'a lower learning rate ({setting(f"{self.recipe}.learning_rate")})',
             f'a longer warm-up ({setting(f"{self.recipe}.warmup_epochs")})']
    if self.half_precision:
      fixes.append(f'float32 instead of bfloat16 ({setting("model.half_precision=False")})')
    return (f'Training diverged ({run}; its checkpoints are in {folder}): the loss or '
            f'the weights became NaN or infinite at learning rate {self.learning_rate:g}. '
            f'Nothing was recorded for this run. Likely fixes: {", ".join(fixes)}, or a '
            f'smaller weight decay ({setting(f"{self.recipe}.weight_decay")}). Then rerun '
            'the same command with the fix: finished work is kept and this run starts again.')


class NoSpaceError(OSError):
  """A write that found its disk full; the run stopped cleanly and a rerun resumes it.

  Attributes:
    path: what was being written (None where the writer did not say).
  """

  def __init__(self, path: str | None):
    super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    self.path = path

  def __str__(self) -> str:
    if self.path is None:
      where = 'the disk'
    else:
      where = f'the filesystem mounted at {_mount_point(self.path)} while writing {self.path}'
    return (f'No space left on {where}. Free some space there (or use a --workdir on '
            'another disk), then rerun the same command: finished work is kept and the '
            'run resumes from its last checkpoint.')


def _mount_point(path: str) -> str:
  """The mount point of the filesystem `path` lies on."""
  folder = os.path.abspath(path)
  while not os.path.ismount(folder):
    folder = os.path.dirname(folder)
  return folder


def no_space(error: BaseException, writing: str | None = None) -> NoSpaceError | None:
  """The full disk behind `error` (or behind what caused it), or None.

  Args:
    error: any exception.
    writing: what the failed code was writing, for errors that do not name their file
      (a failed write() names none, nor does tensorstore, orbax's array writer).

  Returns:
    A NoSpaceError naming the file (the error's own, else `writing`); None where
    nothing in the chain is a full disk.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, NoSpaceError):
      return error
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return NoSpaceError(error.filename or writing)
    if os.strerror(errno.ENOSPC) in str(error):  # tensorstore: the errno in its text only
      return NoSpaceError(writing)
    error = error.__cause__ or error.__context__
  return None


# What `python -m lth_jax.main` reports as a message rather than a traceback (see
# `user_error` for the rest).
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, WorkdirError, CheckpointError,
                                            DatasetNotFoundError, DivergenceError, NoSpaceError)


def user_error(error: BaseException, writing: str | None = None) -> Exception | None:
  """What `python -m lth_jax.main` reports of `error` as a message alone, or None for a bug.

  Args:
    error: an exception that ended a command.
    writing: where the command writes, named by a full disk's error that names no file
      (see `no_space`).

  Returns:
    `error` itself when it is one of USER_ERRORS, or an ImportError of an optional
    package that says how to install it (lth_jax's all do: 'pip install ...'); a
    NoSpaceError when a full disk caused it; otherwise None.
  """
  if isinstance(error, USER_ERRORS) or (isinstance(error, ImportError)
                                        and 'pip install' in str(error)):
    return error
  return no_space(error, writing)
