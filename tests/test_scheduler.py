"""Independent runs side by side (lth_jax.runtime.scheduler) give the sequential results."""

from __future__ import annotations

import csv
import dataclasses
import re
import threading
import time

import jax
import numpy as np
import pytest

from lth_jax import errors, experiments, masks
from lth_jax.experiments import config as config_lib
from lth_jax.lottery import iterative_pruning as imp, rounds
from lth_jax.runtime import scheduler as scheduler_lib, sharding
from lth_jax.runtime.scheduler import Scheduler


def test_a_scheduler_of_one_group_runs_each_job_in_turn_on_the_callers_own_mesh():
  # What run_imp executes its plan with when it is given no scheduler.
  scheduler, seen = Scheduler(None), []
  assert scheduler.concurrent == 1
  assert scheduler.map(lambda item, mesh: seen.append((item, mesh)) or 2 * item,
                       [1, 2, 3]) == [2, 4, 6]
  assert seen == [(1, None), (2, None), (3, None)]
  with pytest.raises(ValueError, match='must divide the 0 devices'):
    Scheduler([])


def test_map_keeps_order_and_gives_each_run_its_own_devices():
  scheduler = Scheduler(jax.devices()[:8], devices_per_run=2)
  assert scheduler.concurrent == 4
  lock, held, most = threading.Lock(), set(), [0]

  def job(item, mesh):
    devices = {d.id for d in mesh.devices.flat}
    with lock:
      assert not devices & held, 'two runs on one device'
      held.update(devices)
      most[0] = max(most[0], len(held) // 2)
    time.sleep(0.05)
    with lock:
      held.difference_update(devices)
    return item * item, len(devices)

  out = scheduler.map(job, list(range(10)))
  assert out == [(i * i, 2) for i in range(10)]
  assert most[0] > 1  # several in flight at once


def test_a_failed_run_is_raised_after_the_others_and_stops_new_ones():
  scheduler = Scheduler(jax.devices()[:2], devices_per_run=1)
  started = []

  def job(item, mesh):
    started.append(item)
    if item == 1:
      raise errors.DivergenceError('run 1', epoch=1, step=3, learning_rate=0.1)
    time.sleep(0.1)
    return item

  with pytest.raises(errors.DivergenceError, match='run 1'):
    scheduler.map(job, list(range(8)))
  assert len(started) < 8


def test_devices_per_run_must_divide_the_devices():
  with pytest.raises(ValueError, match='must divide the 8 devices'):
    Scheduler(jax.devices()[:8], devices_per_run=3)
  assert Scheduler(jax.devices()[:8]).concurrent == 1


def _tiny(**overrides):
  c = config_lib.load_config('demo:tiny')
  # Half demo:tiny's width: a third of the compute, the same runs.
  c.update_from_flattened_dict({'imp.num_rounds': 2, 'dense_seeds': 2,
                                'model.width_multiplier': 0.0625,
                                'checkpoint_every_steps': 0, **overrides})
  return c


def _rows(workdir):
  with open(workdir / 'results.csv') as f:
    return [{k: v for k, v in row.items() if k != 'seconds'} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_scheduled_runs_equal_sequential_runs_on_as_many_devices(tmp_path):
  sequential, scheduled = tmp_path / 'sequential', tmp_path / 'scheduled'
  experiments.run(_tiny(num_devices=1), str(sequential))
  out = experiments.run(_tiny(num_devices=8, devices_per_run=1), str(scheduled))
  assert _rows(scheduled) == _rows(sequential)
  for method in ('magnitude', 'random'):
    for k in range(2 if method == 'magnitude' else 1, 3):
      a = rounds.load_round_mask(str(sequential / method), k)
      b = rounds.load_round_mask(str(scheduled / method), k)
      assert masks.sparsity(a) > 0 and jax.tree.all(jax.tree.map(np.array_equal, a, b))
  assert len(out['curves']['magnitude'][0]['runs']) == 2
  # The experiment ETA's count: every fine-tune, one folder each (dense 2 side by side,
  # then round 1 of the ticket search beside that of the random branch).
  trained = [p for p in scheduled.glob('*/round_*/seed_*') if p.name[5:].isdigit()]
  assert len(trained) == experiments.imp.num_runs(experiments.specs.build(_tiny())) == 2 + 1 + 1
  # devices_per_run changes no result where the device counts stay the same: a workdir
  # resumes under another value.
  experiments.run(_tiny(num_devices=1, devices_per_run=1), str(sequential))


def test_devices_per_run_that_does_not_divide_is_refused(tmp_path):
  with pytest.raises(errors.ConfigError, match='devices_per_run=3'):
    experiments.run(_tiny(num_devices=8, devices_per_run=3), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_progress_names_the_runs_in_flight_and_an_experiment_eta(monkeypatch):
  said = []
  monkeypatch.setattr('lth_jax.runtime.console.say', said.append)
  scheduler = Scheduler(jax.devices()[:2], devices_per_run=1, total_runs=6)
  scheduler.map(lambda item, mesh: time.sleep(0.05), ['a', 'b'],
                names=['round 0 seed 0', 'round 0 seed 1'])
  starts = [line for line in said if line.strip().startswith('start')]
  assert len(starts) == 2 and any('in flight: round 0 seed 0, round 0 seed 1' in line
                                  or 'in flight: round 0 seed 1, round 0 seed 0' in line
                                  for line in starts)
  assert any('2/6 runs done, experiment ETA 0m00s' in line for line in said)
  # A resumed experiment: runs finished earlier count as done, not in the time per run.
  resumed = Scheduler(jax.devices()[:2], devices_per_run=1, total_runs=10)
  resumed.count_finished(7)
  said.clear()
  resumed.map(lambda item, mesh: time.sleep(1.0), ['a', 'b'])
  # One run timed (1 s), 2 left on 2 device groups: about 1 s.
  assert any('8/10 runs done, experiment ETA 0m01s' in line for line in said), said
  # A run resumed part-way counts as done but not in the time per run: the ETA stays
  # that of the whole run (1 s a run, 1 left), not the mean with the resumed one's 0 s.
  def run(resumed, mesh):
    if resumed:
      scheduler_lib.resumed_part_way()
    else:
      time.sleep(1.0)
  killed = Scheduler(None, total_runs=4)
  said.clear()
  killed.map(run, [True, False, True])
  lines = [re.sub(r' in \d+m\d+s', '', line) for line in said]
  assert [re.sub(r'ETA 0m0\ds$', 'ETA T', line) for line in lines] == [
      '  done True (resumed); 1/4 runs done, experiment ETA after the first whole run',
      '  done False; 2/4 runs done, experiment ETA T',
      '  done True (resumed); 3/4 runs done, experiment ETA T']
  assert lines[1].endswith(('0m02s', '0m03s')) and lines[2].endswith(('0m01s', '0m02s'))
  # Side by side, each job's thread says only its own run resumed.
  said.clear()
  Scheduler(jax.devices()[:2], devices_per_run=1, total_runs=4).map(run, [True, False])
  done = sorted(line.split(' in ')[0] for line in said if line.startswith('  done'))
  assert done == ['  done False', '  done True'] and [
      line for line in said if '(resumed)' in line] == [
          line for line in said if line.startswith('  done True')]
  # The count an IMP run feeds it: a dense round of 3 seeds, then 1 seed a round.
  spec = imp.ImpSpec(num_rounds=3, seeds=(0,), dense_seeds=(0, 1, 2))
  assert spec.num_runs == 5
  assert dataclasses.replace(spec, include_dense=False).num_runs == 2


def test_runs_one_at_a_time_report_the_experiment_progress_too(monkeypatch):
  # Paper mode's :all_tasks runs 200-odd fine-tunes one after another for hours.
  said = []
  monkeypatch.setattr('lth_jax.runtime.console.say', said.append)
  experiment = experiments.specs.build(_tiny())
  scheduler = experiments.wiring.scheduler(experiment, sharding.make_mesh(jax.devices()[:1]),
                                           total_runs=4)
  assert scheduler.concurrent == 1 and scheduler.meshes == [None]  # the caller's own mesh
  scheduler.count_finished(1)
  scheduler.map(lambda item, mesh: time.sleep(0.2), ['a', 'b'],
                names=['dense seed 0', 'dense seed 1'])
  assert [re.sub(r'\d+m\d+s', 'T', line) for line in said] == [
      '  done dense seed 0 in T; 2/4 runs done, experiment ETA T',
      '  done dense seed 1 in T; 3/4 runs done, experiment ETA T']
  with pytest.raises(KeyboardInterrupt):  # stopped: neither done nor counted
    scheduler.map(lambda item, mesh: (_ for _ in ()).throw(KeyboardInterrupt), ['c'])
  assert len(said) == 2 and scheduler._in_flight == {}
  scheduler.map(lambda item, mesh: None, ['c'])
  assert said[-1] == '  done c in 0m00s; 4/4 runs done'
  said.clear()
  Scheduler(None).map(lambda item, mesh: None, ['a'])  # no count given: nothing to report
  assert said == []
  # Counted up front (paper mode), the finished runs are in the count from the first line:
  # the engines' counts as they reach them add nothing.
  counted = experiments.wiring.scheduler(experiment, sharding.make_mesh(jax.devices()[:1]),
                                         total_runs=10, finished_runs=7)
  counted.map(lambda item, mesh: None, ['a'])
  counted.count_finished(7)
  counted.map(lambda item, mesh: None, ['b'])
  assert [line.split('; ')[1] for line in said] == ['8/10 runs done, experiment ETA 0m00s',
                                                   '9/10 runs done, experiment ETA 0m00s']
