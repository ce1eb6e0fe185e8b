"""Runs one config over several optimizers and seeds, one workdir per run.

``config.sweep.optimizers`` and ``config.sweep.seeds`` name the grid; run ``(optimizer, seed)``
lives in ``<workdir>/<optimizer>/seed<seed>``. Seeds are the outer loop, so an interrupted sweep has
whole seeds of every optimizer; rerunning the command skips finished runs and resumes the others.
A run that diverges (non-finite loss) is reported and the sweep goes on.
"""

import copy
import logging
import os
import time

import ml_collections

from examples.common.metrics import read_metrics
from examples.common.nonfinite import NonFiniteLossError
from examples.image_classification import train

logger = logging.getLogger(__name__)


def run_config(config: ml_collections.ConfigDict, optimizer: str, seed: int):
  """The config of one run of the sweep (learning rate from ``sweep.learning_rates`` if set)."""
  run = copy.deepcopy(config)
  with run.unlocked():
    run.optimizer = optimizer
    run.seed = seed
    rates = config.sweep.get("learning_rates", {})
    if optimizer in rates:
      run.learning_rate = rates[optimizer]
  return run


def run_workdir(workdir: str, optimizer: str, seed: int) -> str:
  return os.path.join(workdir, optimizer, f"seed{seed}")


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Trains every (seed, optimizer) of the sweep; returns the run workdirs that have metrics."""
  done = []
  grid = [(seed, name) for seed in config.sweep.seeds for name in config.sweep.optimizers]
  for index, (seed, name) in enumerate(grid, start=1):
    run_dir = run_workdir(workdir, name, seed)
    records = read_metrics(run_dir)
    if records and records[-1]["epoch"] == config.num_epochs - 1:
      logger.info("[%d/%d] %s seed %d: already finished.", index, len(grid), name, seed)
      done.append(run_dir)
      continue
    started = time.time()
    try:
      records = train.train_and_evaluate(run_config(config, name, seed), run_dir)
      logger.info(
        "[%d/%d] %s seed %d: test accuracy %.4f after %d epochs, %.0fs.",
        index,
        len(grid),
        name,
        seed,
        records[-1]["test_accuracy"],
        len(records),
        time.time() - started,
      )
    except NonFiniteLossError as e:
      logger.warning("[%d/%d] %s seed %d diverged: %s", index, len(grid), name, seed, e)
    if read_metrics(run_dir):
      done.append(run_dir)
  return done
