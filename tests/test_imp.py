"""IMP rounds: rewinding, pruning schedule, resume, baselines (fast: fine-tuning is faked)."""

from __future__ import annotations

import csv
import os
import threading
import time

import jax
import numpy as np
import pytest

from lth_jax import masks, pruning, training
from lth_jax.lottery import imp, results, transfer
from lth_jax.models import create_model, init_variables
from lth_jax.runtime import files
from lth_jax.runtime.scheduler import Scheduler


@pytest.fixture(scope='module')
def start() -> dict:
  model = create_model('resnet18', num_classes=10, stem='cifar', width_multiplier=0.125)
  return jax.device_get(init_variables(model, jax.random.key(0), 16))


class FakeFinetune:
  """Records each call; 'trains' by adding seeded noise to the unpruned weights."""

  def __init__(self, crash_on_call: int | None = None):
    self.calls = []
    self.crash_on_call = crash_on_call

  def __call__(self, variables, m, *, seed, checkpoint_dir, rewind_step=None):
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
                       'dir': checkpoint_dir, 'rewind_step': rewind_step, 'early': early})
    return training.FitResult(metric='accuracy', best_val=acc, best_epoch=1, test=acc, test_metrics={'accuracy': acc}, history=[],
                           variables={'params': trained,
                                      'batch_stats': variables['batch_stats']},
                           rewind_variables=early)


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
  assert _equal(imp.load_round_mask(str(tmp_path), 4), expected)
  assert {k for k in records[2] if k.startswith('sparsity_layer')} == {
      f'sparsity_layer{i}' for i in range(1, 5)}
  torch_file = np.load(tmp_path / 'round_02' / 'mask_torch.npz')
  assert len(torch_file.files) == 19 and all(f.endswith('.weight_mask') for f in torch_file.files)


def test_finished_rounds_are_never_recomputed_and_a_crash_resumes(tmp_path, start):
  spec = imp.ImpSpec(num_rounds=4, seeds=(0, 1))
  crashing = FakeFinetune(crash_on_call=5)  # round 2, seed 1
  with pytest.raises(KeyboardInterrupt):
    imp.run_imp(str(tmp_path), spec, start, crashing)
  resumed = FakeFinetune()
  records = imp.run_imp(str(tmp_path), spec, start, resumed)
  # Only the unfinished rounds ran again: round 2 (both seeds) and round 3.
  assert [c['dir'].split(os.sep)[-2:] for c in resumed.calls] == [
      ['round_02', 'seed_0'], ['round_02', 'seed_1'], ['round_03', 'seed_0'],
      ['round_03', 'seed_1']]
  assert _equal(resumed.calls[0]['masks'], crashing.calls[4]['masks'])
  uninterrupted = FakeFinetune()
  reference = imp.run_imp(str(tmp_path / 'ref'), spec, start, uninterrupted)
  assert [r['sparsity'] for r in records] == [r['sparsity'] for r in reference]
  for k in range(4):
    assert _equal(imp.load_round_mask(str(tmp_path), k),
                  imp.load_round_mask(str(tmp_path / 'ref'), k))
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
  with pytest.raises(ValueError, match="The 'dense' row is taken as the dense network, but "
                                       'its sparsity is 20.00%'):
    transfer.add_matching([pruned, ticket])
  with pytest.raises(ValueError, match='round 0 is taken as the dense network'):
    results.dense_runs(pruned, 'round 0')
  assert results.dense_runs(dense, 'round 0') == runs
  assert transfer.add_matching([dense, ticket]) == 0.2


class SlowFinetune:
  """Thread-safe: its result depends only on the run, and it notes which runs overlap."""

  def __init__(self):
    self.lock, self.in_flight, self.overlaps = threading.Lock(), set(), []

  def __call__(self, variables, m, *, seed, checkpoint_dir, rewind_step=None, mesh=None):
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
    assert _equal(imp.load_round_mask(str(tmp_path / 'par'), k),
                  imp.load_round_mask(str(tmp_path / 'seq'), k))
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
