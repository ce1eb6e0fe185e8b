"""The run skeleton every example family shares: resume, records, checkpoints, progress, stops.

A family's ``train.py`` keeps what is its own (model, data, loss, evaluation) and hands the loop
two functions:

* ``train_epoch(state, epoch) -> (state, fields)``: one pass over the training data. ``fields``
  (``step``, ``lr``, running losses, ...) go into every view's record. Use :class:`StepLosses` for
  the progress bar and the non-finite stop.
* ``evaluate(state, epoch, history) -> (state, {view name: (metrics, model)})``: each view's
  metrics and the model to ship (``None``: nothing to ship this epoch); ``history`` holds each
  view's records so far (the LM trigger reads its validation losses). It may change the state (the
  LM switches averaging on).

:func:`run` then does, once for all families:

* the config record (``config.json``; with several views also ``<workdir>/<name>/config.json``,
  whose ``optimizer`` is that view's name, so reports read both layouts alike);
* resume from the newest readable checkpoint (an unreadable newer one is named, set aside and
  skipped; none readable stops the run saying what to do); each view's ``metrics.jsonl`` is cut back
  to the restored epoch;
* per view ``metrics.jsonl`` and TensorBoard scalars (one view: in ``<workdir>``, as before;
  several: in ``<workdir>/<name>/``);
* one Orbax checkpoint per ``checkpoint_every`` epochs holding the shared ``state`` and each view's
  shippable model (item ``model``, or ``model-<name>`` with several views);
* Orbax's INFO lines filtered out of the logs, and every writer closed on every exit path (a
  non-finite loss, an error, ``KeyboardInterrupt``).
"""

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from examples.common.checkpoint import Checkpointer, NoReadableCheckpointError, abstract_like
from examples.common.metrics import (
  MetricsWriter,
  RunIOError,
  atomic_write_text,
  reporting_io_errors,
)
from examples.common.nonfinite import NonFiniteLossError, check_losses
from examples.common.report import CONFIG_FILE
from examples.common.views import View

logger = logging.getLogger(__name__)

Record = dict[str, Any]


# What a user can cause (a diverged run, no readable checkpoint, a bad config value, missing or
# corrupt data): each family's main.py prints the message, which says what to do, not a traceback.
USER_ERRORS = (
  NonFiniteLossError,
  NoReadableCheckpointError,
  ValueError,
  FileNotFoundError,
  RunIOError,
)


class _DropOrbaxInfo(logging.Filter):
  """Drops Orbax's records below WARNING (dozens of INFO lines per save), keeps everything else."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


_FILTER = _DropOrbaxInfo()


def silence_orbax_info() -> None:
  """Filters Orbax's INFO lines out of the absl and root loggers (idempotent)."""
  for name in ("absl", "orbax", ""):
    target = logging.getLogger(name)
    if _FILTER not in target.filters:
      target.addFilter(_FILTER)


