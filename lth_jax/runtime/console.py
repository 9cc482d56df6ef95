"""What the person at the console reads: progress lines (chief process only), tables, the log.

    console.say('round 3: sparsity 48.80%')
    print(console.format_table(rows, ['round', 'sparsity', 'test_accuracy']))
    console.show_log(verbose=False)     # in a command's main: lth_jax's own log lines

Progress is printed rather than logged, so that notebooks and terminals show it whatever
the absl verbosity; on several hosts only process 0 prints.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging as std_logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from absl import logging

from lth_jax import errors
from lth_jax.runtime import sharding

# The lth_jax package's folder: log lines from files under it are lth_jax's own.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# What TensorFlow's C++ libraries print while they load (oneDNN, CUDA probing, twice): absl
# INFO lines from before anything can set absl's level, so no environment variable mutes
# them (TF_CPP_MIN_LOG_LEVEL does not).
_NATIVE_INFO = re.compile(rb'I\d{4} [\d:.]+ +\d+ \S+\.cc:\d+\] |WARNING: All log messages '
                          rb'before absl::InitializeLog\(\) is called')


class _OwnLines(std_logging.Filter):
  """Keeps lth_jax's own log lines and every library's warnings and errors but a full disk's.

  A full disk ends the command with one line (`errors.NoSpaceError`); orbax would log each
  write it failed, with the traceback, before that.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.pathname.startswith(_PACKAGE_DIR):
      return True
    if record.levelno < std_logging.WARNING:
      return False
    return not (record.exc_info and errors.no_space(record.exc_info[1]))


def _without_closed_loops(hook: Callable[[Any], None]) -> Callable[[Any], None]:
  """`hook` (a `sys.unraisablehook`) less the echoes of a failed background write.

  Once one of orbax's background writes fails (a full disk), every tensorstore write still
  in flight reports to its closed event loop, a traceback each; the failure itself is
  reported once.
  """

  def unraisable(args: Any) -> None:
    if not (isinstance(args.exc_value, RuntimeError)
            and str(args.exc_value) == 'Event loop is closed'):
      hook(args)

  return unraisable


@contextlib.contextmanager
def _native_info_dropped() -> Iterator[None]:
  """Leaves C++ INFO lines out of stderr (the file descriptor) in the block; the rest passes."""
  sys.stderr.flush()
  stderr = os.dup(2)
  read, write = os.pipe()
  os.dup2(write, 2)
  os.close(write)

  def forward() -> None:
    with os.fdopen(read, 'rb') as lines, os.fdopen(stderr, 'wb', buffering=0) as out:
      for line in lines:
        if not _NATIVE_INFO.match(line):
          out.write(line)

  thread = threading.Thread(target=forward, name='native_info_dropped', daemon=True)
  thread.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(stderr, 2)  # closes the pipe's last writer: `forward` reads to its end
    thread.join(timeout=10)  # longer only where a child process kept the pipe


class _QuietTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Imports TensorFlow (on first use of tf.data) without its C++ start-up INFO lines."""

  def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
    if name != 'tensorflow':
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is not None:
      self._loader, spec.loader = spec.loader, self
    return spec

  def create_module(self, spec: Any) -> Any:
    return self._loader.create_module(spec)

  def exec_module(self, module: Any) -> None:
    sys.meta_path.remove(self)  # imported once; nothing more to find
    module.__spec__.loader = module.__loader__ = self._loader
    with _native_info_dropped():
      self._loader.exec_module(module)


def show_log(verbose: bool) -> None:
  """Sets what a command's absl log shows (call it in the `main` that `app.run` runs).

  Args:
    verbose: every library's lines, DEBUG included (`--verbosity=1`); otherwise
      lth_jax's own INFO lines and every warning and error, without the INFO chatter of
      the libraries (checkpointing, TensorFlow's Python and C++ sides, clu) or their
      echoes of a full disk (which the command reports itself).
  """
  logging.set_verbosity(logging.DEBUG if verbose else logging.INFO)
  if not verbose:
    logging.get_absl_handler().addFilter(_OwnLines())
    sys.unraisablehook = _without_closed_loops(sys.unraisablehook)
    if 'tensorflow' not in sys.modules:
      sys.meta_path.insert(0, _QuietTensorFlow())


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
