"""IMP as a plan of idempotent steps over explicit units, executed by a `Scheduler`.

An IMP run is two kinds of step: `Prune(k)` writes m_k into round k's folder, and
`Train(k, s)` fine-tunes round k's rewound ticket for seed s. Each names its inputs
(what a mask is pruned from; what a run rewinds to and continues from) and is left out
of the plan when its output exists: a mask on disk, a seed that the round's record
lists. A round is recorded (`round.json`) when its last run has finished, after
m_{k+1} was pruned from its first seed's weights, so a crash at any point resumes
without redoing finished work.

    steps = plan.build(run_dir, spec, in_advance=False, together=False)
    records = plan.execute(steps, plan.Context(...), scheduler)

`execute` prunes the masks known up front, then runs the waves in order, a wave's runs
side by side on the scheduler; a round is recorded as its last run finishes.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
from absl import logging
from jax.sharding import Mesh

from lth_jax import masks as masks_lib
from lth_jax import pruning
from lth_jax.errors import DivergenceError
from lth_jax.lottery import rounds
from lth_jax.lottery.protocol import Finetune, on_mesh, takes_keyword
from lth_jax.runtime import paths, tree_io
from lth_jax.runtime.scheduler import Scheduler

if TYPE_CHECKING:
  from lth_jax.lottery.iterative_pruning import ImpSpec

# What a mask is pruned from (`Prune.source`).
FROM_START, FROM_MASK, FROM_TRAINED = 'start', 'mask', 'trained'
# What a run rewinds to (`Train.rewinds_to`): its start variables, or late rewinding's θ_k.
START, LATE = 'start', 'late'


@dataclasses.dataclass(frozen=True)
class Prune:
  """Writes m_k into round k's folder; left out of a plan when it is there.

  Attributes:
    round: k.
    source: what m_k is pruned from: FROM_START (the first round's mask: all ones,
      pruned once from the start weights with `prune_first` or in a run without its
      dense round), FROM_MASK (m_{k-1} alone, when masks are known in advance) or
      FROM_TRAINED (the trained weights of round k-1's first seed).
  """
  round: int
  source: str


@dataclasses.dataclass(frozen=True)
class Train:
  """Fine-tunes `rewind ⊙ m_k` for one seed; left out when round k's record lists it.

  Attributes:
    round: k (its mask is m_k).
    seed: the fine-tuning seed.
    checkpoint_dir: its checkpoints (a run resumes mid-round from them).
    rewinds_to: START (the seed's start variables) or LATE (late rewinding's θ_k,
      saved by round 0's first seed).
    continue_from: the same seed's checkpoint folder of round k-1 once that run has
      finished (in an earlier wave, or recorded), None when round k-1 did not train this
      seed, trains it in the same wave, or k is the first round. The fine-tune receives
      it when it is not None (one that carries its optimizer state across rounds
      resumes it from there).
    continues: the variables that are not pruned start from `continue_from`'s final
      variables instead of the rewind point (rewind_scope='prunable').
    keeps_final: saves its final variables, which the next round continues from.
    rewind_step: the optimizer step whose weights become the run's rewind point (late
      rewinding: round 0's first seed, until the point is saved), else None.
  """
  round: int
  seed: int
  checkpoint_dir: str
  rewinds_to: str = START
  continue_from: str | None = None
  continues: bool = False
  keeps_final: bool = False
  rewind_step: int | None = None


@dataclasses.dataclass(frozen=True)
class Round:
  """Round k: its runs still to train, and its record, written once they are.

  Attributes:
    index: k.
    seeds: the spec's seeds of the round, the first seed's first.
    record: the record found on disk (None: none, or one that a crash cut short).
    train: the runs to train: the seeds the record lacks, in `seeds` order.
    next_mask: prunes m_{k+1} from the first seed's trained weights once the runs are
      done, before the record (None: that mask exists or is pruned up front).
  """
  index: int
  seeds: tuple[int, ...]
  record: dict[str, Any] | None
  train: tuple[Train, ...]
  next_mask: Prune | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
  """The steps of an IMP run still to do, in order.

  Attributes:
    masks: masks pruned before any training (the first round's; every round's when
      the masks are known in advance).
    waves: rounds whose runs go side by side; a wave starts once the one before it is
      recorded.
  """
  masks: tuple[Prune, ...]
  waves: tuple[tuple[Round, ...], ...]

  @property
  def rounds(self) -> list[Round]:  # every round of the plan, in order
    return [r for wave in self.waves for r in wave]


def build(run_dir: str, spec: ImpSpec, *, in_advance: bool, together: bool) -> Plan:
  """The steps of an IMP run that its folder does not hold yet.

  Args:
    run_dir: the run's folder.
    spec: what the run does.
    in_advance: every mask follows from the start alone (`masks_known_in_advance`):
      all of them are pruned before any training.
    together: with `in_advance`, every round's runs go side by side in one wave.

  Returns:
    The plan; finished rounds are in it with no run to train (their records are read
    back).

  Raises:
    ValueError: a finished round's next mask is missing and cannot be pruned again
      (its first seed's run is recorded, so its weights are not at hand).
  """
  first, numbers = spec.first_round, range(spec.first_round, spec.num_rounds)
  masks = [Prune(first, FROM_START)] if not rounds.has_round_mask(run_dir, first) else []
  if in_advance:
    masks += [Prune(k + 1, FROM_MASK) for k in numbers
              if not rounds.has_round_mask(run_dir, k + 1)]
  records = {k: rounds.read_round_record(run_dir, k) for k in numbers}
  recorded = {k: {r['seed'] for r in (records[k] or {}).get('runs', [])} for k in numbers}
  missing = {k: tuple(s for s in spec.round_seeds(k) if s not in recorded[k]) for k in numbers}
  one_wave = in_advance and together
  # What round k + 1 of a seed continues from: round k of the seed once it has finished,
  # never a run of the same wave (still in progress). Each round has its own wave unless
  # every round goes in one; then only round k's recorded runs have finished.
  finished = {k: (recorded[k] if one_wave else set(spec.round_seeds(k)) | recorded[k])
              for k in numbers}
  rewind_saved = os.path.exists(paths.rewind_point(run_dir))

  def train(k: int, seed: int) -> Train:
    return Train(
        k, seed, paths.seed_dir(paths.round_dir(run_dir, k), seed),
        rewinds_to=LATE if spec.rewind == 'step' and k > 0 else START,
        continue_from=(paths.seed_dir(paths.round_dir(run_dir, k - 1), seed)
                       if seed in finished.get(k - 1, ()) else None),
        continues=spec.rewind_scope == 'prunable' and k > first,
        keeps_final=spec.rewind_scope == 'prunable',
        rewind_step=(spec.rewind_step if spec.rewind == 'step' and k == 0 and not rewind_saved
                     and seed == spec.seeds[0] else None))

  plan = []
  for k in numbers:
    next_mask = None
    if not in_advance and not rounds.has_round_mask(run_dir, k + 1):
      if spec.seeds[0] in missing[k]:
        next_mask = Prune(k + 1, FROM_TRAINED)
      elif missing.get(k + 1):  # (a finished run's extension mask may stay missing)
        raise ValueError(
            f'{paths.mask_dir(paths.round_dir(run_dir, k + 1))} is missing while round {k} is '
            f'recorded: delete {paths.round_record(paths.round_dir(run_dir, k))} and rerun; '
            'the round is recorded again from its finished checkpoints and prunes the mask.')
    plan.append(Round(k, spec.round_seeds(k), records[k],
                      tuple(train(k, s) for s in missing[k]), next_mask))
  waves = [tuple(plan)] if one_wave else [(r,) for r in plan]
  return Plan(tuple(masks), tuple(waves))


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


@dataclasses.dataclass(frozen=True)
class Context:
  """What the steps of one IMP run are executed with.

  Attributes:
    run_dir: the run's folder.
    spec: what the run does.
    start_for: seed -> the variables round 0 starts from (see `per_seed`).
    finetune: trains masked variables for one seed (see `Finetune`).
    gradient: params -> the training loss's gradient, for criteria that need it.
    on_round: called with each round's record as it finishes or is read back.
  """
  run_dir: str
  spec: ImpSpec
  start_for: Callable[[int], dict[str, Any]]
  finetune: Finetune
  gradient: Callable[[Any], Any] | None = None
  on_round: Callable[[dict[str, Any]], None] | None = None


@dataclasses.dataclass(frozen=True)
class _Trained:
  """A run's outcome: the variables it started from, its FitResult, its seconds."""
  start: Mapping[str, Any]
  fit: Any
  seconds: float


def execute(plan: Plan, context: Context, scheduler: Scheduler) -> dict[int, dict[str, Any]]:
  """Executes a plan: its masks, then each wave's runs on the scheduler's devices.

  Args:
    plan: the steps (see `build`).
    context: what they are executed with.
    scheduler: runs a wave's runs side by side (one group: one after another); its
      progress counts the runs finished before as done.

  Returns:
    round -> its record, for every round of the plan.

  Raises:
    DivergenceError: a run diverged; it names the run, round and seed, and nothing is
      recorded for its round.
  """
  run = _Execution(context, plan)
  for step in plan.masks:
    run.prune(step)
  for wave in plan.waves:
    for r in wave:
      if not r.train:
        run.report(r.record)
      scheduler.count_finished(len(r.seeds) - len(r.train))
    run.prepare(wave)
    steps = [step for r in wave for step in r.train]
    scheduler.map(run.train, steps, [f'{run.name} round {s.round} seed {s.seed}' for s in steps])
  return run.records


class _Execution:
  """The state of one plan's execution: masks read, runs trained, records written."""

  def __init__(self, context: Context, plan: Plan):
    self.c = context
    self.name = os.path.basename(os.path.normpath(context.run_dir))
    self.rounds = {r.index: r for r in plan.rounds}
    self.records: dict[int, dict[str, Any]] = {}
    self.masks: dict[int, Any] = {}
    self.rewind: dict[str, Any] | None = None
    self.start = context.start_for(context.spec.seeds[0])
    # Runs of a wave finish in scheduler threads: the last run of a round records it.
    self._lock = threading.Lock()
    self._trained: dict[int, dict[int, _Trained]] = {}
    self._takes_continue_from = takes_keyword(context.finetune, 'continue_from')

  def prepare(self, wave: tuple[Round, ...]) -> None:
    """Reads what a wave's runs start from: each round's mask (once for all its runs)
    and the rewind point of late rewinding."""
    for r in wave:
      if r.train:
        self.masks[r.index] = rounds.load_round_mask(self.c.run_dir, r.index)
      if any(step.rewinds_to == LATE for step in r.train) and self.rewind is None:
        if not os.path.exists(paths.rewind_point(self.c.run_dir)):
          raise ValueError(f'{paths.rewind_point(self.c.run_dir)} is missing: with '
                           'rewind="step" round 0\'s first seed saves it, and later rounds '
                           'rewind to it; start the run again in a new folder.')
        self.rewind = rounds.load_rewind_point(self.c.run_dir, self.start)

  def prune(self, step: Prune, after: _Trained | None = None) -> None:
    """Executes a Prune step: writes m_k (from the start, m_{k-1} or `after`'s weights)."""
    spec, k, start = self.c.spec, step.round, self.start['params']
    gradient = self.c.gradient
    if step.source == FROM_START:
      m = masks_lib.init(start, spec.policy)
      if spec.prune_first or k == 1:
        m = prune(spec, m, k, trained=start, rewind=start, gradient=gradient)
    elif step.source == FROM_MASK:  # trained=None: the criterion must not read it
      m = prune(spec, rounds.load_round_mask(self.c.run_dir, k - 1), k, trained=None,
                rewind=start, gradient=gradient)
    else:
      m = prune(spec, self.masks[k - 1], k, trained=jax.device_get(after.fit.variables['params']),
                rewind=after.start['params'], gradient=gradient)
    rounds.save_round_mask(paths.round_dir(self.c.run_dir, k), m, spec.policy)

  def train(self, step: Train, mesh: Mesh | None) -> None:
    """Executes a Train step on `mesh` (None: the fine-tune's own); records its round
    when it is the round's last run."""
    masks = self.masks[step.round]
    start = self.rewind if step.rewinds_to == LATE else self.c.start_for(step.seed)
    if step.continues:
      start = self._continued(step, start)
    variables = {'params': masks_lib.apply(start['params'], masks),
                 'batch_stats': start['batch_stats']}
    # Like `mesh`, `continue_from` is passed only when there is one, and only to a
    # fine-tune that takes it: one that carries nothing across rounds (written before
    # IMP handed it over) may leave it out of its signature.
    extra = ({'continue_from': step.continue_from}
             if step.continue_from is not None and self._takes_continue_from else {})
    tic = time.time()
    try:
      fit = on_mesh(self.c.finetune, mesh)(
          variables, masks, seed=step.seed, checkpoint_dir=step.checkpoint_dir,
          rewind_step=step.rewind_step, **extra)
    except DivergenceError as e:
      raise e.within(f'{self.name} round {step.round}, seed {step.seed}') from None
    with self._lock:
      # A resumed run's own count holds the time before the kill too.
      self._trained.setdefault(step.round, {})[step.seed] = _Trained(
          start, fit, time.time() - tic if fit.seconds is None else fit.seconds)
      del fit  # (held by the round alone, it is released once the round is recorded)
      r = self.rounds[step.round]
      if len(self._trained[r.index]) == len(r.train):
        self.report(self._finish(r))

  def _continued(self, step: Train, rewind: Mapping[str, Any]) -> dict[str, Any]:
    """rewind_scope='prunable': the previous round's final variables of the seed, its
    prunable weights rewound."""
    path = step.continue_from and paths.final_variables(step.continue_from)
    if not path or not os.path.exists(path):
      raise ValueError(
          f'{path or f"Round {step.round - 1} of seed {step.seed}"} is missing: with '
          f'rewind_scope="prunable" round {step.round} of seed {step.seed} continues from '
          f'round {step.round - 1} of the same seed, which has not run (a seed added later '
          'must start a new run).')
    previous = tree_io.load(path, dict(rewind))
    params = masks_lib.replace_leaves(previous['params'],
                                      masks_lib.prunable_leaves(rewind['params'],
                                                                self.c.spec.policy))
    return {'params': params, 'batch_stats': previous['batch_stats']}

  def _finish(self, r: Round) -> dict[str, Any]:
    """Writes what round k's runs leave behind, m_{k+1}, then the round's record, and
    returns the record.

    The round's runs and mask are released: on disk now, they are not needed again, and
    kept until the whole run ends their variables (on device) would add up to GBs.
    """
    spec, run_dir = self.c.spec, self.c.run_dir
    done = self._trained.pop(r.index)
    trained = [done[s.seed] for s in r.train]
    for step, run in zip(r.train, trained):
      if step.keeps_final:
        tree_io.save(paths.final_variables(step.checkpoint_dir),
                     jax.device_get(run.fit.variables), overwrite=True)
      if step.rewind_step is not None:
        tree_io.save(paths.rewind_point(run_dir), run.fit.rewind_variables)
        self.rewind = rounds.load_rewind_point(run_dir, self.start)
    if r.next_mask is not None:
      self.prune(r.next_mask, after=trained[[s.seed for s in r.train].index(spec.seeds[0])])
    have = {run['seed']: run for run in (r.record or {}).get('runs', [])}
    have.update({step.seed: rounds.run_entry(step.seed, run.fit)
                 for step, run in zip(r.train, trained)})
    runs = [have[s] for s in r.seeds] + [run for s, run in have.items() if s not in r.seeds]
    metric = trained[-1].fit.metric
    record = rounds.round_record(
        r.index, self.masks[r.index], runs, metric, spec.policy,
        sum(run.seconds for run in trained) + (r.record or {}).get('seconds', 0.0))
    rounds.write_round_record(run_dir, record)
    logging.info('IMP round %d: sparsity %.4f, test %s %.4f', r.index, record['sparsity'],
                 metric, record[f'test_{metric}'])
    self.masks.pop(r.index, None)
    return record

  def report(self, record: dict[str, Any]) -> None:
    """Keeps a round's record and hands it to `on_round`."""
    self.records[record['round']] = record
    if self.c.on_round is not None:
      self.c.on_round(record)