class StepLosses:
  """An epoch's per-step losses (and other per-step values), checked every few steps.

  Keeps the device arrays and syncs with the host once per ``check_every`` steps, where it raises
  :class:`~examples.common.nonfinite.NonFiniteLossError` on a NaN/inf loss and moves the tqdm bar.

  Args:
    epoch: named in the progress bar and in the error.
    first_step: global step of the first loss.
    total: steps expected this epoch (for the bar; ``None`` if unknown).
    check_every: steps between host syncs.
    progress_bar: show the tqdm bar.
  """

  def __init__(
    self,
    epoch: int,
    first_step: int,
    total: int | None,
    *,
    check_every: int = 50,
    progress_bar: bool = True,
  ):
    self.epoch, self.first_step, self.total = epoch, first_step, total
    self.check_every = max(1, int(check_every))
    self.losses: list[Any] = []
    self.extras: dict[str, list[Any]] = {}
    self._checked = 0
    self._bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not progress_bar, leave=False)

  def add(self, loss: Any, **extras: Any) -> None:
    self.losses.append(loss)
    for key, value in extras.items():
      self.extras.setdefault(key, []).append(value)
    if len(self.losses) - self._checked >= self.check_every or len(self.losses) == self.total:
      self._check()

  def _check(self) -> None:
    new = np.asarray(jax.device_get(self.losses[self._checked :]))
    if new.size:
      check_losses(new, epoch=self.epoch, first_step=self.first_step + self._checked)
      self._bar.set_postfix(loss=f"{float(new[-1]):.4f}")
      self._bar.update(len(new))
    self._checked = len(self.losses)

  def finish(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Checks the remaining losses, closes the bar; returns all losses and extras as arrays."""
    try:
      self._check()
    finally:
      self._bar.close()
    extras = {k: np.asarray(jax.device_get(v)) for k, v in self.extras.items()}
    return np.asarray(jax.device_get(self.losses)), extras

  def __enter__(self) -> "StepLosses":
    return self

  def __exit__(self, *exc: object) -> None:
    self._bar.close()


def view_workdir(workdir: str, views: Sequence[View], view: View) -> str:
  """Where a view's records go: ``workdir`` itself for one view, ``<workdir>/<name>`` for several."""
  return workdir if len(views) == 1 else os.path.join(workdir, view.name)


def model_item(views: Sequence[View], view: View) -> str:
  """The checkpoint item holding a view's shippable model."""
  return "model" if len(views) == 1 else f"model-{view.name}"


def _atomic_json(path: str, data: Any) -> None:
  directory = os.path.dirname(path) or "."
  with reporting_io_errors(directory):
    os.makedirs(directory, exist_ok=True)
  atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def write_config(config: ml_collections.ConfigDict, workdir: str, views: Sequence[View]) -> None:
  """``config.json`` in ``workdir``, and with several views one per view folder."""
  record = config.to_dict()
  _atomic_json(os.path.join(workdir, CONFIG_FILE), record)
  if len(views) > 1:
    for view in views:
      _atomic_json(
        os.path.join(view_workdir(workdir, views, view), CONFIG_FILE),
        {**record, "optimizer": view.name, "views": [v.name for v in views]},
      )


@dataclasses.dataclass
class RunResult:
  """What :func:`run` returns: the final state and each view's records (all epochs so far)."""

  state: Any
  records: dict[str, list[Record]]
  resumed_from: int | None


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  views: Sequence[View],
  state: Any,
  train_epoch: Callable[[Any, int], tuple[Any, Mapping[str, Any]]],
  evaluate: Callable[
    [Any, int, Mapping[str, list[Record]]], tuple[Any, Mapping[str, tuple[Mapping, Any]]]
  ],
  num_epochs: int,
  checkpoint_every: int = 1,
  log_fields: Sequence[str] = (),
) -> RunResult:
  """Trains from the newest readable checkpoint in ``workdir`` (or from ``state``) to ``num_epochs``.

  ``state`` is the initial training state (a pytree of arrays; it is also the template the
  checkpoint is restored into). See the module docstring for ``train_epoch`` and ``evaluate``.
  """
  silence_orbax_info()
  primary = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if primary:
    write_config(config, workdir, views)
  with contextlib.ExitStack() as stack:
    checkpointer = stack.enter_context(Checkpointer(os.path.join(workdir, "checkpoints")))
    latest, restored = checkpointer.restore_newest_readable({"state": abstract_like(state)})
    if latest is not None:
      state = restored["state"]
      logger.info("Resumed from the checkpoint of epoch %d in %s.", latest, workdir)
    writers = {
      view.name: stack.enter_context(
        MetricsWriter(view_workdir(workdir, views, view), resume_epoch=latest, write_files=primary)
      )
      for view in views
    }
    start = 0 if latest is None else latest + 1
    for epoch in range(start, num_epochs):
      started = time.time()
      # A divergence raises inside train_epoch, before anything of this epoch is written.
      state, fields = train_epoch(state, epoch)
      history = {name: writer.records for name, writer in writers.items()}
      state, results = evaluate(state, epoch, history)
      seconds = time.time() - started
      models = {}
      for view in views:
        metrics, model = results[view.name]
        record = {"epoch": epoch, **fields, **metrics, "seconds": seconds}
        writers[view.name].write(record)
        if model is not None:
          models[model_item(views, view)] = model
        shown = " ".join(
          f"{k} {record[k]:.4g}" for k in log_fields if isinstance(record.get(k), (int, float))
        )
        logger.info("epoch %d %s: %s (%.1fs)", epoch, view.name, shown, seconds)
      # Records first, then the checkpoint: a run killed in between resumes from the previous
      # checkpoint and cuts these records back, so the two always agree.
      if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == num_epochs:
        checkpointer.save(epoch, {"state": state, **models})
    records = {name: writer.records for name, writer in writers.items()}
  return RunResult(state=state, records=records, resumed_from=latest)
