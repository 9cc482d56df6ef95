"""Iterative magnitude pruning (IMP) with rewinding, as resumable rounds.

A round k fine-tunes the rewound ticket `rewind_point ⊙ m_k` (for every seed), then
derives m_{k+1} from the trained weights of the first seed (prune `fraction` of the
survivors) and records its metrics. Each round lives in its own folder of the run
(`lth_jax.runtime.paths`): its mask m_k (orbax, and the reference's PyTorch files),
each seed's fine-tuning checkpoints (resumable mid-round), and its record, written
last: a round with it is never rerun.

`run_imp` builds the run's plan of idempotent steps, prune(round k) and train(round k,
seed s), each left out when its output exists, and hands it to a scheduler
(`lth_jax.lottery.plan`). m_{k+1} is written into round k+1's folder before the record
of round k, so a crash at any point resumes without redoing finished work, and a
finished run can be extended with more rounds. A record that a crash cut short counts
as missing: the round is recorded again from its runs' finished checkpoints, which
train no further. The optimizer state is fresh every round (a fine-tune may carry it
on from `continue_from`, the same seed's folder of the round before). A criterion
that never reads the trained weights (random pruning, SNIP) with rewinding to the
start gives every mask in advance: all of them are written first, and a `Scheduler`
trains every round's runs side by side.

IMP does not know about data, models or tasks: fine-tuning is a callable (see
`lth_jax.lottery.protocol.Finetune`), pruning a registered criterion (see
`lth_jax.pruning.criteria`), and records are named by the metric the fine-tuning
reports (`test_accuracy` for classification).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from lth_jax import pruning
from lth_jax.lottery import plan
from lth_jax.lottery.protocol import Finetune, StartVariables, per_seed
from lth_jax.runtime.scheduler import Scheduler

REWIND_POINTS = ('start', 'step')
# What a round rewinds: 'all' variables (the paper's protocol), or only the 'prunable'
# weights, the rest (stem, BatchNorm, a task's head) continuing from the round before
# (the reference's detection IMP).
REWIND_SCOPES = ('all', 'prunable')


@dataclasses.dataclass(frozen=True)
class ImpSpec:
  """What an IMP run does.

  Attributes:
    num_rounds: rounds to train, round 0 included (round k has sparsity 1 - 0.8^k
      with the default fraction, or 1 - 0.8^(k+1) with `prune_first`).
    fraction: share of the surviving prunable weights pruned after each round.
    pruning: a criterion of `lth_jax.pruning.CRITERIA`: 'magnitude' (global, the
      paper's), 'layerwise_magnitude', the random baselines 'random' (global count)
      and 'layerwise_random', 'snip' (needs `run_imp(gradient=...)`), ...
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
    if self.dense_seeds and self.prune_first:
      raise ValueError('dense_seeds are the seeds of a dense round 0, and prune_first prunes '
                       'θ_p before it, so no round is dense: drop one of the two.')
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


def masks_known_in_advance(spec: ImpSpec) -> bool:
  """Whether every round's mask follows from the start alone, so rounds need not wait.

  True when the criterion never reads the trained weights (the random baselines, SNIP)
  and every round starts from the same variables (rewind to the start, every variable).
  """
  return (not pruning.get(spec.pruning).reads_trained and spec.rewind == 'start'
          and spec.rewind_scope == 'all')


def count_runs(run_dir: str, spec: ImpSpec) -> tuple[int, int]:
  """(The fine-tunes of an IMP run, how many of them its folder holds), as `run_imp` counts.

  Raises:
    ValueError: as `plan.build`: a finished round's next mask is missing.
  """
  steps = plan.build(run_dir, spec, in_advance=masks_known_in_advance(spec), together=False)
  return spec.num_runs, sum(len(r.seeds) - len(r.train) for r in steps.rounds)


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
    finetune: trains masked variables for one seed (see `Finetune`); round k of a seed
      gets `continue_from=` that seed's checkpoint folder of round k - 1 (or None).
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
  scheduler = scheduler or Scheduler(None)  # one group: one run after another
  steps = plan.build(run_dir, spec, in_advance=masks_known_in_advance(spec),
                     together=scheduler.concurrent > 1)
  records = plan.execute(steps, plan.Context(run_dir, spec, per_seed(start_variables),
                                             finetune, gradient, on_round), scheduler)
  return [records[k] for k in range(spec.first_round, spec.num_rounds)]
