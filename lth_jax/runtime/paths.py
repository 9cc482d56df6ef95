"""The layout of a workdir: every folder and file name the engines write is spelled here.

The rest of the package asks these functions for paths and never spells a name itself,
so the layout can be read (and changed) in one place (open_lth's `foundations/paths.py`
is the model). An IMP run and a set of transfer runs look like:

    RUN/                        an IMP run (`lth_jax.lottery.run_imp`)
      rewind_point/             the late-rewinding point θ_k (imp.rewind='step')
      round_XX/                 round XX (two digits)
        mask/                   m_XX (orbax; `lth_jax.masks.load`)
        mask_torch.npz          m_XX in the reference's PyTorch format
        mask_torch.pth          the same, saved by torch.save (when torch is installed)
        round.json              the round's record, written last
        seed_S/                 the fine-tuning checkpoints of seed S
          final_variables/      its final variables (imp.rewind_scope='prunable')
        seed_S_tensorboard/     its TensorBoard events
    WORKDIR/transfer/TASK/      transfer runs on a task (`lth_jax.lottery.run_transfer`)
      TICKET/seed_S/train/      the fine-tuning checkpoints of a ticket and seed
      TICKET/seed_S/result.json its result, written last
    WORKDIR/transfer/**/seed_S/  (every transfer run: `transfer_runs_glob`)
    WORKDIR/pretrain/variables  θ_p pre-trained in the workdir (its checkpoints: train/)
    WORKDIR/upstream/OBJECTIVE/ paper mode's upstream experiment of one pre-training
    WORKDIR/random_masks/NAME/  paper mode's random baselines (NAME: <method>_<ticket>)
    WORKDIR/theta_p.json        upstream mode's θ_p metric (the plot's dense line); pretrain
                                mode's record of θ_p (metrics, format, SHA-256)
    WORKDIR/theta_p.npz         pretrain mode's θ_p as a released checkpoint
    WORKDIR/results[_S].csv/.json  a mode's table (S: a dataset or task), and its plot
    WORKDIR/METRIC_vs_sparsity[_S].png
    WORKDIR/extreme_sparsity.csv/.json, verdict.txt  paper mode's summary
    WORKDIR/experiment.json     the config that owns the workdir, and its environment
    WORKDIR/inputs.json         fingerprints of its input files
    WORKDIR/diverged.json       one entry per diverged run, whose checkpoints are moved
    WORKDIR/diverged/N/...      under the same relative path
    WORKDIR/analysis/           the analysis of the runs (report, plots)
      runs/round_XX/KIND/size_X/seed_S/  the fine-tunes of a perturbation sweep
      runs/round_XX/lmc/        the fine-tunes of a linear mode connectivity study

Every function only joins names: none reads the disk. The globs (`*_glob`) match
folders relative to a workdir, for the resume rules (`lth_jax.runtime.workdir`).
"""

from __future__ import annotations

import os
import re

# A round's folder name is its index on two digits (more when a run has 100 rounds).
_ROUND_NAME = 'round_{:02d}'
_ROUND_PATTERN = re.compile(r'round_(\d+)')
_SEED_NAME = 'seed_{}'
_ROUND_GLOB, _SEED_GLOB = 'round_*', 'seed_*'
MASK = 'mask'
MASK_TORCH = 'mask_torch'
ROUND_RECORD = 'round.json'
REWIND_POINT = 'rewind_point'
FINAL_VARIABLES = 'final_variables'
TRANSFER = 'transfer'
TRANSFER_RESULT = 'result.json'
# The checkpoints of a run whose folder holds more than them (a transfer run, θ_p).
CHECKPOINTS = 'train'
DIVERGED_FILE = 'diverged.json'
DIVERGED_DIR = 'diverged'
# A workdir's claim by one experiment (`lth_jax.runtime.workdir`).
EXPERIMENT_FILE = 'experiment.json'
INPUTS_FILE = 'inputs.json'
# θ_p pre-trained once in the workdir (`lth_jax.experiments.wiring.pretrain_once`).
_PRETRAIN = 'pretrain'
_PRETRAIN_VARIABLES = 'variables'
# What `lth_jax.analyze` and the sensitivity mode write beside the runs.
ANALYSIS_DIR = 'analysis'
_ANALYSIS_RUNS = 'runs'
_SIZE_NAME = 'size_{:g}'
_TENSORBOARD_SUFFIX = '_tensorboard'
_LMC = 'lmc'
# Paper mode: its upstream experiments, its random baselines' masks, its summary.
_UPSTREAM = 'upstream'
_RANDOM_MASKS = 'random_masks'
_EXTREME_SPARSITY = 'extreme_sparsity'
_VERDICT = 'verdict.txt'
# Upstream mode: θ_p's own metric; pretrain mode: θ_p's record and released checkpoint.
_THETA_P_METRIC = 'theta_p.json'
_RELEASED_CHECKPOINT = 'theta_p.npz'
# A mode's table of results (csv and json) and its plot.
_RESULTS = 'results'
_PLOT = '{}_vs_sparsity{}.png'
_PAPER_TABLE = 'table_{}.md'


