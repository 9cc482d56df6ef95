"""Iterative magnitude pruning (IMP) with rewinding, as resumable rounds.

A round k fine-tunes the rewound ticket `rewind_point ⊙ m_k` (for every seed), then
derives m_{k+1} from the trained weights of the first seed (prune `fraction` of the
survivors) and records its metrics. Each round lives in `run_dir/round_XX/`:

    mask/          m_k (orbax; `lth_jax.masks.load`)
    mask_torch.npz m_k in the reference's PyTorch format ('<name>.weight_mask', OIHW)
    mask_torch.pth the same, saved by torch.save (when torch is installed)
    seed_S/        the fine-tuning checkpoints of seed S (resumable mid-round)
    round.json     the round's metrics, written last: a round with it is never rerun

m_{k+1} is written into round k+1's folder before round.json of round k, so a crash
at any point resumes without redoing finished work, and a finished run can be
extended with more rounds. A round.json that a crash cut short counts as missing: the
round is recorded again from its runs' finished checkpoints, which train no further.
The optimizer state is fresh every round. A criterion that never reads the trained
weights (random pruning, SNIP) with rewinding to the start gives every mask in
advance: all of them are written first, and a `Scheduler` trains every round's runs
side by side.

IMP does not know about data, models or tasks: fine-tuning is a callable (see
`lth_jax.lottery.protocol.Finetune`), pruning a registered criterion (see
`lth_jax.pruning.criteria`), and records are named by the metric the fine-tuning
reports (`test_accuracy` for classification).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from absl import logging

from lth_jax import masks as masks_lib
from lth_jax import pruning
from lth_jax.errors import DivergenceError
from lth_jax.interop import mask_files
from lth_jax.lottery import results
from lth_jax.lottery.protocol import Finetune, StartVariables, on_mesh, per_seed
from lth_jax.runtime import files, sharding, tree_io
from lth_jax.runtime.scheduler import Scheduler

REWIND_POINTS = ('start', 'step')
# What a round rewinds: 'all' variables (the paper's protocol), or only the 'prunable'
# weights, the rest (stem, BatchNorm, a task's head) continuing from the round before
# (the reference's detection IMP).
REWIND_SCOPES = ('all', 'prunable')
# A round's final variables, kept when the next round continues from them.
FINAL_VARIABLES = 'final_variables'


@dataclasses.dataclass(frozen=True)
class ImpSpec:
  """What an IMP run does.

  Attributes:
    num_rounds: rounds to train, round 0 included (round k has sparsity 1 - 0.8^k
      with the default fraction, or 1 - 0.8^(k+1) with `prune_first`).
    fraction: share of the surviving prunable weights pruned after each round.
    pruning: a criterion of `lth_jax.pruning.CRITERIA`: 'magnitude' (global, the
      paper's), 'layerwise_magnitude', the random baselines 'random' (global count)
      and 'random_layerwise', 'snip' (needs `run_imp(gradient=...)`), ...
    rewind: 'start' rewinds to the variables round 0 started from (the pre-trained
      weights for the paper's tickets, a random init for classic LTH); 'step' to the
      weights of round 0 after `rewind_step` optimizer steps (late rewinding).
    rewind_step: optimizer steps of round 0 for rewind='step'.
    prune_first: prune the start variables by magnitude before any training (the
      reference's upstream scripts), so round 0 already trains a sparse network.
    include_dense: train round 0 when it is dense; a baseline that reuses another
      run's dense round sets False and starts at round 1.
    seeds: fine-tuning seeds of every round; the first one's weights are pruned.
    dense_seeds: seeds of the dense round 0 when they should differ from `seeds`
      (more dense runs give the matching band at little cost); None: `seeds`.
    policy: which leaves are prunable (None: every conv kernel but the stem).
    pruning_seed: seed of the random baselines' masks.
    rewind_scope: 'all' rewinds every variable to the rewind point; 'prunable' rewinds
      only the prunable weights, each seed's other variables (stem, BatchNorm, a task's
      head) continuing from its previous round's final ones.
  """
  num_rounds: int
  fraction: float = 0.2
  pruning: str = 'magnitude'
  rewind: str = 'start'
  rewind_step: int = 0
  prune_first: bool = False
  include_dense: bool = True
  seeds: tuple[int, ...] = (0,)
  dense_seeds: tuple[int, ...] | None = None
  policy: str | None = None
  pruning_seed: int = 0
  rewind_scope: str = 'all'

  def __post_init__(self):
    if self.num_rounds < 1:
      raise ValueError(f'num_rounds must be >= 1, got {self.num_rounds}.')
    if not 0.0 < self.fraction < 1.0:
      raise ValueError(f'fraction must be in (0, 1), got {self.fraction}: it is the share '
                       'of surviving weights pruned each round (the paper uses 0.2).')
    pruning.get(self.pruning)  # an unknown name lists the registered ones
    if self.rewind not in REWIND_POINTS:
      raise ValueError(f'Unknown rewind {self.rewind!r}; choose one of {REWIND_POINTS}.')
    if self.rewind_scope not in REWIND_SCOPES:
      raise ValueError(f'Unknown rewind_scope {self.rewind_scope!r}; choose one of '
                       f'{REWIND_SCOPES}.')
    if self.rewind == 'step' and self.rewind_step < 1:
      raise ValueError('rewind="step" needs rewind_step >= 1 (optimizer steps of round 0).')
    if self.rewind == 'step' and (self.prune_first or not self.include_dense):
      raise ValueError('rewind="step" takes its rewind point from a dense round 0: it '
                       'cannot be combined with prune_first or include_dense=False.')
    if not self.seeds or self.dense_seeds == ():
      raise ValueError('seeds and dense_seeds must name at least one seed.')
    if self.dense_seeds and self.dense_seeds[0] != self.seeds[0]:
      raise ValueError('dense_seeds must start with seeds[0]: the first seed\'s weights '
                       'are pruned in every round.')

  @property
  def first_round(self) -> int:
    """The first trained round: 0, or 1 for a branch without its own dense round."""
    return 0 if self.include_dense or self.prune_first else 1

  def round_seeds(self, k: int) -> tuple[int, ...]:
    """The seeds trained in round `k` (the dense round may have its own)."""
    dense = k == 0 and self.dense_seeds and not self.prune_first
    return self.dense_seeds if dense else self.seeds

  @property
  def num_runs(self) -> int:
    """How many fine-tunes the whole run trains."""
    return sum(len(self.round_seeds(k)) for k in range(self.first_round, self.num_rounds))


def _continued(run_dir: str, round_index: int, seed: int, rewind: Mapping[str, Any],
               policy: str | None) -> dict[str, Any]:
  """A round's start with rewind_scope='prunable': the previous round's final
  variables of this seed, its prunable weights rewound."""
  path = os.path.join(_round_dir(run_dir, round_index - 1), f'seed_{seed}', FINAL_VARIABLES)
  if not os.path.exists(path):
    raise ValueError(f'{path} is missing: with rewind_scope="prunable" round {round_index} of '
                     f'seed {seed} continues from round {round_index - 1} of the same seed, '
                     'which has not run (a seed added later must start a new run).')
  previous = tree_io.load(path, dict(rewind))
  params = masks_lib.replace_leaves(previous['params'],
                                    masks_lib.prunable_leaves(rewind['params'], policy))
  return {'params': params, 'batch_stats': previous['batch_stats']}


def prune(spec: ImpSpec, masks: Any, round_index: int, *, trained: Any, rewind: Any,
          gradient: Callable[[Any], Any] | None = None) -> Any:
  """The next mask of an IMP run, by the spec's criterion.

  Args:
    spec: the run's spec (criterion, fraction, policy, pruning seed).
    masks: the current mask.
    round_index: the round whose mask is being made (seeds the random criteria).
    trained: the first seed's trained weights (magnitude criteria).
    rewind: the weights the round rewound to (saliency criteria).
    gradient: params -> the training loss's gradient on a few batches (saliency).

  Returns:
    The mask with `spec.fraction` of its surviving prunable weights removed.
  """
  key = jax.random.fold_in(jax.random.key(spec.pruning_seed), round_index)
  return pruning.prune(spec.pruning, pruning.ScoreInputs(
      masks=masks, trained=trained, rewind=rewind, key=key, gradient=gradient),
      spec.fraction, spec.policy)


def masks_known_in_advance(spec: ImpSpec) -> bool:
  """Whether every round's mask follows from the start alone, so rounds need not wait.

  True when the criterion never reads the trained weights (the random baselines, SNIP)
  and every round starts from the same variables (rewind to the start, every variable).
  """
  return (not pruning.get(spec.pruning).reads_trained and spec.rewind == 'start'
          and spec.rewind_scope == 'all')


def _round_dir(run_dir: str, k: int) -> str:
  return os.path.join(run_dir, f'round_{k:02d}')


def save_round_mask(round_dir: str, masks: Any, policy: str | None = None) -> None:
  """Writes a round's mask in this project's format and the reference's.

  Every process calls it: orbax writes one copy of `mask/`, and the chief process the
  reference's files: `mask_torch.npz` ('<name>.weight_mask', OIHW) and, when torch is
  installed, the same as `mask_torch.pth` (what the reference's scripts load).

  Args:
    round_dir: the round's folder.
    masks: the mask tree.
    policy: which leaves are prunable (only those go into the PyTorch files).
  """
  if sharding.is_chief():
    files.write_npz(os.path.join(round_dir, 'mask_torch.npz'),
                    mask_files.to_pytorch(masks, policy))
    mask_files.save_torch_file(os.path.join(round_dir, 'mask_torch.pth'), masks, policy)
  masks_lib.save(os.path.join(round_dir, 'mask'), masks, overwrite=True)


def previous_round_dir(checkpoint_dir: str) -> str | None:
  """The same seed's checkpoint folder of the previous IMP round, if it exists.

  Args:
    checkpoint_dir: e.g. RUN/round_03/seed_0 (the layout of `run_imp`).

  Returns:
    RUN/round_02/seed_0, or None for round 0, outside an IMP run, or when absent.
  """
  seed_dir = os.path.basename(os.path.normpath(checkpoint_dir))
  round_dir = os.path.dirname(os.path.normpath(checkpoint_dir))
  name = os.path.basename(round_dir)
  if not name.startswith('round_') or not name[6:].isdigit() or int(name[6:]) == 0:
    return None
  previous = os.path.join(os.path.dirname(round_dir), f'round_{int(name[6:]) - 1:02d}',
                          seed_dir)
  return previous if os.path.isdir(previous) else None


def load_round_mask(run_dir: str, k: int) -> Any:
  """The mask of round k of a run (see `save_round_mask`)."""
  return masks_lib.load(os.path.join(_round_dir(run_dir, k), 'mask'))


def load_rewind_point(run_dir: str, start: Mapping[str, Any]) -> dict[str, Any]:
  """The variables a run rewinds to: its saved late-rewinding point, else `start`.

  Args:
    run_dir: an IMP run folder.
    start: the variables round 0 started from (θ_p); also the structure to restore.

  Returns:
    {'params', 'batch_stats'} as numpy trees.
  """
  path = os.path.join(run_dir, 'rewind_point')
  start = jax.device_get(dict(start))
  return tree_io.load(path, start) if os.path.exists(path) else start


def rewind_point(run_dir: str, start: StartVariables, seed: int) -> StartVariables:
  """What a run's later rounds rewind each seed to: its late-rewinding θ_k, else `start`.

  Args:
    run_dir: an IMP run folder.
    start: the variables round 0 started from, or seed -> those.
    seed: a seed of the run (its start variables give the structure to restore).

  Returns:
    θ_k (one tree for every seed) when the run saved one, else `start` itself.
  """
  if not os.path.exists(os.path.join(run_dir, 'rewind_point')):
    return start
  return load_rewind_point(run_dir, per_seed(start)(seed))


def run_entry(seed: int, fit: Any) -> dict[str, Any]:
  """One seed's run as records keep it: its test and best validation metric, best epoch.

  Args:
    seed: the run's seed.
    fit: its `lth_jax.training.FitResult`.

  Returns:
    {'seed', 'test_<metric>', 'val_<metric>', 'best_epoch'} plus the other test metrics
    of the best epoch as 'test_<name>' (e.g. test_map for detection).
  """
  extra = {f'test_{k}': v for k, v in fit.test_metrics.items() if k not in (fit.metric, 'loss')}
  return {'seed': seed, f'test_{fit.metric}': fit.test, f'val_{fit.metric}': fit.best_val,
          'best_epoch': fit.best_epoch, **extra}


def _round_record(k: int, masks: Any, runs: Sequence[Mapping[str, Any]], metric: str,
                  policy: str | None, seconds: float) -> dict[str, Any]:
  return {
      'round': k, 'sparsity': masks_lib.sparsity(masks, policy),
      **results.summarize(runs, metric),
      'best_epoch': runs[0]['best_epoch'], 'num_seeds': len(runs),
      **masks_lib.stage_sparsity(masks, policy), 'runs': list(runs), 'seconds': seconds,
  }


def run_imp(run_dir: str, spec: ImpSpec, start_variables: StartVariables,
            finetune: Finetune, on_round: Callable[[dict[str, Any]], None] | None = None,
            gradient: Callable[[Any], Any] | None = None,
            scheduler: Scheduler | None = None) -> list[dict[str, Any]]:
  """Runs (or resumes) IMP rounds; finished rounds are read back, never recomputed.

  A finished round that lacks some of the spec's seeds (a run resumed with more seeds)
  trains only those and rewrites its record with every seed; its masks stay as they
  were (they come from the first seed).

  Args:
    run_dir: the run's folder.
    spec: what to run.
    start_variables: {'params', 'batch_stats'} round 0 starts from (the pre-trained
      weights with the task's head, or a random init), or seed -> those variables
      (see `per_seed`); with rewind='start' every round rewinds each seed to its own.
    finetune: trains masked variables for one seed (see `Finetune`).
    on_round: called with each round's record as it finishes (or is read back); rounds
      trained side by side report in the order they finish, from the scheduler's thread.
    gradient: params -> the training loss's gradient on a few batches, for criteria
      that need it (`lth_jax.pruning.get(spec.pruning).needs_gradient`).
    scheduler: runs the seeds of a round side by side, each on its own devices, and
      every round's seeds at once when `masks_known_in_advance(spec)` (the results are
      those of running them one after another); None: one after another on
      `finetune`'s own mesh. A `finetune` that carries state from the previous round
      (upstream's keep_state) needs rounds in order: give it no scheduler.

  Returns:
    One record per round: round, sparsity, test/val value of the fine-tuning's metric
    (mean and std over seeds, e.g. test_accuracy), best epoch, sparsity per stage,
    per-seed runs, seconds (of fine-tuning, summed over the seeds).

  Raises:
    DivergenceError: a fine-tuning run diverged; it names the run, round and seed, and
      nothing is recorded for the round.
  """
  os.makedirs(run_dir, exist_ok=True)
  start_for = per_seed(start_variables)
  start = start_for(spec.seeds[0])
  first = spec.first_round
  first_dir = _round_dir(run_dir, first)
  if not os.path.exists(os.path.join(first_dir, 'mask')):
    m0 = masks_lib.init(start['params'], spec.policy)
    if spec.prune_first or first == 1:
      m0 = prune(spec, m0, first, trained=start['params'], rewind=start['params'],
                 gradient=gradient)
    save_round_mask(first_dir, m0, spec.policy)
  rewind = None
  if spec.rewind == 'step' and os.path.exists(os.path.join(run_dir, 'rewind_point')):
    rewind = load_rewind_point(run_dir, start)
  rounds = range(first, spec.num_rounds)
  in_advance = masks_known_in_advance(spec)
  if in_advance:
    # Every mask now (trained=None: the criterion must not read it), so all rounds are
    # independent and train side by side; the masks are those of the round-by-round run.
    for k in rounds:
      if not os.path.exists(os.path.join(_round_dir(run_dir, k + 1), 'mask')):
        save_round_mask(_round_dir(run_dir, k + 1), prune(
            spec, load_round_mask(run_dir, k), k + 1, trained=None, rewind=start['params'],
            gradient=gradient), spec.policy)
  # Rounds train together when their masks are known in advance and runs go side by side.
  together = in_advance and scheduler is not None and scheduler.concurrent > 1
  waves = [list(rounds)] if together else [[k] for k in rounds]
  name = os.path.basename(os.path.normpath(run_dir))
  records: dict[int, dict[str, Any]] = {}
  lock = threading.Lock()

  def takes_rewind(k, seed):
    return spec.rewind == 'step' and k == 0 and seed == spec.seeds[0] and rewind is None

  def finish(k, record, have, new, masks):
    """Writes round k's record once its new runs are trained (the lock is held)."""
    nonlocal rewind
    for seed, (init, fit, _) in new.items():
      if spec.rewind_scope == 'prunable':
        tree_io.save(os.path.join(_round_dir(run_dir, k), f'seed_{seed}', FINAL_VARIABLES),
                     jax.device_get(fit.variables), overwrite=True)
      if takes_rewind(k, seed):
        tree_io.save(os.path.join(run_dir, 'rewind_point'), fit.rewind_variables)
        rewind = load_rewind_point(run_dir, start)
      if seed == spec.seeds[0] and record is None and not in_advance:
        save_round_mask(_round_dir(run_dir, k + 1), prune(
            spec, masks, k + 1, trained=jax.device_get(fit.variables['params']),
            rewind=init['params'], gradient=gradient), spec.policy)
      have[seed] = run_entry(seed, fit)
    seeds = spec.round_seeds(k)
    runs = [have[s] for s in seeds] + [r for s, r in have.items() if s not in seeds]
    record = _round_record(k, masks, runs, fit.metric, spec.policy,
                           sum(t for _, _, t in new.values()) + (record or {}).get('seconds', 0.0))
    if sharding.is_chief():
      files.write_json(os.path.join(_round_dir(run_dir, k), 'round.json'), record)
    sharding.sync(f'imp round {k} of {run_dir}')
    logging.info('IMP round %d: sparsity %.4f, test %s %.4f', k, record['sparsity'],
                 fit.metric, record[f'test_{fit.metric}'])
    return record

  def report(k, record):
    records[k] = record
    if on_round is not None:
      on_round(record)

  for wave in waves:
    todo = {}
    for k in wave:
      # A record a crash cut short counts as missing: the round is recorded again from
      # its runs, whose finished checkpoints give their results without training.
      record = files.read_json(os.path.join(_round_dir(run_dir, k), 'round.json'))
      have = {r['seed']: r for r in (record or {}).get('runs', [])}
      missing = [s for s in spec.round_seeds(k) if s not in have]
      if missing:  # the round's mask is read once, for all its runs
        todo[k] = (record, have, missing, {}, load_round_mask(run_dir, k))
      else:
        report(k, record)
      if scheduler:
        scheduler.count_finished(len(spec.round_seeds(k)) - len(missing))
    units = [(k, s) for k, (_, _, missing, _, _) in todo.items() for s in missing]

    def train(unit, mesh):
      k, seed = unit
      masks = todo[k][-1]
      init = rewind if spec.rewind == 'step' and k > 0 else start_for(seed)
      if spec.rewind_scope == 'prunable' and k > first:
        init = _continued(run_dir, k, seed, init, spec.policy)
      variables = {'params': masks_lib.apply(init['params'], masks),
                   'batch_stats': init['batch_stats']}
      tic = time.time()
      try:
        fit = on_mesh(finetune, mesh)(
            variables, masks, seed=seed,
            checkpoint_dir=os.path.join(_round_dir(run_dir, k), f'seed_{seed}'),
            rewind_step=spec.rewind_step if takes_rewind(k, seed) else None)
      except DivergenceError as e:
        raise e.within(f'{name} round {k}, seed {seed}') from None
      with lock:
        record, have, missing, new, _ = todo[k]
        new[seed] = (init, fit, time.time() - tic)
        if len(new) == len(missing):  # the round's last run: record it now
          report(k, finish(k, record, have, {s: new[s] for s in missing}, masks))

    names = [f'{name} round {k} seed {s}' for k, s in units]
    if scheduler:
      scheduler.map(train, units, names)
    else:
      for unit in units:
        train(unit, None)
  return [records[k] for k in rounds]
