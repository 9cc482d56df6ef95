"""The files of an IMP run: round masks, the rewind point, round records.

An IMP run (`lth_jax.lottery.run_imp`) writes each round's mask in this project's
format and the reference's, a late-rewinding point, and one record per round (see
`lth_jax.runtime.paths` for the layout). These functions read and write them; the
plan of steps (`lth_jax.lottery.plan`) and the experiments that reuse a run (its
tickets, its rewind point) go through them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from lth_jax import masks as masks_lib
from lth_jax.interop import mask_files
from lth_jax.lottery import results
from lth_jax.lottery.protocol import StartVariables, per_seed
from lth_jax.runtime import files, paths, sharding, tree_io


def save_round_mask(round_dir: str, masks: Any, policy: str | None = None) -> None:
  """Writes a round's mask in this project's format and the reference's.

  Every process calls it: orbax writes one copy of `mask/`, and the chief process the
  reference's files: `mask_torch.npz` ('<name>.weight_mask', OIHW) and, when torch is
  installed, the same as `mask_torch.pth` (what the reference's scripts load). `mask/`
  comes last, so a round whose `mask/` exists has all three.

  Args:
    round_dir: the round's folder.
    masks: the mask tree.
    policy: which leaves are prunable (only those go into the PyTorch files).
  """
  if sharding.is_chief():
    files.write_npz(paths.mask_torch(round_dir, 'npz'), mask_files.to_pytorch(masks, policy))
    mask_files.save_torch_file(paths.mask_torch(round_dir, 'pth'), masks, policy)
  masks_lib.save(paths.mask_dir(round_dir), masks, overwrite=True)


def has_round_mask(run_dir: str, k: int) -> bool:
  """Whether round k of a run has its mask (see `save_round_mask`)."""
  return os.path.exists(paths.mask_dir(paths.round_dir(run_dir, k)))


def load_round_mask(run_dir: str, k: int) -> Any:
  """The mask of round k of a run (see `save_round_mask`)."""
  return masks_lib.load(paths.mask_dir(paths.round_dir(run_dir, k)))


def load_rewind_point(run_dir: str, start: Mapping[str, Any]) -> dict[str, Any]:
  """The variables a run rewinds to: its saved late-rewinding point, else `start`.

  Args:
    run_dir: an IMP run folder.
    start: the variables round 0 started from (θ_p); also the structure to restore.

  Returns:
    {'params', 'batch_stats'} as numpy trees.
  """
  path = paths.rewind_point(run_dir)
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
  if not os.path.exists(paths.rewind_point(run_dir)):
    return start
  return load_rewind_point(run_dir, per_seed(start)(seed))


def read_round_record(run_dir: str, k: int) -> dict[str, Any] | None:
  """Round k's record, None when the round has not finished.

  A record that a crash cut short counts as missing (with a warning): the round is
  recorded again from its runs, whose finished checkpoints give their results without
  training.
  """
  return files.read_json(paths.round_record(paths.round_dir(run_dir, k)))


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


def round_record(k: int, masks: Any, runs: Sequence[Mapping[str, Any]], metric: str,
                 policy: str | None, seconds: float) -> dict[str, Any]:
  """Round k's record (what `round.json` holds).

  Args:
    k: the round.
    masks: its mask.
    runs: its runs (`run_entry`), the first seed's first.
    metric: the fine-tuning's headline metric.
    policy: which leaves are prunable.
    seconds: fine-tuning time, summed over the runs.

  Returns:
    round, sparsity, the metric's test/val mean and std over the runs, the first run's
    best epoch, num_seeds, sparsity per stage, runs, seconds.
  """
  return {
      'round': k, 'sparsity': masks_lib.sparsity(masks, policy),
      **results.summarize(runs, metric),
      'best_epoch': runs[0]['best_epoch'], 'num_seeds': len(runs),
      **masks_lib.stage_sparsity(masks, policy), 'runs': list(runs), 'seconds': seconds,
  }


def write_round_record(run_dir: str, record: Mapping[str, Any]) -> None:
  """Writes a round's record (chief process), then waits for every process."""
  if sharding.is_chief():
    files.write_json(paths.round_record(paths.round_dir(run_dir, record['round'])), record)
  sharding.sync(f'imp round {record["round"]} of {run_dir}')
