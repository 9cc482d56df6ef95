"""IMP rounds: rewinding, pruning schedule, resume, baselines (fast: fine-tuning is faked)."""

from __future__ import annotations

import csv
import dataclasses
import gc
import json
import os
import threading
import time
import weakref

import jax
import numpy as np
import pytest

from lth_jax import masks, pruning, training
from lth_jax.lottery import iterative_pruning as imp, plan, results, rounds
from lth_jax.lottery import ticket_transfer as transfer
from lth_jax.models import create_model, init_variables
from lth_jax.runtime import files
from lth_jax.runtime.scheduler import Scheduler


@pytest.fixture(scope='module')
def start() -> dict:
  model = create_model('resnet18', num_classes=10, stem='cifar', width_multiplier=0.125)
  return jax.device_get(init_variables(model, jax.random.key(0), 16))


class FakeFinetune:
  """Records each call; 'trains' by adding seeded noise to the unpruned weights."""

  def __init__(self, crash_on_call: int | None = None, seconds: float | None = None):
    self.calls = []
    self.crash_on_call = crash_on_call
    self.seconds = seconds  # what each run says it took (None: it does not time itself)

  def __call__(self, variables, m, *, seed, checkpoint_dir, rewind_step=None,
               continue_from=None):
    if len(self.calls) == self.crash_on_call:
      raise KeyboardInterrupt('simulated crash')
    leaves, treedef = jax.tree.flatten(variables['params'])
    rng = np.random.default_rng([seed, int(abs(np.asarray(leaves[0])).sum() * 1e6) % 2**31])
    trained = masks.apply(jax.tree.unflatten(treedef, [
        np.asarray(x) + 0.1 * rng.standard_normal(np.shape(x)).astype(np.float32)
        for x in leaves]), m)
    trained = jax.device_get(trained)
    acc = 0.9 - 0.01 * len(self.calls) + 0.001 * seed
    early = None
    if rewind_step is not None:
      early = {'params': jax.tree.map(lambda x: np.asarray(x) + 1.0, variables['params']),
               'batch_stats': variables['batch_stats']}
    self.calls.append({'variables': variables, 'masks': m, 'seed': seed, 'trained': trained,
                       'dir': checkpoint_dir, 'rewind_step': rewind_step, 'early': early,
                       'continue_from': continue_from})
    return training.FitResult(metric='accuracy', best_val=acc, best_epoch=1, test=acc, test_metrics={'accuracy': acc}, history=[],
                           variables={'params': trained,
                                      'batch_stats': variables['batch_stats']},
                           rewind_variables=early, seconds=self.seconds)


def _kept(m) -> int:
  return sum(int(np.count_nonzero(np.asarray(x))) for x in masks.prunable_leaves(m).values())


def _equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


def test_rounds_rewind_to_start_and_prune_trained_weights(tmp_path, start):
  fake = FakeFinetune()
  records = imp.run_imp(str(tmp_path), imp.ImpSpec(num_rounds=4), start, fake)
  total = sum(x.size for x in masks.prunable_leaves(start['params']).values())
  kept, expected = total, masks.init(start['params'])
  for k, (rec, call) in enumerate(zip(records, fake.calls)):
    assert rec['round'] == k and call['seed'] == 0
    assert _kept(call['masks']) == kept
    # The mask of round k is global magnitude pruning of round k-1's trained weights.
    assert _equal(call['masks'], expected)
    assert rec['sparsity'] == pytest.approx(1 - kept / total)
    # Rewinding: round k starts from the start weights under its mask.
    assert _equal(call['variables']['params'], masks.apply(start['params'], call['masks']))
    assert _equal(call['variables']['batch_stats'], start['batch_stats'])
    assert os.path.exists(tmp_path / f'round_{k:02d}' / 'mask_torch.npz')
    expected = pruning.global_magnitude(call['trained'], call['masks'], 0.2)
    kept -= round(0.2 * kept)
  assert [round(r['sparsity'], 4) for r in records] == [0.0, 0.2, 0.36, 0.488]
  # The next round's mask is written already, so a finished run can be extended.
  assert _equal(rounds.load_round_mask(str(tmp_path), 4), expected)
  assert {k for k in records[2] if k.startswith('sparsity_layer')} == {
      f'sparsity_layer{i}' for i in range(1, 5)}
  torch_file = np.load(tmp_path / 'round_02' / 'mask_torch.npz')
  assert len(torch_file.files) == 19 and all(f.endswith('.weight_mask') for f in torch_file.files)


