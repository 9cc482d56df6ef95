"""Independent runs side by side, each on its own group of devices.

Only IMP's rounds are sequential; the seeds of a round and the transfer runs of the
tickets are independent. With 8 chips, 8 runs on one chip each keep every chip busy
with a full batch and need no all-reduce, where one run over 8 chips gives each a
sixteenth of the batch and waits on an all-reduce every step. A `Scheduler` splits the
devices into groups of `devices_per_run` and runs the jobs it is given in threads, one
job per group at a time; each job's result is that of running it alone on a group of
that size (the same programs on the same kind of device), so the results do not
depend on how many run at once.

    scheduler = Scheduler(jax.devices(), devices_per_run=1)
    fits = scheduler.map(lambda seed, mesh: finetune(..., seed=seed, mesh=mesh), seeds,
                         names=[f'seed {s}' for s in seeds])
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
from jax.sharding import Mesh

from lth_jax.runtime import console, sharding

T = TypeVar('T')
R = TypeVar('R')

# Per thread: whether the run that `Scheduler` is timing there resumed part-way.
_current = threading.local()


def resumed_part_way() -> None:
  """Says that the job going on in this thread resumed a run from checkpoints on disk.

  The job's time is then no measure of a whole run: it counts as done, but not in the
  ETA's time per run (a run killed at 93% and resumed takes seconds). Outside a
  `Scheduler` job it does nothing.
  """
  _current.resumed = True


def _duration(seconds: float) -> str:
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


class Scheduler:
  """Runs independent jobs concurrently, one per group of devices."""

  def __init__(self, devices: Sequence[jax.Device] | None,
               devices_per_run: int | None = None, total_runs: int | None = None,
               finished_runs: int | None = None):
    """Splits `devices` into groups.

    Args:
      devices: the experiment's devices; None: one group, whose jobs run one after
        another on the caller's own mesh (`map` gives them the mesh None).
      devices_per_run: devices of each run (None or 0: all of them, one run at a time).
      total_runs: the experiment's number of runs, for the experiment-level ETA (None:
        the ETA covers the jobs of the current `map`).
      finished_runs: how many of them finished before this process started, counted up
        front by the experiment; then `count_finished` adds nothing (None: the engines
        count them with `count_finished` as they reach them).

    Raises:
      ValueError: `devices_per_run` does not divide the devices, or several processes
        would need to split their devices (each run spans every process).
    """
    own_mesh = devices is None
    devices = [] if own_mesh else list(devices)
    per_run = devices_per_run or len(devices)
    if not own_mesh and (per_run < 1 or len(devices) % per_run):
      raise ValueError(f'devices_per_run={devices_per_run} must divide the {len(devices)} '
                       'devices of the experiment.')
    if per_run < len(devices) and jax.process_count() > 1:
      raise ValueError('devices_per_run below the device count needs a single process: on '
                       'several hosts every run spans all of them; leave it at 0.')
    self.meshes: list[Mesh | None] = [None] if own_mesh else [
        sharding.make_mesh(devices[i:i + per_run]) for i in range(0, len(devices), per_run)]
    self.total_runs = total_runs
    self._lock = threading.Lock()
    self._done = finished_runs or 0  # runs of the experiment done, earlier ones included
    self._counted_up_front = finished_runs is not None
    self._runs_timed = 0    # runs this scheduler timed
    self._busy_seconds = 0.0
    self._in_flight: dict[str, str] = {}

  @property
  def concurrent(self) -> int:
    """How many runs go at once."""
    return len(self.meshes)

  def count_finished(self, runs: int) -> None:
    """Counts runs that finished before this process started (a resumed experiment).

    They count as done in the progress, but not in the ETA's time per run; where the
    experiment counted them up front (`finished_runs`), they are in the count already.

    Args:
      runs: how many of the experiment's runs are already done.
    """
    if self._counted_up_front:
      return
    with self._lock:
      self._done += runs

  def map(self, job: Callable[[T, Mesh], R], items: Sequence[T],
          names: Sequence[str] | None = None) -> list[R]:
    """Runs `job(item, mesh)` for every item, each on a free device group.

    Args:
      job: runs one item on the mesh it is given.
      items: the independent items.
      names: what to call each item in the progress lines (default `str(item)`).

    Returns:
      The results, in the order of `items`.

    Raises:
      The first failed item's exception (in `items` order), after every started job
      has finished and no further job has started.
    """
    names = list(names or [str(i) for i in items])
    if self.concurrent == 1 or len(items) <= 1:
      return [self._timed(job, item, name, self.meshes[0]) for item, name in zip(items, names)]
    free: queue.Queue[Mesh] = queue.Queue()
    for mesh in self.meshes:
      free.put(mesh)
    failed = threading.Event()

    def run(item, name):
      mesh = free.get()
      try:
        if failed.is_set():
          raise concurrent.futures.CancelledError(name)
        return self._timed(job, item, name, mesh)
      except BaseException:
        failed.set()
        raise
      finally:
        free.put(mesh)

    with concurrent.futures.ThreadPoolExecutor(self.concurrent) as pool:
      futures = [pool.submit(run, item, name) for item, name in zip(items, names)]
      concurrent.futures.wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    first = next((e for e in errors if not isinstance(e, concurrent.futures.CancelledError)),
                 None)
    if first is not None:
      raise first
    return [f.result() for f in futures]

  def _timed(self, job: Callable[[T, Mesh], R], item: T, name: str, mesh: Mesh) -> R:
    where = 'own mesh' if mesh is None else ','.join(str(d.id) for d in mesh.devices.flat)
    with self._lock:
      self._in_flight[name] = where
      if self.concurrent > 1:
        console.say(f'  start {name} on device(s) {where}; in flight: '
                    f'{", ".join(self._in_flight)}')
    tic = time.time()
    _current.resumed = False
    try:
      result = job(item, mesh)
    finally:
      with self._lock:
        del self._in_flight[name]
    # A run that failed or was interrupted is not done: it neither counts nor times.
    seconds = time.time() - tic
    with self._lock:
      self._done += 1
      if not _current.resumed:
        self._runs_timed += 1
        self._busy_seconds += seconds
      if self.concurrent > 1 or self.total_runs:
        resumed = ' (resumed)' if _current.resumed else ''
        console.say(f'  done {name} in {_duration(seconds)}{resumed}{self._eta()}')
    return result

  def _eta(self) -> str:
    if not self.total_runs:
      return ''
    if self._done >= self.total_runs:
      return f'; {self._done}/{self.total_runs} runs done'
    progress = f'; {self._done}/{self.total_runs} runs done, experiment ETA'
    if not self._runs_timed:
      return f'{progress} after the first whole run'
    left = self.total_runs - self._done
    eta = self._busy_seconds / self._runs_timed * left / self.concurrent
    return f'{progress} {_duration(eta)}'