def round_name(k: int) -> str:
  """The folder name of round k: 'round_03'."""
  return _ROUND_NAME.format(k)


def round_index(round_dir: str) -> int | None:
  """The index of a round folder ('.../round_03' -> 3), None for another folder.

  Only for discovering the rounds a workdir holds (`lth_jax.analysis`); the engines are
  handed their rounds and never parse a folder name.
  """
  found = _ROUND_PATTERN.fullmatch(os.path.basename(os.path.normpath(round_dir)))
  return int(found[1]) if found else None


def round_dir(run_dir: str, k: int) -> str:
  """The folder of round k of an IMP run."""
  return os.path.join(run_dir, round_name(k))


def round_masks_glob(root: str) -> str:
  """A recursive glob pattern matching the mask folder of every round under `root`."""
  return os.path.join(root, '**', _ROUND_GLOB, MASK)


def imp_runs_glob() -> str:
  """The checkpoint folders of every IMP run's seeds, relative to the workdir
  ('*/round_*/seed_*')."""
  return os.path.join('*', _ROUND_GLOB, _SEED_GLOB)


def transfer_runs_glob(task: str | None = None) -> str:
  """The folders of every transfer run, relative to the workdir ('transfer/**/seed_*'),
  or of those on one task of paper mode ('transfer/<task>/**/seed_*')."""
  return os.path.join(TRANSFER, *([task] if task else []), '**', _SEED_GLOB)


def any_runs_glob() -> str:
  """The folder of every run of any engine, relative to the workdir ('**/seed_*')."""
  return os.path.join('**', _SEED_GLOB)


def pretrain_globs() -> tuple[str, ...]:
  """θ_p's checkpoints and variables pre-trained in any workdir below, relative to it."""
  return (os.path.join('**', _PRETRAIN, CHECKPOINTS),
          os.path.join('**', _PRETRAIN, _PRETRAIN_VARIABLES))


def seed_dir(parent: str, seed: int) -> str:
  """The folder of seed `seed` inside a round (its checkpoints) or a ticket's runs."""
  return os.path.join(parent, _SEED_NAME.format(seed))


def round_record(round_dir_: str) -> str:
  """A round's record (`round.json`), written when every run of the round finished."""
  return os.path.join(round_dir_, ROUND_RECORD)


def mask_dir(round_dir_: str) -> str:
  """A round's mask, in this project's format (an orbax folder)."""
  return os.path.join(round_dir_, MASK)


def mask_torch(round_dir_: str, extension: str) -> str:
  """A round's mask in the reference's PyTorch format: extension 'npz' or 'pth'."""
  return os.path.join(round_dir_, f'{MASK_TORCH}.{extension}')


def rewind_point(run_dir: str) -> str:
  """The late-rewinding point of an IMP run (imp.rewind='step')."""
  return os.path.join(run_dir, REWIND_POINT)


def final_variables(seed_dir_: str) -> str:
  """A seed's final variables of a round, kept when the next round continues from them."""
  return os.path.join(seed_dir_, FINAL_VARIABLES)


def tensorboard_dir(checkpoint_dir: str) -> str:
  """The TensorBoard folder beside a run's checkpoint folder."""
  return checkpoint_dir.rstrip('/') + _TENSORBOARD_SUFFIX


