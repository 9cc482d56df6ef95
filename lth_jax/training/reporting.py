"""Where a run's scalars and progress go: clu's writers, or the log where clu is absent.

clu's metric writers import TensorFlow (TensorBoard summaries). On a machine without clu
or TensorFlow (a bare accelerator host) the scalars go to the log instead, so training
never needs them. Progress (steps/s, ETA) is lth_jax's own log line either way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from absl import logging


class Writer(Protocol):
  """The part of clu's `MetricWriter` that training uses."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...
  def flush(self) -> None: ...
  def close(self) -> None: ...


class LogWriter:
  """Scalars to the log, one line a call (clu's `LoggingWriter` where clu is absent)."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs `scalars` at `step`."""
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' for k, v in scalars.items()))

  def flush(self) -> None:
    """Nothing is buffered."""

  def close(self) -> None:
    """Nothing is held open."""


class LogProgress:
  """Steps/s and ETA to the log every `every_s` seconds, and steps/s to the writer.

  Its own log line rather than clu's `ReportProgress`, whose only console output is its
  "work unit notes" line, which the CLI keeps out of the console as library chatter.

  Args:
    num_train_steps: the run's total steps, for the percentage and ETA.
    writer: where steps_per_sec is written beside the epoch scalars (None: the log only).
    every_s: seconds between two reports.
  """

  def __init__(self, num_train_steps: int, writer: Writer | None = None,
               every_s: float = 60.0):
    self.num_train_steps, self.writer, self.every_s = num_train_steps, writer, every_s
    self._last_time, self._last_step = time.monotonic(), None
    self._timed = 0.0

  def __call__(self, step: int) -> None:
    """Reports if `every_s` passed since the last report (the first call starts the clock)."""
    now = time.monotonic()
    if self._last_step is None:
      self._last_time, self._last_step, self._timed = now, step, 0.0
      return
    if now - self._last_time < self.every_s:
      return
    rate = (step - self._last_step) / max(now - self._last_time - self._timed, 1e-9)
    eta_min = (self.num_train_steps - step) / max(rate, 1e-9) / 60
    logging.info('%.1f steps/s, %.1f%% (%d/%d), ETA: %.0f min', rate,
                 100 * step / self.num_train_steps, step, self.num_train_steps, eta_min)
    if self.writer is not None:
      self.writer.write_scalars(step, {'steps_per_sec': rate})
    self._last_time, self._last_step, self._timed = now, step, 0.0

  @contextlib.contextmanager
  def timed(self, name: str) -> Iterator[None]:
    """Keeps the time spent in the block (e.g. evaluation) out of the steps/s."""
    del name
    start = time.monotonic()
    try:
      yield
    finally:
      self._timed += time.monotonic() - start


def metric_writer(logdir: str, *, just_logging: bool) -> Writer:
  """clu's default writer (TensorBoard files in `logdir` and the log), or the log alone.

  Args:
    logdir: the TensorBoard folder.
    just_logging: write no files (processes other than the chief).

  Returns:
    A synchronous writer; the log only where clu or TensorFlow is not installed.
  """
  try:
    from clu import metric_writers  # imports TensorFlow: optional
  except ImportError:
    return LogWriter()
  return metric_writers.create_default_writer(logdir, just_logging=just_logging,
                                              asynchronous=False)