def test_finished_rounds_are_never_recomputed_and_a_crash_resumes(tmp_path, start):
  spec = imp.ImpSpec(num_rounds=4, seeds=(0, 1))
  crashing = FakeFinetune(crash_on_call=5)  # round 2, seed 1
  with pytest.raises(KeyboardInterrupt):
    imp.run_imp(str(tmp_path), spec, start, crashing)
  resumed = FakeFinetune(seconds=2.5)
  records = imp.run_imp(str(tmp_path), spec, start, resumed)
  # A round's time is its runs' own, which holds a resumed run's time before the kill.
  assert [r['seconds'] for r in records[2:]] == [5.0, 5.0]
  # Only the unfinished rounds ran again: round 2 (both seeds) and round 3.
  assert [c['dir'].split(os.sep)[-2:] for c in resumed.calls] == [
      ['round_02', 'seed_0'], ['round_02', 'seed_1'], ['round_03', 'seed_0'],
      ['round_03', 'seed_1']]
  assert _equal(resumed.calls[0]['masks'], crashing.calls[4]['masks'])
  uninterrupted = FakeFinetune()
  reference = imp.run_imp(str(tmp_path / 'ref'), spec, start, uninterrupted)
  assert [r['sparsity'] for r in records] == [r['sparsity'] for r in reference]
  for k in range(4):
    assert _equal(rounds.load_round_mask(str(tmp_path), k),
                  rounds.load_round_mask(str(tmp_path / 'ref'), k))
  # Two seeds per round: mean and sample std.
  assert records[0]['test_accuracy_std'] == pytest.approx(np.std([0.9, 0.891], ddof=1))
  # Extending a finished run trains only the new round.
  more = FakeFinetune()
  imp.run_imp(str(tmp_path), imp.ImpSpec(num_rounds=5, seeds=(0, 1)), start, more)
  assert len(more.calls) == 2


def test_late_rewinding_uses_the_dense_runs_early_weights(tmp_path, start):
  fake = FakeFinetune()
  spec = imp.ImpSpec(num_rounds=3, rewind='step', rewind_step=7)
  imp.run_imp(str(tmp_path), spec, start, fake)
  assert fake.calls[0]['rewind_step'] == 7 and fake.calls[1]['rewind_step'] is None
  early = fake.calls[0]['early']
  for call in fake.calls[1:]:
    assert _equal(call['variables']['params'], masks.apply(early['params'], call['masks']))
  # The rewind point is saved: a resumed run finds it without redoing round 0.
  resumed = FakeFinetune()
  imp.run_imp(str(tmp_path), imp.ImpSpec(num_rounds=4, rewind='step', rewind_step=7), start,
              resumed)
  assert len(resumed.calls) == 1
  assert _equal(resumed.calls[0]['variables']['params'],
                masks.apply(early['params'], resumed.calls[0]['masks']))


def test_prune_first_and_random_baseline(tmp_path, start):
  fake = FakeFinetune()
  imp.run_imp(str(tmp_path / 'pf'), imp.ImpSpec(num_rounds=2, prune_first=True), start, fake)
  # The first trained mask is one-shot magnitude pruning of the start weights.
  assert _equal(fake.calls[0]['masks'],
                pruning.global_magnitude(start['params'], masks.init(start['params']), 0.2))
  rand = FakeFinetune()
  records = imp.run_imp(str(tmp_path / 'rand'),
                        imp.ImpSpec(num_rounds=3, pruning='random', include_dense=False),
                        start, rand)
  assert [r['round'] for r in records] == [1, 2]
  assert [round(r['sparsity'], 4) for r in records] == [0.2, 0.36]
  magnitude = pruning.global_magnitude(start['params'], masks.init(start['params']), 0.2)
  assert masks.overlap(rand.calls[0]['masks'], magnitude)['total']['iou'] < 0.9


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_rounds=0), 'num_rounds'),
    (dict(num_rounds=2, fraction=1.0), 'fraction'),
    (dict(num_rounds=2, pruning='grasp'), 'Unknown pruning criterion .grasp.'),
    (dict(num_rounds=2, rewind='step'), 'rewind_step'),
    (dict(num_rounds=2, rewind='step', rewind_step=3, prune_first=True), 'prune_first'),
])
def test_spec_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    imp.ImpSpec(**kwargs)