def transfer_dir(workdir: str, *names: str) -> str:
  """The folder of transfer runs, e.g. transfer_dir(workdir, task, pretraining)."""
  return os.path.join(workdir, TRANSFER, *names)


def transfer_result(run_dir: str, ticket: str, seed: int) -> str:
  """The result of a ticket's transfer run with one seed, written when it finished."""
  return os.path.join(seed_dir(os.path.join(run_dir, ticket), seed), TRANSFER_RESULT)


def transfer_checkpoints(run_dir: str, ticket: str, seed: int) -> str:
  """The fine-tuning checkpoints of a ticket's transfer run with one seed."""
  return os.path.join(seed_dir(os.path.join(run_dir, ticket), seed), CHECKPOINTS)


def analysis_dir(workdir: str) -> str:
  """Where the analysis of a workdir's runs goes by default."""
  return os.path.join(workdir, ANALYSIS_DIR)


def analysis_runs_dir(workdir: str, k: int) -> str:
  """The fine-tunes that the analysis of round k of a workdir's run trains."""
  return round_dir(os.path.join(analysis_dir(workdir), _ANALYSIS_RUNS), k)


def perturbation_dir(root: str, kind: str, size: float) -> str:
  """The runs of one kind and size of a perturbation sweep (one seed_S each)."""
  return os.path.join(root, kind, _SIZE_NAME.format(size))


def lmc_dir(root: str) -> str:
  """The fine-tunes of a linear mode connectivity study, under a round's analysis runs."""
  return os.path.join(root, _LMC)


def upstream_dir(workdir: str, objective: str) -> str:
  """Paper mode's upstream experiment (a workdir of its own) of one pre-training."""
  return os.path.join(workdir, _UPSTREAM, objective)


def random_mask(workdir: str, name: str) -> str:
  """A random baseline's mask kept by paper mode ('<method>_<ticket>'; orbax)."""
  return os.path.join(workdir, _RANDOM_MASKS, name)


def theta_p_metric(workdir: str) -> str:
  """Upstream mode's record of θ_p's own metric (pretrain mode's of θ_p)."""
  return os.path.join(workdir, _THETA_P_METRIC)


def released_checkpoint(workdir: str) -> str:
  """Pretrain mode's θ_p as a released checkpoint."""
  return os.path.join(workdir, _RELEASED_CHECKPOINT)


def results_table(workdir: str, suffix: str = '') -> str:
  """A mode's table of results, without extension (.csv and .json are written)."""
  return os.path.join(workdir, _RESULTS + suffix)


def results_plot(workdir: str, metric_file: str, suffix: str = '') -> str:
  """A mode's plot of the headline metric against sparsity."""
  return os.path.join(workdir, _PLOT.format(metric_file, suffix))


def extreme_sparsity_table(workdir: str) -> str:
  """Paper mode's extreme matching sparsities, without extension (.csv and .json)."""
  return os.path.join(workdir, _EXTREME_SPARSITY)


def paper_table(workdir: str, task: str) -> str:
  """Paper mode's table of one task in the paper's layout (markdown)."""
  return os.path.join(workdir, _PAPER_TABLE.format(task))


def verdict_file(workdir: str) -> str:
  """Paper mode's verdict, one line per task."""
  return os.path.join(workdir, _VERDICT)


def pretrain_variables(workdir: str) -> str:
  """θ_p pre-trained in the workdir, kept once it is trained."""
  return os.path.join(workdir, _PRETRAIN, _PRETRAIN_VARIABLES)


def pretrain_checkpoints(workdir: str) -> str:
  """The checkpoints of the pre-training of θ_p in the workdir."""
  return os.path.join(workdir, _PRETRAIN, CHECKPOINTS)


def diverged_record(workdir: str) -> str:
  """The list of a workdir's diverged runs (`diverged.json`)."""
  return os.path.join(workdir, DIVERGED_FILE)


def diverged_dir(workdir: str, n: int) -> str:
  """Where the n-th diverged run's checkpoints are moved, under their relative path."""
  return os.path.join(workdir, DIVERGED_DIR, str(n))
