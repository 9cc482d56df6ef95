"""The errors lth_jax raises for problems a user can fix, each with the fix in its message.

`python -m lth_jax.main` prints the message of these alone (no traceback; add
`--verbosity=1` for it) and exits with status 2. Everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


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
  """

  def __init__(self, checkpoint_dir: str, epoch: int, step: int, learning_rate: float):
    super().__init__(checkpoint_dir, epoch, step, learning_rate)
    self.checkpoint_dir = checkpoint_dir
    self.epoch = epoch
    self.step = step
    self.learning_rate = learning_rate
    self.where: list[str] = []
    self.moved_to: str | None = None

  def within(self, context: str) -> DivergenceError:
    """Adds what an outer layer knows of the run (e.g. 'round 3, seed 0'); returns self."""
    self.where.insert(0, context)
    return self

  def __str__(self) -> str:
    run = ', '.join([*self.where, f'epoch {self.epoch}, step {self.step}'])
    folder = self.moved_to or self.checkpoint_dir
    return (f'Training diverged ({run}; its checkpoints are in {folder}): the loss or '
            f'the weights became NaN or infinite at learning rate {self.learning_rate:g}. '
            'Nothing was recorded for this run. Likely fixes: a lower learning rate '
            '(--config.optim.learning_rate), a longer warm-up (--config.optim.warmup_epochs), '
            'float32 instead of bfloat16 (--config.model.half_precision=False), or a smaller '
            'weight decay. Then rerun the same command with the fix: finished work is kept '
            'and this run starts again.')


# What `python -m lth_jax.main` reports as a message rather than a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, WorkdirError, CheckpointError,
                                            DatasetNotFoundError, DivergenceError)