def test_dense_round_takes_the_dense_seeds(tmp_path, start):
  fake = FakeFinetune()
  records = imp.run_imp(str(tmp_path), imp.ImpSpec(num_rounds=2, dense_seeds=(0, 1, 2)), start,
                        fake)
  assert [c['seed'] for c in fake.calls] == [0, 1, 2, 0]
  assert [r['num_seeds'] for r in records] == [3, 1]
  with pytest.raises(ValueError, match='dense_seeds must start'):
    imp.ImpSpec(num_rounds=2, dense_seeds=(1, 2))
  # prune_first leaves no dense round to give the dense seeds to: refused, not ignored.
  with pytest.raises(ValueError, match='no round is dense'):
    imp.ImpSpec(num_rounds=2, dense_seeds=(0, 1), prune_first=True)


def test_prunable_rewind_scope_continues_the_rest_from_the_previous_round(tmp_path, start):
  """The reference's detection IMP: only the prunable weights go back to θ_p."""
  fake = FakeFinetune()
  spec = imp.ImpSpec(num_rounds=3, seeds=(0, 1), rewind_scope='prunable')
  imp.run_imp(str(tmp_path), spec, start, fake)
  by_round = [fake.calls[i:i + 2] for i in range(0, 6, 2)]
  prunable = set(masks.prunable_leaves(start['params']))
  for k in (1, 2):
    for call, before in zip(by_round[k], by_round[k - 1]):
      assert call['seed'] == before['seed']
      got = masks.prunable_leaves(call['variables']['params'])
      rewound = masks.prunable_leaves(masks.apply(start['params'], call['masks']))
      assert all(np.array_equal(got[n], rewound[n]) for n in prunable)
      # Everything else (stem conv, BatchNorm scales, the fc head) is the same seed's
      # trained value from the round before, not the start's.
      flat = masks.prunable_leaves(call['variables']['params'], policy=lambda n: True)
      trained = masks.prunable_leaves(before['trained'], policy=lambda n: True)
      others = [n for n in flat if n not in prunable]
      assert others and all(np.array_equal(flat[n], trained[n]) for n in others)
  # A resumed run reads the saved final variables: round 2 redone gives the same start.
  redo = FakeFinetune()
  (tmp_path / 'round_02' / 'round.json').unlink()
  imp.run_imp(str(tmp_path), spec, start, redo)
  assert _equal(redo.calls[0]['variables'], by_round[2][0]['variables'])
  with pytest.raises(ValueError, match='rewind_scope'):
    imp.ImpSpec(num_rounds=2, rewind_scope='head')


def test_a_sparse_record_is_never_taken_as_the_dense_band():
  runs = [{'seed': s, 'test_accuracy': 0.9 + 0.01 * s} for s in (0, 1)]
  dense = {'ticket': transfer.DENSE, 'sparsity': 0.0, 'runs': runs, 'test_accuracy': 0.905}
  ticket = {'ticket': 'round_01', 'sparsity': 0.2, 'runs': runs, 'test_accuracy': 0.9}
  pruned = {**dense, 'sparsity': 0.2}
  with pytest.raises(ValueError, match='round 0 is taken as the dense network, but its '
                                       'sparsity is 20.00%'):
    results.dense_runs(pruned, 'round 0')
  assert results.dense_runs(dense, 'round 0') == runs
  band = [r['test_accuracy'] for r in results.dense_runs(dense, 'round 0')]
  assert results.mark_matching([dense, ticket], band, 'test_accuracy') == 0.2


