"""Transfer of tickets: fine-tune masked pre-trained weights with several seeds.

Each (ticket, seed) is one resumable unit in `run_dir/<ticket>/seed_S/` whose
`result.json` is written last; a finished unit is read back, never recomputed. The
dense network (an all-True mask) is always included as 'dense': the matching band
(REFERENCE.md) comes from its seeds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lth_jax import imp, masks as masks_lib, results, sharding
from lth_jax.errors import DivergenceError

DENSE = 'dense'


def run_transfer(run_dir: str, tickets: Mapping[str, Any], start_variables: imp.StartVariables,
                 finetune: imp.Finetune, seeds: Sequence[int],
                 init_variables: Mapping[str, imp.StartVariables] | None = None,
                 policy: str | None = None,
                 on_result: Callable[[dict[str, Any]], None] | None = None
                 ) -> list[dict[str, Any]]:
  """Fine-tunes every ticket (and the dense network) with every seed.

  Args:
    run_dir: where the runs live.
    tickets: name -> mask tree (any model sharing the prunable convolutions; see
      `lth_jax.masks.conform`).
    start_variables: {'params', 'batch_stats'} of this task's model (θ_p with the
      task's head), or seed -> those variables (see `lth_jax.imp.per_seed`); the dense
      run and every ticket start from them.
    finetune: trains masked variables for one seed (see `lth_jax.imp.Finetune`).
    seeds: fine-tuning seeds.
    init_variables: optional name -> variables (or seed -> variables) to use instead
      of `start_variables` for that ticket (random re-initialisation baselines).
    policy: which leaves are prunable.
    on_result: called with each finished row.

  Returns:
    One row per ticket, dense first: ticket, sparsity, test accuracy mean/std,
    val accuracy mean/std, per-seed accuracies, sparsity per stage.

  Raises:
    DivergenceError: a run diverged (it names the ticket and seed); nothing is recorded
      for it.
  """
  start_for = imp.per_seed(start_variables)
  init_for = {name: imp.per_seed(v) for name, v in (init_variables or {}).items()}
  params = start_for(seeds[0])['params']
  named = {DENSE: masks_lib.init(params, policy), **tickets}
  rows = []
  for name, ticket in named.items():
    masks = masks_lib.conform(ticket, params, policy)
    runs = []
    for seed in seeds:
      unit = os.path.join(run_dir, name, f'seed_{seed}')
      done = os.path.join(unit, 'result.json')
      if not os.path.exists(done):
        base = init_for.get(name, start_for)(seed)
        variables = {'params': masks_lib.apply(base['params'], masks),
                     'batch_stats': base['batch_stats']}
        try:
          fit = finetune(variables, masks, seed=seed, checkpoint_dir=os.path.join(unit, 'train'))
        except DivergenceError as e:
          raise e.within(f'ticket {name}, seed {seed}') from None
        record = {'seed': seed, 'test_accuracy': fit.test_accuracy,
                  'val_accuracy': fit.best_val_accuracy, 'best_epoch': fit.best_epoch}
        if sharding.is_chief():
          results.write_json(done, record)
        sharding.sync(f'transfer {unit}')
      with open(done) as f:
        runs.append(json.load(f))
    test_mean, test_std = results.mean_std([r['test_accuracy'] for r in runs])
    val_mean, val_std = results.mean_std([r['val_accuracy'] for r in runs])
    row = {'ticket': name, 'sparsity': masks_lib.sparsity(masks, policy),
           'test_accuracy': test_mean, 'test_accuracy_std': test_std,
           'val_accuracy': val_mean, 'val_accuracy_std': val_std,
           **masks_lib.stage_sparsity(masks, policy), 'runs': runs}
    rows.append(row)
    if on_result is not None:
      on_result(row)
  return rows


def add_matching(rows: Sequence[dict[str, Any]]) -> float | None:
  """Marks each row `matching` against the dense row's seeds; returns the extreme sparsity.

  Args:
    rows: output of `run_transfer` (its 'dense' row holds the dense seeds).

  Returns:
    The highest matching sparsity, or None.
  """
  dense = next(r for r in rows if r['ticket'] == DENSE)
  dense_acc = [r['test_accuracy'] for r in dense['runs']]
  for row in rows:
    row['matching'] = results.is_matching(row['test_accuracy'], dense_acc)
  return results.extreme_sparsity(rows, dense_acc)
