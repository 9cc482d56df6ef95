"""Transfer of tickets: fine-tune masked pre-trained weights with several seeds.

Each (ticket, seed) is one resumable unit in `run_dir/<ticket>/seed_S/` whose
`result.json` is written last; a finished unit is read back, never recomputed (one whose
result.json a crash cut short is recorded again from its finished checkpoints). The
dense network (an all-True mask) is always included as 'dense': the matching band
(REFERENCE.md, judged by `lth_jax.lottery.results.mark_matching`) comes from its seeds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jax.sharding import Mesh

from lth_jax import masks as masks_lib
from lth_jax.errors import DivergenceError
from lth_jax.lottery import results
from lth_jax.lottery.rounds import run_entry
from lth_jax.lottery.protocol import Finetune, StartVariables, on_mesh, per_seed
from lth_jax.runtime import files, paths, sharding
from lth_jax.runtime.scheduler import Scheduler

DENSE = 'dense'


def run_transfer(run_dir: str, tickets: Mapping[str, Any], start_variables: StartVariables,
                 finetune: Finetune, seeds: Sequence[int], *, metric: str,
                 init_variables: Mapping[str, StartVariables] | None = None,
                 policy: str | None = None,
                 on_result: Callable[[dict[str, Any]], None] | None = None,
                 dense_runs: Sequence[Mapping[str, Any]] | None = None,
                 dense_seeds: Sequence[int] | None = None,
                 scheduler: Scheduler | None = None) -> list[dict[str, Any]]:
  """Fine-tunes every ticket (and the dense network) with every seed.

  Args:
    run_dir: where the runs live.
    tickets: name -> mask tree (any model sharing the prunable convolutions; see
      `lth_jax.masks.conform`).
    start_variables: {'params', 'batch_stats'} of this task's model (θ_p with the task's
      head), or seed -> those (`lth_jax.lottery.per_seed`): every run starts from them.
    finetune: trains masked variables for one seed (see `lth_jax.lottery.Finetune`).
    seeds: fine-tuning seeds.
    metric: the task's headline metric (what `finetune` reports; names the fields).
    init_variables: optional name -> variables (or seed -> variables) to use instead
      of `start_variables` for that ticket (random re-initialisation baselines).
    policy: which leaves are prunable.
    on_result: called with each finished row.
    dense_runs: the dense network's runs, one per dense seed, when they exist already
      (e.g. round 0 of an IMP run from the same start with the same finetune, read with
      `results.dense_runs`, which refuses a sparse round): not trained again.
    dense_seeds: the dense network's seeds when they differ from `seeds`; None: `seeds`.
    scheduler: runs the (ticket, seed) runs: side by side when it has several device
      groups, else one after another, each ticket's row as soon as its runs are done;
      None: one after another on `finetune`'s own mesh.

  Returns:
    One row per ticket, dense first: ticket, sparsity, test and val metric mean/std
    (e.g. test_accuracy), per-seed runs, sparsity per stage.

  Raises:
    DivergenceError: a run diverged (named by ticket and seed); nothing is recorded.
    ValueError: `dense_runs` lacks one of the dense network's seeds.
  """
  dense_seeds = tuple(dense_seeds or seeds)
  seeds_of = lambda name: dense_seeds if name == DENSE else seeds
  given = {r['seed']: r for r in dense_runs or ()}
  if dense_runs is not None and not set(dense_seeds) <= set(given):
    raise ValueError(f'dense_runs has seeds {sorted(given)}, not all of {list(dense_seeds)}.')
  start_for = per_seed(start_variables)
  init_for = {name: per_seed(v) for name, v in (init_variables or {}).items()}
  params = start_for(seeds[0])['params']
  named = {DENSE: masks_lib.init(params, policy), **tickets}
  conformed = {name: masks_lib.conform(ticket, params, policy) for name, ticket in named.items()}
  result = lambda name, seed: paths.transfer_result(run_dir, name, seed)

  def train(unit: tuple[str, int], mesh: Mesh | None) -> None:
    name, seed = unit
    _train_one(run_dir, name, seed, finetune, conformed[name],
               init_for.get(name, start_for)(seed), mesh)

  units, todo = transfer_runs(run_dir, list(named), seeds, dense_seeds=dense_seeds,
                              dense_given=bool(given))
  scheduler = scheduler or Scheduler(None)  # one group: one run after another
  scheduler.count_finished(len(units) - len(todo))
  named_runs = lambda runs: [f'{name} seed {seed}' for name, seed in runs]
  if scheduler.concurrent > 1:
    scheduler.map(train, todo, named_runs(todo))
  rows = []
  for name, masks in conformed.items():
    if scheduler.concurrent == 1:  # one after another, each ticket's row as soon as it is done
      mine = [u for u in todo if u[0] == name]
      scheduler.map(train, mine, named_runs(mine))
    runs = ([dict(given[seed]) for seed in dense_seeds] if name == DENSE and given else
            [files.read_json(result(name, seed), fix=(
                'Rerun the command: the result is recorded again from the run\'s '
                'checkpoints.')) for seed in seeds_of(name)])
    row = {'ticket': name, 'sparsity': masks_lib.sparsity(masks, policy),
           **results.summarize(runs, metric), **masks_lib.stage_sparsity(masks, policy),
           'runs': runs}
    rows.append(row)
    (on_result or (lambda _: None))(row)
  return rows


def transfer_runs(run_dir: str, names: Sequence[str], seeds: Sequence[int], *,
                  dense_seeds: Sequence[int] | None = None, dense_given: bool = False
                  ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
  """The (ticket, seed) runs of a transfer, and those its folder does not hold yet.

  Args:
    run_dir: where the runs live.
    names: the tickets' names, `DENSE` among them.
    seeds: the fine-tuning seeds.
    dense_seeds: the dense network's seeds when they differ from `seeds`.
    dense_given: the dense network's runs exist elsewhere (`run_transfer`'s
      `dense_runs`): none of its runs is trained here.

  Returns:
    (every run `run_transfer` trains or reads back, the runs still to train).
  """
  seeds_of = lambda name: tuple(dense_seeds or seeds) if name == DENSE else seeds
  units = [(n, s) for n in names for s in seeds_of(n) if not (n == DENSE and dense_given)]
  # A result a crash cut short counts as missing: the run's finished checkpoints give it
  # again without training.
  todo = [(n, s) for n, s in units
          if files.read_json(paths.transfer_result(run_dir, n, s)) is None]
  return units, todo


def _train_one(run_dir: str, name: str, seed: int, finetune: Finetune, masks: Any,
               base: Mapping[str, Any], mesh: Mesh | None) -> None:
  """Fine-tunes one ticket with one seed from `base` under `masks`; records its result.

  Args:
    run_dir: where the runs live.
    name: the ticket's name.
    seed: the fine-tuning seed.
    finetune: see `run_transfer`.
    masks: the ticket, conformed to the model.
    base: the variables it starts from (masked here).
    mesh: the devices of this run, or None for `finetune`'s own mesh.
  """
  variables = {'params': masks_lib.apply(base['params'], masks),
               'batch_stats': base['batch_stats']}
  done = paths.transfer_result(run_dir, name, seed)
  try:
    fit = on_mesh(finetune, mesh)(variables, masks, seed=seed,
                                  checkpoint_dir=paths.transfer_checkpoints(run_dir, name, seed))
  except DivergenceError as e:
    raise e.within(f'ticket {name}, seed {seed}') from None
  if sharding.is_chief():
    files.write_json(done, run_entry(seed, fit))
  sharding.sync(f'transfer {os.path.dirname(done)}')