def test_given_dense_runs_must_cover_the_dense_seeds(tmp_path):
  runs = [{'seed': s, 'test_accuracy': 0.9} for s in (0, 1, 2)]
  with pytest.raises(ValueError, match=r'dense_runs has seeds \[0, 1, 2\], not all of '
                                       r'\[0, 1, 2, 3\]'):
    transfer.run_transfer(str(tmp_path), {}, None, None, (0, 1), metric='accuracy',
                          dense_runs=runs, dense_seeds=(0, 1, 2, 3))
  assert not os.listdir(tmp_path)  # refused before anything


class SlowFinetune:
  """Thread-safe: its result depends only on the run, and it notes which runs overlap."""

  def __init__(self):
    self.lock, self.in_flight, self.overlaps = threading.Lock(), set(), []

  def __call__(self, variables, m, *, seed, checkpoint_dir, rewind_step=None,
               continue_from=None, mesh=None):
    run = tuple(checkpoint_dir.split(os.sep)[-2:])
    with self.lock:
      self.in_flight.add(run)
      self.overlaps.append(set(self.in_flight))
    time.sleep(0.05)
    with self.lock:
      self.in_flight.discard(run)
    kept = _kept(m)
    leaves, treedef = jax.tree.flatten(variables['params'])
    rng = np.random.default_rng([seed, kept])
    trained = jax.device_get(masks.apply(jax.tree.unflatten(treedef, [
        np.asarray(x) + 0.1 * rng.standard_normal(np.shape(x)).astype(np.float32)
        for x in leaves]), m))
    acc = 0.5 + kept / 1e6 + 0.001 * seed
    return training.FitResult(metric='accuracy', best_val=acc, best_epoch=1, test=acc,
                              test_metrics={'accuracy': acc}, history=[],
                              variables={'params': trained,
                                         'batch_stats': variables['batch_stats']},
                              rewind_variables=None)


@pytest.mark.parametrize('criterion', ['random', 'snip'])
def test_rounds_known_in_advance_train_side_by_side_with_the_sequential_results(
    tmp_path, start, criterion):
  gradient = (lambda params: jax.tree.map(lambda w: np.ones_like(w) + np.abs(w), params)
              if criterion == 'snip' else None)
  spec = imp.ImpSpec(num_rounds=4, pruning=criterion, seeds=(0, 1),
                     include_dense=criterion != 'random')
  assert imp.masks_known_in_advance(spec)
  sequential, side_by_side = SlowFinetune(), SlowFinetune()
  reference = imp.run_imp(str(tmp_path / 'seq'), spec, start, sequential, gradient=gradient)
  finished = []
  records = imp.run_imp(str(tmp_path / 'par'), spec, start, side_by_side, gradient=gradient,
                        scheduler=Scheduler(jax.devices()[:4], devices_per_run=1),
                        on_round=lambda r: finished.append(r['round']))
  strip = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs]  # noqa: E731
  assert strip(records) == strip(reference)
  assert sorted(finished) == [r['round'] for r in records]
  for k in range(spec.first_round, 5):
    assert _equal(rounds.load_round_mask(str(tmp_path / 'par'), k),
                  rounds.load_round_mask(str(tmp_path / 'seq'), k))
  # Runs of different rounds were in flight at once; sequentially never.
  assert max(len({r for r, _ in runs}) for runs in side_by_side.overlaps) > 1
  assert max(len(runs) for runs in sequential.overlaps) == 1


def test_rounds_that_prune_trained_weights_wait_for_the_round_before(tmp_path, start):
  fake = SlowFinetune()
  spec = imp.ImpSpec(num_rounds=3, seeds=(0, 1, 2))
  assert not imp.masks_known_in_advance(spec)
  assert not imp.masks_known_in_advance(imp.ImpSpec(num_rounds=3, pruning='random',
                                                    rewind_scope='prunable'))
  imp.run_imp(str(tmp_path), spec, start, fake,
              scheduler=Scheduler(jax.devices()[:4], devices_per_run=1))
  # The seeds of a round overlap; two rounds never do.
  assert max(len(runs) for runs in fake.overlaps) > 1
  assert all(len({r for r, _ in runs}) == 1 for runs in fake.overlaps)


