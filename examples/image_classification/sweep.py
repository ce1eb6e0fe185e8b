"""Runs one config over several optimizers and seeds, one training per trajectory and seed.

``config.sweep.optimizers`` and ``config.sweep.seeds`` name the grid. Optimizers that share a
trajectory (a base and its residual variants, with the same learning rate) are one training
(:mod:`examples.common.optimizers`): ``sgdm, rsgdm-scale, rsgdm-sign, rsgdm-topk`` of one seed train
once, in ``<workdir>/views-<base>/seed<seed>``, each view writing
``<workdir>/views-<base>/seed<seed>/<name>/metrics.jsonl``. An optimizer alone on its trajectory
(SignSGD, EF, Adam) keeps ``<workdir>/<optimizer>/seed<seed>``. Seeds are the outer loop, so an
interrupted sweep has whole seeds of every optimizer; rerunning the command skips finished
trainings and resumes the others. A training that diverges (non-finite loss) is reported and the
sweep goes on.
"""

import copy
import logging
import os
import time

import ml_collections

from examples.common import optimizers
from examples.common.metrics import read_metrics
from examples.common.nonfinite import NonFiniteLossError
from examples.image_classification import trainers

logger = logging.getLogger(__name__)


def _learning_rate(config: ml_collections.ConfigDict, name: str) -> float:
  return config.sweep.get("learning_rates", {}).get(name, config.learning_rate)


def run_config(config: ml_collections.ConfigDict, optimizer: str, seed: int):
  """The config of one training of the sweep (learning rate from ``sweep.learning_rates`` if set).

  ``optimizer`` is one name or a comma-separated group of views.
  """
  run = copy.deepcopy(config)
  with run.unlocked():
    run.optimizer = optimizer
    run.seed = seed
    run.learning_rate = _learning_rate(config, optimizer.split(",")[0])
  return run


def trainings(config: ml_collections.ConfigDict) -> list[list[str]]:
  """The sweep's optimizers grouped into trainings: by trajectory, then by learning rate."""
  groups = []
  for group in optimizers.group_by_trajectory(config.sweep.optimizers):
    by_rate: dict[float, list[str]] = {}
    for name in group:
      by_rate.setdefault(_learning_rate(config, name), []).append(name)
    groups.extend(by_rate.values())
  return groups


def training_workdir(workdir: str, group: list[str], seed: int) -> str:
  """Where one training of the sweep lives."""
  if len(group) == 1:
    return os.path.join(workdir, group[0], f"seed{seed}")
  label = f"views-{optimizers.parse_views(group[0])[0].trajectory}"
  return os.path.join(workdir, label, f"seed{seed}")


def run_workdir(workdir: str, optimizer: str, seed: int, group: list[str] | None = None) -> str:
  """Where the records of ``optimizer`` (one view of ``group``, if given) live."""
  group = group or [optimizer]
  base = training_workdir(workdir, group, seed)
  return base if len(group) == 1 else os.path.join(base, optimizer)


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Trains every (seed, training) of the sweep; returns the run workdirs that have metrics.

  A run workdir is one optimizer's (or one view's) folder with its ``metrics.jsonl``.
  """
  done = []
  groups = trainings(config)
  grid = [(seed, group) for seed in config.sweep.seeds for group in groups]
  for index, (seed, group) in enumerate(grid, start=1):
    label = ",".join(group)
    run_dirs = [run_workdir(workdir, name, seed, group) for name in group]
    finished = all(
      (records := read_metrics(d)) and records[-1]["epoch"] == config.num_epochs - 1
      for d in run_dirs
    )
    if finished:
      logger.info("[%d/%d] %s seed %d: already finished.", index, len(grid), label, seed)
      done.extend(run_dirs)
      continue
    started = time.time()
    try:
      by_view = trainers.train_and_evaluate(
        run_config(config, label, seed), training_workdir(workdir, group, seed)
      ).records
      accuracies = ", ".join(f"{name} {by_view[name][-1]['test_accuracy']:.4f}" for name in group)
      logger.info(
        "[%d/%d] seed %d: test accuracy %s after %d epochs, %.0fs.",
        index,
        len(grid),
        seed,
        accuracies,
        len(by_view[group[0]]),
        time.time() - started,
      )
    except NonFiniteLossError as e:
      logger.warning("[%d/%d] %s seed %d diverged: %s", index, len(grid), label, seed, e)
    done.extend(d for d in run_dirs if read_metrics(d))
  return done
