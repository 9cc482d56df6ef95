"""Test-wide settings: several CPU devices, fast compiles, a shared compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, hence here. The cache settings are
environment variables, read by jax when it is imported, so that every process of a run
inherits them: the xdist workers, the `python -m lth_jax.analyze` subprocesses and
notebook kernels (tests of `python -m lth_jax.main` pass the folder as
`--compilation_cache`). The tests compile the same tiny models over and over; each
program is compiled once, written to the cache and read back by every later process.

The cache is `~/.cache/lth_jax/tests_xla` and outlives the run, so a developer's next
run compiles only what changed (about a third faster); CI names a fresh folder per run.
`JAX_COMPILATION_CACHE_DIR=folder` uses another folder, `JAX_COMPILATION_CACHE_DIR=`
none. A cached program is the program XLA compiled: results are the same either way.
"""

import importlib.util
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

DEFAULT_CACHE = pathlib.Path('~', '.cache', 'lth_jax', 'tests_xla').expanduser()
# Trimmed to half this size, oldest entries first, when a run leaves it larger (a run of
# the whole suite writes about 30 MB; programs of code since changed are never read).
CACHE_LIMIT_BYTES = 2 << 30

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(DEFAULT_CACHE))
# Every program, however quick to compile (jax's default keeps only those over a second).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

import jax  # noqa: E402
import pytest  # noqa: E402

# Tests use tiny models; skipping optimisation passes makes compiles much faster.
jax.config.update('jax_disable_most_optimizations', True)

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_script(path: str) -> Any:
  """A script of the repository that is not a package module (`benchmarks/x.py`,
  `scripts/x.py`), imported by its path relative to the repository's root, with its folder
  on sys.path while it imports, as `python benchmarks/x.py` has it: the scripts beside it
  that it imports (benchmarks/pretraining_gap.py, config_overrides.py) are found."""
  file = REPO / path
  spec = importlib.util.spec_from_file_location(file.stem, file)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(file.parent))
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(file.parent))
  return module


def trim_cache(folder: pathlib.Path, limit: int = CACHE_LIMIT_BYTES) -> None:
  """Deletes the oldest files of `folder` down to half of `limit` once it holds more.

  Args:
    folder: a compilation cache folder (missing: nothing to do).
    limit: its size in bytes above which it is trimmed.
  """
  entries = []
  for path in folder.glob('*'):
    try:
      stat = path.stat()
    except OSError:  # removed meanwhile by another run's trim
      continue
    entries.append((stat.st_mtime, stat.st_size, path))
  total = sum(size for _, size, _ in entries)
  if total <= limit:
    return
  for _, size, path in sorted(entries):
    if total <= limit // 2:
      break
    path.unlink(missing_ok=True)
    total -= size


def pytest_sessionfinish(session) -> None:
  # Once per run: in pytest itself, or xdist's controller (not in each worker).
  if not hasattr(session.config, 'workerinput') and (
      os.environ['JAX_COMPILATION_CACHE_DIR'] == str(DEFAULT_CACHE)):
    trim_cache(DEFAULT_CACHE)


class FakeFinetunes:
  """Stands in for `wiring.make_finetune`: fine-tunes that train nothing, for tests of what
  an experiment runs and writes rather than of training (which tests of `fit` and one real
  run per mode check).

  A fine-tune returns its start variables, and as its headline metric `value(seed,
  sparsity)`, by default 0.5 + 0.01 * seed - 0.1 * the mask's sparsity (seeds differ,
  pruning costs); `extra(value)` adds the task's other test metrics. Every call is
  recorded: its dataset, checkpoint folder, seed, epochs and batch size.
  """

  def __init__(self):
    self.calls: list[dict[str, Any]] = []
    self.value: Callable[[int, float], float] = lambda seed, sparsity: (
        0.5 + 0.01 * seed - 0.1 * sparsity)
    self.extra: Callable[[float], dict[str, float]] = lambda value: {}

  def __call__(self, experiment, model, task, dataset, mesh, *, metric: str | None = None,
               **kwargs):
    from lth_jax import masks as masks_lib, training

    del model, mesh, kwargs
    key = metric or task.headline(dataset).key

    def finetune(variables, masks, *, seed, checkpoint_dir, rewind_step=None,
                 continue_from=None, mesh=None):
      del continue_from, mesh
      self.calls.append({'dataset': dataset.name, 'dir': checkpoint_dir, 'seed': seed,
                         'num_epochs': experiment.recipe.num_epochs,
                         'batch_size': experiment.data.batch_size})
      sparsity = 0.0 if masks is None else masks_lib.sparsity(masks)  # None: pre-training
      value = self.value(seed, sparsity)
      variables = jax.device_get(dict(variables))
      return training.FitResult(
          metric=key, best_val=value, best_epoch=1, test=value,
          test_metrics={key: value, **self.extra(value)}, history=[], variables=variables,
          rewind_variables=variables if rewind_step is not None else None)
    return finetune


@pytest.fixture
def gap_benchmark() -> Any:
  """benchmarks/pretraining_gap.py; the datasets (`variant`) and the 'scratch' source
  (`scratch_source`) it registers during the test are unregistered after it."""
  from lth_jax.data import registry as data_registry
  from lth_jax.experiments import sources

  registries = (data_registry.DATASETS, sources.SOURCES)
  before = [set(registry) for registry in registries]
  yield load_script('benchmarks/pretraining_gap.py')
  for registry, names in zip(registries, before):
    for name in set(registry) - names:
      registry.unregister(name)


@pytest.fixture
def fake_finetunes(monkeypatch) -> FakeFinetunes:
  """`FakeFinetunes` in place of `wiring.make_finetune` for the test."""
  from lth_jax.experiments import wiring

  fake = FakeFinetunes()
  monkeypatch.setattr(wiring, 'make_finetune', fake)
  return fake