def test_a_single_run_has_no_std_only_repeated_runs_do(tmp_path, start):
  records = imp.run_imp(str(tmp_path), imp.ImpSpec(num_rounds=2, dense_seeds=(0, 1)), start,
                        FakeFinetune())
  dense, ticket = records
  assert dense['test_accuracy_std'] > 0 and dense['test_accuracy_std'] == pytest.approx(
      np.std([r['test_accuracy'] for r in dense['runs']], ddof=1))
  assert ticket['num_seeds'] == 1 and ticket['test_accuracy_std'] is None
  assert ticket['val_accuracy_std'] is None
  assert results.shown(ticket, 'test_accuracy') == f'{100 * ticket["test_accuracy"]:.2f}% (one run)'
  assert results.shown(dense, 'test_accuracy').endswith(
      f'± {100 * dense["test_accuracy_std"]:.2f}')
  # The CSV leaves the cell empty rather than writing a std of 0.
  files.write_table(str(tmp_path / 'rows'), records)
  with open(tmp_path / 'rows.csv') as f:
    rows = list(csv.DictReader(f))
  assert rows[1]['test_accuracy_std'] == '' and float(rows[0]['test_accuracy_std']) > 0


def _runs(calls, root) -> list[tuple[str, str | None]]:
  """Each call's run and the run it was handed to continue, relative to `root`."""
  rel = lambda d: d and os.path.relpath(d, root)  # noqa: E731
  return [(rel(c['dir']), rel(c['continue_from'])) for c in calls]


def test_a_rerun_executes_only_the_steps_whose_outputs_are_missing(tmp_path, start):
  spec = imp.ImpSpec(num_rounds=3, seeds=(0, 1))
  first = FakeFinetune()
  records = imp.run_imp(str(tmp_path), spec, start, first)
  assert len(first.calls) == 6
  # A finished run's plan holds no step: every mask is on disk, every run recorded.
  steps = plan.build(str(tmp_path), spec, in_advance=False, together=False)
  assert steps.masks == () and [r.index for r in steps.rounds] == [0, 1, 2]
  assert all(r.train == () and r.next_mask is None for r in steps.rounds)
  again = FakeFinetune()
  assert imp.run_imp(str(tmp_path), spec, start, again) == records and again.calls == []
  # One seed's entry gone from round 1's record: that run alone trains, from the same
  # rewound ticket; the round is recorded again with both seeds, and no mask changes.
  path = tmp_path / 'round_01' / 'round.json'
  record = json.loads(path.read_text())
  record['runs'] = [r for r in record['runs'] if r['seed'] != 1]
  path.write_text(json.dumps(record))
  steps = plan.build(str(tmp_path), spec, in_advance=False, together=False)
  assert [(t.round, t.seed) for r in steps.rounds for t in r.train] == [(1, 1)]
  assert steps.masks == () and all(r.next_mask is None for r in steps.rounds)
  before = [rounds.load_round_mask(str(tmp_path), k) for k in range(4)]
  redo = FakeFinetune()
  redone = imp.run_imp(str(tmp_path), spec, start, redo)
  assert _runs(redo.calls, tmp_path) == [(os.path.join('round_01', 'seed_1'),
                                          os.path.join('round_00', 'seed_1'))]
  assert _equal(redo.calls[0]['variables'], first.calls[3]['variables'])
  assert [r['seed'] for r in redone[1]['runs']] == [0, 1]
  assert redone[1]['runs'][0] == records[1]['runs'][0]
  assert redone[0] == records[0] and redone[2] == records[2]
  assert all(_equal(m, rounds.load_round_mask(str(tmp_path), k)) for k, m in enumerate(before))


