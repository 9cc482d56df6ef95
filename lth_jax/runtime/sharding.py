"""Device mesh, shardings and multi-host setup for data-parallel training.

One mesh axis, 'data', spans every device of every process. Train state and masks
are replicated on it; batches are split along their first dimension. Each process
feeds only its own slice of the global batch (`shard_batch`), and `jax.jit` over
these global arrays computes means (loss, BatchNorm statistics) over the global
batch, inserting the cross-device reductions itself.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

import jax
from absl import logging
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: Sequence[int] | None = None) -> None:
  """Joins this process to a multi-process JAX run (call before any JAX computation).

  Without arguments, JAX detects the cluster itself (Cloud TPU pods, SLURM, ...).
  On CPU the processes exchange data through gloo collectives, which must be
  selected before the CPU backend starts.

  Args:
    coordinator_address: 'host:port' of process 0, e.g. '127.0.0.1:12345'.
    num_processes: total number of processes.
    process_id: this process's index in [0, num_processes).
    local_device_ids: devices of this host that this process owns (GPU hosts
      running one process per device).
  """
  if jax.distributed.is_initialized():
    return
  # Newer JAX releases may drop the option once gloo is the only CPU choice.
  if hasattr(jax.config, 'jax_cpu_collectives_implementation'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, local_device_ids=local_device_ids)


def cluster_detected() -> bool:
  """Whether the environment describes a multi-process job that JAX can join by itself.

  SLURM with several tasks, Open MPI, a TPU slice that lists several workers
  (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES) or an explicit JAX_COORDINATOR_ADDRESS.

  Returns:
    True when `initialize_distributed()` without arguments should be called.
  """
  env = os.environ
  if 'JAX_COORDINATOR_ADDRESS' in env or 'OMPI_MCA_orte_hnp_uri' in env:
    return True
  if 'SLURM_JOB_ID' in env and int(env.get('SLURM_NTASKS', '1')) > 1:
    return True
  workers = env.get('TPU_PROCESS_ADDRESSES') or env.get('TPU_WORKER_HOSTNAMES') or ''
  return len([w for w in workers.split(',') if w.strip()]) > 1


def log_processes() -> None:
  """Logs this process's index, the process count and the devices (every process)."""
  logging.info('Process %d of %d on %s; %d local and %d global %s device(s): %s',
               jax.process_index(), jax.process_count(), socket.gethostname(),
               jax.local_device_count(), jax.device_count(), jax.default_backend(),
               ', '.join(str(d) for d in jax.local_devices()))


def is_chief() -> bool:
  """Whether this process writes the shared files of a run (process 0).

  Orbax checkpoints are the exception: every process takes part in saving them and
  orbax writes one copy.

  Returns:
    True on process 0.
  """
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches this point (no-op with one process).

  Placed after the chief writes a shared file that the others read next.

  Args:
    name: a label unique to this point of the program (it names the barrier).
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis ('data') mesh.

  Args:
    devices: the devices to span; all devices of all processes by default.

  Returns:
    The mesh.
  """
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (train state, masks, metrics)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The first dimension is split over the 'data' axis (batches)."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree, identical on every process, replicated on the mesh.

  Arrays that already have the replicated sharding are kept as they are (no copy).

  Args:
    tree: arrays (numpy or jax) with the same values on every process.
    mesh: the mesh.

  Returns:
    The tree of global, replicated jax arrays.
  """
  sharding = replicated_sharding(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
      return x
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  return jax.tree.map(put, tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Assembles the global batch from each process's local slice.

  Args:
    batch: this process's part of the batch, a pytree of numpy arrays with the
      local batch size as first dimension (e.g. {'image': NHWC, 'label': N}), or the
      global batch as jax arrays already sharded over 'data' (returned as they are).
    mesh: the mesh.

  Returns:
    The pytree of global jax arrays, split along the first dimension over 'data';
    their first dimension is the local batch size times the number of processes.

  Raises:
    ValueError: the local batch size does not divide over the local devices.
  """
  sharding = batch_sharding(mesh)
  local_devices = len(sharding.addressable_devices)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x  # already the global batch (e.g. made on the devices by data.on_device)
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % local_devices:
      raise ValueError(
          f'A batch array of shape {x.shape} cannot be split over the {local_devices} '
          f'devices of this process: use a per-process batch size that is a multiple of '
          f'{local_devices} (global batch size a multiple of {mesh.size}).')
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)
