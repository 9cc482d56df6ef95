"""The resumable fine-tuning loop: `fit` trains, validates, tests and checkpoints one run.

`fit` is the fine-tuning of one IMP round (or one transfer run): it evaluates on 'val'
every epoch and keeps the variables of the best epoch so far (by the task's headline
metric), which it evaluates on 'test' once, after the last epoch (the reported number is
the test metric at the best validation epoch; testing every improvement instead cost an
eighth of a few-shot fine-tune, whose test split outnumbers its training set). It writes
an orbax checkpoint every epoch (and every N steps if asked; `run_checkpoints`), the
best epoch's variables with it, and, called again on the same directory, resumes from
the latest checkpoint and ends bit-identical to an uninterrupted run. A non-finite loss,
parameter or BatchNorm statistic stops it with a `DivergenceError` before anything more
is saved or evaluated.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from lth_jax.errors import DivergenceError
from lth_jax.runtime import scheduler, sharding
from lth_jax.training import reporting, run_checkpoints
from lth_jax.training.evaluators import Evaluator, add_sequentially
from lth_jax.training.optim import Recipe
from lth_jax.training.steps import (NONFINITE, Batch, Objective, StatefulObjective, TrainState,
                                    TrainSteps, check_masks, make_train_steps)


@dataclasses.dataclass
class FitResult:
  """What one fine-tuning run produced.

  Attributes:
    metric: the task's headline metric ('accuracy', 'miou', 'map50', ...).
    best_val: its highest validation value.
    best_epoch: the (1-based) epoch where it was first reached.
    test: its test value after that epoch (the paper's number).
    test_metrics: every test metric of that epoch (e.g. mAP@0.5 and mAP@[.5:.95]).
    history: one dict per epoch: epoch, step, learning_rate, train_<metric>,
      val_<metric> for every evaluator metric, and in the best epoch's, test_<metric>.
    variables: final {'params', 'batch_stats'} (replicated jax arrays).
    rewind_variables: {'params', 'batch_stats'} after `rewind_step` optimizer steps,
      when asked for.
    seconds: the time `fit` spent on the run, summed over every process that trained
      it, each up to the start of its last save (what a killed process did after its
      last checkpoint was done again, and counts once); None from a fine-tune that does
      not time itself.
  """
  metric: str
  best_val: float
  best_epoch: int
  test: float
  test_metrics: dict[str, float]
  history: list[dict[str, float]]
  variables: dict[str, Any]
  rewind_variables: dict[str, Any] | None
  seconds: float | None = None


def _copy(tree: Any) -> Any:
  # A snapshot must not share buffers with a state that the next step donates.
  return jax.tree.map(jnp.copy, tree)


def _begin(manager: ocp.CheckpointManager, steps: TrainSteps, start: tuple[Any, ...],
           state: TrainState, *, checkpoint_dir: str, carry_from: str | None,
           rewind_step: int | None, metric: str
           ) -> tuple[TrainState, dict[str, Any], Any | None, Any | None]:
  """The state, meta, rewind point and untested best variables that a run starts from.

  They are the latest checkpoint's in `manager`; else `state` (fresh from `start`), or
  `start` with the optimizer state of `carry_from`'s last checkpoint.
  """
  rewind = best = None
  if manager.latest_step() is None:
    meta = run_checkpoints.fresh_meta()
    if carry_from is not None:
      carry = run_checkpoints.final_state(carry_from, state, steps.mesh, metric)
      state = steps.init(*start, carry=carry)
  else:
    state, meta, rewind, best = run_checkpoints.restore(manager, state, steps.mesh, metric)
    logging.info('Resuming %s at epoch %d, step %d.', checkpoint_dir, meta['epoch'],
                 meta['step'])
    scheduler.resumed_part_way()
    if rewind is None and rewind_step is not None and rewind_step < meta['step']:
      raise ValueError(f'{checkpoint_dir} holds a run without rewind_step={rewind_step} '
                       f'that is past that step; use a new checkpoint_dir.')
  if rewind_step == 0 and rewind is None:
    rewind = _copy(state.variables)
  return state, meta, rewind, best


@dataclasses.dataclass
class _Loop:
  """The epochs of one `fit` call: it advances `state`, `meta` and `rewind`, and saves them.

  `step` is the last step trained; `meta['step']` that of the last save. `best` holds
  the variables of the best epoch so far while they are untested (`meta['test_pending']`),
  on the host.
  """
  steps: TrainSteps
  manager: ocp.CheckpointManager
  checkpoint_dir: str
  masks: Any | None
  steps_per_epoch: int
  rewind_step: int | None
  checkpoint_every_steps: int | None
  report_progress: reporting.LogProgress
  state: TrainState
  meta: dict[str, Any]
  rewind: Any | None
  best: Any | None
  started: float  # when this process's `fit` began

  def __post_init__(self):
    self.step = self.meta['step']
    self.seconds_before = self.meta['seconds']  # earlier processes' time on the run

  def train_epoch(self, epoch: int, train_batches: Callable[[int, int], Iterable[Batch]]
                  ) -> None:
    """Trains the (0-based) `epoch` from `step` on, checkpointing within it if asked."""
    first = self.step - epoch * self.steps_per_epoch
    batches = iter(train_batches(epoch, first))
    pending = []
    for i in range(first, self.steps_per_epoch):
      batch = next(batches, None)
      if batch is None:
        raise ValueError(f'train_batches({epoch}, {first}) yielded {i - first} batches; '
                         f'steps_per_epoch={self.steps_per_epoch} needs '
                         f'{self.steps_per_epoch - first}.')
      self.state, metrics = self.steps.train(self.state, self.masks,
                                             sharding.shard_batch(batch, self.steps.mesh))
      pending.append(metrics)
      self.step += 1
      if self.step == self.rewind_step:
        self.rewind = _copy(self.state.variables)
      self.report_progress(self.step)
      every = self.checkpoint_every_steps
      if every and self.step % every == 0 and i + 1 < self.steps_per_epoch:
        self._absorb(pending, epoch)
        self._checkpoint()
    self._absorb(pending, epoch)

  def _absorb(self, pending: list[dict[str, jax.Array]], epoch: int) -> None:
    """Adds up the metrics of the steps since the last absorb.

    It runs before every save, so that a non-finite step raises `DivergenceError` while
    the last checkpoint is still finite.
    """
    metrics = jax.device_get(pending)
    for i, item in enumerate(metrics):
      if item.pop(NONFINITE):
        bad = self.step - len(metrics) + i + 1
        raise DivergenceError(self.checkpoint_dir, epoch=epoch + 1, step=bad,
                              learning_rate=float(self.steps.schedule(bad - 1)))
    add_sequentially(self.meta['train_sums'], metrics)
    pending.clear()

  def _checkpoint(self) -> None:
    self.meta.update(step=self.step, has_rewind=self.rewind is not None,
                     seconds=self.seconds_before + time.monotonic() - self.started)
    run_checkpoints.save(self.manager, self.state, self.meta, self.rewind, self.best)

  def end_epoch(self, epoch: int, num_epochs: int, evaluator: Evaluator, metric: str,
                writer: reporting.Writer | None) -> None:
    """Records the (0-based) `epoch` that `train_epoch` ended, saves and reports it."""
    record = {'epoch': epoch + 1, 'step': self.step,
              'learning_rate': float(self.steps.schedule(self.step - 1)),
              **{f'train_{k}': v / self.steps_per_epoch
                 for k, v in self.meta['train_sums'].items()}}
    with self.report_progress.timed('eval'):
      record.update(self._validate(evaluator, metric))
    self.meta['history'].append(record)
    self.meta.update(epoch=epoch + 1, train_sums={})
    if epoch + 1 == num_epochs:  # tested before the last save, which then keeps the test
      self.test_best(evaluator, writer)
    self._checkpoint()
    logging.info('Epoch %d/%d: %s', epoch + 1, num_epochs, record)
    if writer is not None:
      writer.write_scalars(self.step,
                           {k: v for k, v in record.items() if k not in ('epoch', 'step')})
      writer.flush()

  def _validate(self, evaluator: Evaluator, metric: str) -> dict[str, float]:
    """Validates; an improvement keeps the variables (untested) as the best in `meta`."""
    val = evaluator(self.state.variables, 'val')
    if metric not in val:
      raise ValueError(f'The evaluator returned {sorted(val)}, not the headline metric '
                       f'{metric!r}.')
    if self.meta['best_val'] is None or val[metric] > self.meta['best_val']:
      # A host copy: no device memory held for the run, no buffer shared with the state
      # the next step donates.
      self.best = jax.tree.map(np.array, jax.device_get(self.state.variables))
      self.meta.update(best_val=val[metric], best_epoch=self.meta['epoch'] + 1,
                       test_metrics={}, test_pending=True)
    return {f'val_{k}': v for k, v in val.items()}

  def test_best(self, evaluator: Evaluator, writer: reporting.Writer | None) -> None:
    """Tests the best epoch's variables if they are untested: the metrics go to `meta`,
    to that epoch's record and, at its step, to `writer`."""
    if not self.meta['test_pending']:
      return
    with self.report_progress.timed('eval'):
      test = dict(evaluator(sharding.replicate(self.best, self.steps.mesh), 'test'))
    record = self.meta['history'][self.meta['best_epoch'] - 1]
    tested = {f'test_{k}': v for k, v in test.items()}
    record.update(tested)
    self.meta.update(test_metrics=test, test_pending=False)
    self.best = None
    logging.info('Test at the best validation epoch (%d): %s', record['epoch'], tested)
    if writer is not None:
      writer.write_scalars(record['step'], tested)
      writer.flush()

  def result(self, metric: str) -> FitResult:
    meta = self.meta
    return FitResult(metric=metric, best_val=meta['best_val'], best_epoch=meta['best_epoch'],
                     test=meta['test_metrics'][metric], test_metrics=meta['test_metrics'],
                     history=meta['history'], variables=self.state.variables,
                     rewind_variables=self.rewind, seconds=meta['seconds'])


def fit(model: nn.Module, variables: Mapping[str, Any], masks: Any | None, recipe: Recipe, *,
        train_batches: Callable[[int, int], Iterable[Batch]], steps_per_epoch: int,
        checkpoint_dir: str, evaluator: Evaluator, metric: str,
        objective: Objective | StatefulObjective, mesh: Mesh | None = None,
        is_head: Callable[[str], bool] | None = None,
        writer: reporting.Writer | None = None,
        checkpoint_every_steps: int | None = None, rewind_step: int | None = None,
        rng: jax.Array | None = None, carry_from: str | None = None,
        async_checkpoints: bool | None = None) -> FitResult:
  """Fine-tunes masked `variables` for `recipe.num_epochs` epochs, resumably.

  Args:
    model: the Flax model.
    variables: initial {'params', 'batch_stats'} (pruned entries are zeroed here too).
    masks: bool pytree parallel to params (all-True leaves are not pruned), or None
      for dense training. Pass all-True masks rather than None for a dense round of
      an IMP run, so that every round shares one compiled step.
    recipe: the optimizer recipe, including num_epochs.
    train_batches: (epoch, start_step) -> this host's training batches of that
      (0-based) epoch from step `start_step` on; the same arguments must give the
      same batches for resuming to be exact.
    steps_per_epoch: batches `train_batches` yields per epoch.
    checkpoint_dir: where the run's checkpoints live; an existing run there resumes.
    evaluator: (variables, split) -> named metrics on 'val' or 'test'.
    metric: the headline metric of `evaluator` that picks the best epoch (higher: better).
    objective: the training loss (an `Objective` or a `StatefulObjective`).
    mesh: the device mesh; all devices by default.
    is_head: top-level parameter name -> whether it is the head's (for
      `Recipe.head_lr_scale`).
    writer: optional metric writer (`reporting.metric_writer`) for per-epoch scalars and
      steps/s.
    checkpoint_every_steps: also checkpoint every this many steps within an epoch.
    rewind_step: also return the variables after this many steps (0 gives the
      initial, masked variables): the late-rewinding point.
    rng: PRNG key of the objective's state (on-device augmentation, dropout); key(0)
      if None.
    carry_from: checkpoint_dir of an earlier run (the previous IMP round) whose final
      optimizer state, and what the objective keeps of its state, this run starts
      from instead of fresh ones (the reference's carry-over between rounds).
    async_checkpoints: write checkpoints in the background while training goes on
      (None: on accelerators, where the host is otherwise idle; on CPU the writes would
      compete with the steps for the same cores). Every write has finished when `fit`
      returns or raises.

  Returns:
    The `FitResult`.

  Raises:
    DivergenceError: the loss, params or BatchNorm statistics became non-finite; it is
      raised before the next checkpoint, so the last one saved is finite, and it names
      the epoch, the step and its learning rate.
    NoSpaceError: the disk filled up while a checkpoint was written; the checkpoints
      before it are whole, and calling `fit` again (with space freed) resumes from them.
  """
  started = time.monotonic()
  if masks is not None:
    check_masks(variables['params'], masks)
  total_steps = recipe.num_epochs * steps_per_epoch
  if rewind_step is not None and not 0 <= rewind_step <= total_steps:
    raise ValueError(f'rewind_step must be in [0, {total_steps}] (the run\'s steps), '
                     f'got {rewind_step}.')
  steps = make_train_steps(model, recipe, steps_per_epoch, mesh, objective=objective,
                           is_head=is_head)
  masks = None if masks is None else sharding.replicate(masks, steps.mesh)
  start = (sharding.replicate(variables['params'], steps.mesh),
           sharding.replicate(variables['batch_stats'], steps.mesh), masks, rng)
  state = steps.init(*start)
  with run_checkpoints.opened(checkpoint_dir, async_checkpoints) as manager:
    state, meta, rewind, best = _begin(manager, steps, start, state,
                                       checkpoint_dir=checkpoint_dir, carry_from=carry_from,
                                       rewind_step=rewind_step, metric=metric)
    loop = _Loop(steps, manager, checkpoint_dir, masks, steps_per_epoch, rewind_step,
                 checkpoint_every_steps, reporting.LogProgress(total_steps, writer),
                 state, meta, rewind, best, started)
    for epoch in range(meta['epoch'], recipe.num_epochs):
      loop.train_epoch(epoch, train_batches)
      loop.end_epoch(epoch, recipe.num_epochs, evaluator, metric, writer)
    # Untested still when no epoch was left to run (a run resumed with fewer epochs).
    loop.test_best(evaluator, writer)
    return loop.result(metric)
