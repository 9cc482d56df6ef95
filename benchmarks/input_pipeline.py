"""Images/s of training batches: the host tf.data pipeline against data on the devices.

    python benchmarks/input_pipeline.py [--dataset=mnist5k] [--batch_size=128] \
        [--cpu_devices=2] [--epochs=3]

Both deliver the same kind of batch (crop/flip augmented, normalised, sharded over the
mesh's 'data' axis, ready for the train step): the host pipeline reads, augments and
batches with tf.data and copies each batch to the devices (`lth_jax.data.train_batches`
+ `sharding.shard_batch`); the device pipeline keeps the uint8 train split on the
devices and makes each batch with one jit (`lth_jax.data.on_device`). Each epoch's
batches are waited for (`block_until_ready`); the first epoch, which compiles and fills
caches, is reported apart. On an accelerator the device pipeline's images/s is what the
train step can consume at most; on CPU both compete with nothing else here.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', default='mnist5k')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--cpu_devices', type=int, default=2,
                      help='simulated CPU devices when no accelerator is present')
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args()
  os.environ.setdefault('XLA_FLAGS',
                        f'--xla_force_host_platform_device_count={args.cpu_devices}')
  import jax

  from lth_jax import data
  from lth_jax.data import on_device
  from lth_jax.runtime import sharding

  mesh = sharding.make_mesh(jax.devices())
  info = data.get_info(args.dataset)
  steps = data.steps_per_epoch(info, args.batch_size)
  resident = on_device.DeviceData(info, mesh, batch_size=args.batch_size,
                                  data_dir=args.data_dir)

  def host(epoch):
    return (sharding.shard_batch(b, mesh) for b in data.train_batches(
        info, batch_size=args.batch_size, epoch=epoch, seed=0, data_dir=args.data_dir))

  def device(epoch):
    return resident.batches(epoch, seed=0)

  print(f'{info.name}: {steps} batches of {args.batch_size} per epoch on {mesh.size} '
        f'{jax.devices()[0].platform} device(s)')
  rates = {}
  for name, batches in (('host tf.data', host), ('on device', device)):
    times = []
    for epoch in range(args.epochs):
      tic = time.perf_counter()
      for batch in batches(epoch):
        pass
      jax.block_until_ready(batch)
      times.append(time.perf_counter() - tic)
    steady = times[1:] or times
    rates[name] = steps * args.batch_size / (sum(steady) / len(steady))
    print(f'  {name:>13}: first epoch {times[0]:.2f} s, then {rates[name]:,.0f} images/s '
          f'({rates[name] / mesh.size:,.0f} per device)')
  print(f'  on device / host: {rates["on device"] / rates["host tf.data"]:.1f}x')


if __name__ == '__main__':
  main()