def test_each_run_is_handed_the_previous_round_of_its_own_seed(tmp_path, start):
  fake = FakeFinetune()
  imp.run_imp(str(tmp_path), imp.ImpSpec(num_rounds=3, seeds=(0, 1), dense_seeds=(0, 2)),
              start, fake)
  j = os.path.join
  assert _runs(fake.calls, tmp_path) == [
      (j('round_00', 'seed_0'), None), (j('round_00', 'seed_2'), None),
      # Seed 1 did not train in the dense round: it continues nothing.
      (j('round_01', 'seed_0'), j('round_00', 'seed_0')), (j('round_01', 'seed_1'), None),
      (j('round_02', 'seed_0'), j('round_01', 'seed_0')),
      (j('round_02', 'seed_1'), j('round_01', 'seed_1'))]
  # A branch without its own dense round starts at round 1, from nothing.
  branch = FakeFinetune()
  imp.run_imp(str(tmp_path / 'random'), imp.ImpSpec(num_rounds=3, pruning='random',
                                                    include_dense=False), start, branch)
  assert _runs(branch.calls, tmp_path / 'random') == [
      (j('round_01', 'seed_0'), None), (j('round_02', 'seed_0'), j('round_01', 'seed_0'))]
  # What a run continues is handed to it; nothing parses it back from a folder name.
  assert not hasattr(imp, 'previous_round_dir')


class _Held:
  """A FitResult's variables, which a weak reference can watch (dicts cannot be)."""

  def __init__(self, tree):
    self.tree = tree

  def __getitem__(self, key):
    return self.tree[key]


def test_a_recorded_rounds_runs_and_mask_are_released(tmp_path, start):
  fake, watched, alive = FakeFinetune(), {}, []

  def finetune(variables, m, **kwargs):
    fit = fake(variables, m, **kwargs)
    held = _Held(fit.variables)
    watched[(len(fake.calls), kwargs['seed'])] = weakref.ref(held)
    return dataclasses.replace(fit, variables=held)

  def on_round(record):
    gc.collect()
    # Only the runs of rounds not yet recorded may still be held.
    alive.append((record['round'], sorted(k for k, ref in watched.items() if ref())))

  imp.run_imp(str(tmp_path), imp.ImpSpec(num_rounds=3, seeds=(0, 1)), start, finetune,
              on_round=on_round)
  assert alive == [(0, []), (1, []), (2, [])]


def test_a_run_continues_no_run_of_its_own_wave(tmp_path, start):
  spec = imp.ImpSpec(num_rounds=3, pruning='random', seeds=(0, 1))
  steps = plan.build(str(tmp_path), spec, in_advance=True, together=True)
  assert len(steps.waves) == 1
  # Every round trains side by side: round k - 1 is still in progress.
  assert [t.continue_from for r in steps.rounds for t in r.train] == [None] * 6
  apart = plan.build(str(tmp_path), spec, in_advance=True, together=False)
  assert [t.continue_from is None for r in apart.rounds for t in r.train] == [
      True, True, False, False, False, False]
  # Once round 0 is recorded, the rounds trained side by side continue from it.
  imp.run_imp(str(tmp_path), imp.ImpSpec(num_rounds=1, pruning='random', seeds=(0, 1)),
              start, FakeFinetune())
  steps = plan.build(str(tmp_path), spec, in_advance=True, together=True)
  j = os.path.join
  assert [(t.round, t.continue_from and os.path.relpath(t.continue_from, tmp_path))
          for r in steps.rounds for t in r.train] == [
              (1, j('round_00', 'seed_0')), (1, j('round_00', 'seed_1')), (2, None), (2, None)]


def test_a_finetune_without_continue_from_still_runs(tmp_path, start):
  fake = FakeFinetune()

  def old_protocol(variables, m, *, seed, checkpoint_dir, rewind_step=None):
    return fake(variables, m, seed=seed, checkpoint_dir=checkpoint_dir,
                rewind_step=rewind_step)

  records = imp.run_imp(str(tmp_path), imp.ImpSpec(num_rounds=3), start, old_protocol)
  assert [r['round'] for r in records] == [0, 1, 2] and len(fake.calls) == 3
