"""Paper mode's upstream experiments: θ_p and upstream tickets of each pre-training.

    sub = paper_upstream.upstream_config(config, 'moco')   # the upstream config it runs
    subs = paper_upstream.experiments(config)               # their specs, in `paper.Spec`
    tickets, thetas = paper_upstream.tickets(experiment, workdir, mesh)

Each pre-training of `config.paper.pretrainings` is an upstream experiment (mode
'upstream', in `<workdir>/upstream/<pretraining>/`) made from its `:demo` recipe
(`lth_jax.experiments.presets.upstream_imp`, what configs/<objective>_imp.py:demo
gives), sized by the paper config; its every `paper.transfer_every`-th ticket is
transferred (see `lth_jax.experiments.paper`). Each one's config is checked with the
paper config (`validate`) and its specs built once from it (`experiments`), with the
paper experiment's (`lth_jax.experiments.specs`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import ml_collections
from jax.sharding import Mesh

from lth_jax import errors
from lth_jax.experiments import config as config_lib
from lth_jax.experiments import presets, sources, specs, upstream, wiring
from lth_jax.lottery import rounds
from lth_jax.runtime import console, paths


# Where paper mode's pre-trainings get their θ_p (`config.pretrained.source`).
THETA_P_SOURCES = ('pretrain', 'released')


def upstream_config(config: ml_collections.ConfigDict,
                    objective: str) -> ml_collections.ConfigDict:
  """The upstream experiment of one pre-training, sized by the paper config.

  Args:
    config: the paper config.
    objective: an objective with an upstream recipe (`presets.UPSTREAM`).

  Returns:
    The objective's `:demo` upstream config (its batch size) with this config's dataset,
    model, seed, device count, rounds and epochs; with `pretrained.source='released'`,
    θ_p is the objective's shipped one (`lth_jax.released`) instead of pre-trained.
  """
  sub = presets.upstream_imp(objective, 'demo')
  sub.seed, sub.num_devices = config.seed, config.num_devices
  # The backbone only: a downstream task's model settings (a DeepLab's) are not upstream's.
  sub.model.update({k: config.model[k] for k in config_lib.MODEL_FIELDS})
  sub.pretrain.dataset = sub.data.dataset = config.pretrain.dataset
  # The upstream batch size is the recipe's: a small downstream task's batch would
  # starve the contrastive objectives of negatives.
  sub.data.update(data_dir=config.data.data_dir, eval_batch_size=config.data.eval_batch_size,
                  pipeline=config.data.pipeline)
  sub.pretrain.optim.num_epochs = config.pretrain.optim.num_epochs
  sub.optim.num_epochs = config.paper.upstream_epochs
  sub.imp.update(num_rounds=config.imp.num_rounds, fraction=config.imp.fraction,
                 policy=config.imp.policy)
  sub.checkpoint_every_steps = config.checkpoint_every_steps
  if config.pretrained.source == 'released':  # each pre-training's θ_p as lth_jax ships it
    sub.pretrained.update(source='released', path=objective)
  return sub


def experiments(config: ml_collections.ConfigDict) -> dict[str, specs.Experiment]:
  """The specs of each pre-training's upstream experiment (`upstream_config`'s).

  Args:
    config: the paper config (`validate` has checked the upstream configs).

  Returns:
    pretraining -> its upstream experiment, in the order of `config.paper.pretrainings`.
  """
  return {objective: specs.build(upstream_config(config, objective))
          for objective in config_lib.split_names(config.paper.pretrainings)}


def tickets(experiment: specs.Experiment, workdir: str,
            mesh: Mesh) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
  """Runs (or reads back) each pre-training's upstream IMP.

  Args:
    experiment: the paper experiment (its section a `paper.Spec`).
    workdir: the paper experiment's workdir.
    mesh: the device mesh.

  Returns:
    (pretraining -> {ticket name -> mask} of the tickets to transfer, pretraining -> θ_p
    variables), in the order of `paper.pretrainings`.
  """
  chosen_tickets, thetas = {}, {}
  every = experiment.section.transfer_every
  for objective, sub in experiment.section.upstream.items():
    subdir = paths.upstream_dir(workdir, objective)
    console.say(f'== Pre-training {objective}: θ_p and upstream IMP in {subdir}')
    out = upstream.run(sub, subdir, mesh)
    chosen = [r['round'] for r in out['records']][every - 1::every]
    chosen_tickets[objective] = {paths.round_name(k): rounds.load_round_mask(out['run_dir'], k)
                                 for k in chosen}
    thetas[objective] = out['start']
  return chosen_tickets, thetas


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails unless every pre-training has a recipe and its upstream config is valid.

  Raises:
    ConfigError: naming `paper.pretrainings`, or the upstream experiment that fails.
  """
  names = config_lib.split_names(config.paper.pretrainings)
  if not names or not set(names) <= set(presets.UPSTREAM):
    config_lib.fail('paper.pretrainings', config.paper.pretrainings,
                    'a comma-separated list of objectives with an upstream recipe '
                    f'(configs/<objective>_imp.py): some of {tuple(presets.UPSTREAM)}.')
  if config.pretrained.source not in THETA_P_SOURCES:
    config_lib.fail('pretrained.source', config.pretrained.source,
                    "each pre-training's θ_p is pre-trained in its upstream experiment "
                    "('pretrain') or the one lth_jax ships ('released', lth_jax.released).")
  for objective in names:
    with _naming(objective):
      config_lib.validate(upstream_config(config, objective))


def load_inputs(experiment: specs.Experiment) -> dict[str, str]:
  """Checks each upstream experiment's devices and loads its θ_p, before the claim.

  Their batch size is their recipe's, which `experiments.run`'s own mesh check does not
  see; their θ_p files (released ones) are read and checked as `experiments.run` checks
  an experiment's own.

  Args:
    experiment: the paper experiment (its section a `paper.Spec`).

  Returns:
    Fingerprints of the files read: {'upstream.<pretraining>.pretrained.path': SHA-256}.

  Raises:
    ConfigError: naming the upstream experiment, its batch size and the device count.
    CheckpointError: a θ_p file is missing, changed or does not fit.
  """
  inputs = {}
  for objective, sub in experiment.section.upstream.items():
    with _naming(objective):
      wiring.mesh_for(sub)
    loaded = sources.get(sub.pretrained.source).load(
        sub.pretrained, lambda sub=sub: upstream.build_model(sub))
    inputs.update({f'upstream.{objective}.{k}': v for k, v in loaded.items()})
  return inputs


@contextlib.contextmanager
def _naming(objective: str) -> Iterator[None]:
  """A check of an upstream experiment, whose ConfigError names the experiment."""
  try:
    yield
  except errors.ConfigError as e:
    raise errors.ConfigError(
        f'The upstream experiment of {objective!r} (paper.pretrainings) fails: {e} '
        f'(It is configs/{objective}_imp.py:demo with this config\'s model, seed, '
        'num_devices, pretrain.dataset as its dataset, imp.num_rounds, imp.fraction, '
        'pretrain.optim.num_epochs, and paper.upstream_epochs as its optim.num_epochs; '
        "the rest, its batch size included, is the recipe's.)") from None
