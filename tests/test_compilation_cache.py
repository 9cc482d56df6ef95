"""The tests' shared compilation cache (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import conftest
import jax
import jax.numpy as jnp
import pytest


@pytest.mark.slow
def test_every_process_of_the_run_compiles_into_one_cache(tmp_path):
  folder = os.environ['JAX_COMPILATION_CACHE_DIR']
  if not folder:
    pytest.skip('the compilation cache is turned off (JAX_COMPILATION_CACHE_DIR=)')
  assert jax.config.jax_compilation_cache_dir == folder
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  # A program of its own (its constant is new), however quick to compile, is written.
  salt = uuid.uuid4().int % 1000
  before = set(os.listdir(folder)) if os.path.isdir(folder) else set()
  jax.jit(lambda x: x * 3 + salt)(jnp.arange(7.0)).block_until_ready()
  assert set(os.listdir(folder)) - before
  # A subprocess (xdist worker, command line, notebook kernel) reads the same settings.
  code = ('import jax; print(jax.config.jax_compilation_cache_dir, '
          'jax.config.jax_persistent_cache_min_compile_time_secs)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True, cwd=tmp_path).stdout.split()
  assert out == [folder, '0.0']


def test_trim_deletes_the_oldest_entries_down_to_half_the_limit(tmp_path):
  for age in range(10):  # entry 0 is the newest
    path = tmp_path / f'entry_{age}-cache'
    path.write_bytes(b'x' * 100)
    os.utime(path, (1e9 - age, 1e9 - age))
  conftest.trim_cache(tmp_path, limit=1000)  # at the limit: kept
  assert len(list(tmp_path.iterdir())) == 10
  conftest.trim_cache(tmp_path, limit=900)
  assert sorted(p.name for p in tmp_path.iterdir()) == [f'entry_{k}-cache' for k in range(4)]
  conftest.trim_cache(tmp_path / 'missing')  # no cache yet: nothing to do
