"""The lottery engines: IMP rounds with rewinding, transfer with seeds, matching.

    records = lottery.run_imp(run_dir, ImpSpec(num_rounds=8), theta_p, finetune)
    rows = lottery.run_transfer(run_dir, tickets, theta_p, finetune, seeds=(0, 1, 2),
                               metric='accuracy')

Modules: `protocol` (the `Finetune` callable the engines take, per-seed start
variables), `imp` (the IMP spec and `run_imp`), `plan` (IMP as idempotent steps,
prune(round k) and train(round k, seed s), executed by a scheduler), `rounds` (a run's
masks, rewind point and round records on disk), `transfer` (tickets fine-tuned with
several seeds), `results` (per-seed summaries, matching, extreme sparsity, named by the
task's headline metric), `result_files` (the table and the plot they are written as).
Knows nothing of configs, data or models; may import `lth_jax.masks`, `lth_jax.pruning`,
`lth_jax.training` (types), `lth_jax.interop` (mask files) and `lth_jax.runtime`.
"""

from lth_jax.lottery.iterative_pruning import ImpSpec, run_imp
from lth_jax.lottery.protocol import Finetune, StartVariables, per_seed
from lth_jax.lottery.rounds import load_round_mask, rewind_point
from lth_jax.lottery.ticket_transfer import DENSE, run_transfer

__all__ = ['DENSE', 'Finetune', 'ImpSpec', 'StartVariables', 'load_round_mask', 'per_seed',
           'rewind_point', 'run_imp', 'run_transfer']
