"""A run's directory: its config lock, its records, its checkpoints, opened and closed as one.

``RunDirectory(config, workdir, views)`` checks the config lock, and ``with run.open(state):`` (or
``with RunDirectory(config, workdir, views, template=state) as run:``) opens the run:

1. **The config lock**, checked once, when the object is made (nothing is read or written before
   it passes, so a trainer makes it before loading its data): a workdir that holds a
   ``config.json`` resumes only with the same config. A field that changes results (optimizer list
   or settings, model, data, learning rate and schedule, seed, ...) is refused with one
   :class:`~examples.common.errors.UserError` naming each differing field with both values. The
   fields in :data:`MAY_CHANGE` may change on resume (``num_epochs`` may only grow: a shorter run is
   another run). To change anything else, train in a new ``--workdir``.
   **The data lock**: a trainer that passes ``data=`` (what it loaded) resumes only on the same
   data, wherever it lies now (``data.json`` holds its fingerprint).
2. **Resume** from the newest sound checkpoint (``checkpoints/``; a newer one that cannot be read
   or fails its checksums is named, set aside and skipped). A checkpoint whose arrays do not fit the config's state is
   reported as a config mismatch, never as unreadable.
3. **The records**: ``config.json``, ``data.json`` (and with several views
   ``<workdir>/<name>/config.json``, whose ``optimizer`` is that view's name, so reports read both
   layouts alike), ``machine.json`` (the machines the run has trained on, one entry per start), and
   per view ``metrics.jsonl`` and TensorBoard scalars (one view: in ``<workdir>``; several: in ``<workdir>/<name>/``), cut back to
   the restored epoch.

Leaving the ``with`` block closes every writer and the checkpointer on every exit (a non-finite
loss, an error, ``KeyboardInterrupt``). Only process 0 writes files. The trainer keeps the loop;
nothing here calls back into it.
"""

import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from examples.common import compression, datalock, machine
from examples.common.checkpoint import Checkpointer, CheckpointMismatchError, abstract_like
from examples.common.config_record import CONFIG_FILE, as_json, flat_fields
from examples.common.errors import UserError
from examples.common.fileio import atomic_write_json
from examples.common.metrics import MetricsWriter
from examples.common.optimizers import View, canonical_spec

logger = logging.getLogger(__name__)

Record = dict[str, Any]

# Fields that do not change a run's results, so a resumed run may set them differently: how it
# shows progress, how often it saves, where the data lies (the data itself is locked by its
# fingerprint, ``data.json``: see :mod:`examples.common.datalock`), how many processes and devices
# share the work (the trainers' results do not depend on the device count or layout, up to float rounding),
# and the sweep around a training (``sweep``: its grid of seeds and names). ``num_epochs`` may grow.
# Every other field is locked to the workdir.
MAY_CHANGE = frozenset(
  {
    "progress_bar",
    "log_every_steps",
    "checkpoint_every",
    "data_dir",
    "data_source",
    "num_workers",
    "num_devices",
    "platform",
    "sharding",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
    "distributed_timeout_s",
    "collective_timeout_s",
    "sweep",
  }
)


def view_workdir(workdir: str, views: Sequence[View], view: View) -> str:
  """Where a view's records go: ``workdir`` itself for one view, ``<workdir>/<name>`` for several."""
  return workdir if len(views) == 1 else os.path.join(workdir, view.name)


def model_item(views: Sequence[View], view: View) -> str:
  """The checkpoint item holding a view's shippable model."""
  return "model" if len(views) == 1 else f"model-{view.name}"


def config_differences(recorded: Mapping[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """Each locked field whose value differs from the recorded one, as ``field: old -> new``."""
  old, new = flat_fields(recorded), flat_fields(as_json(config))
  for values in (old, new):  # two spellings of one name are one name
    if isinstance(values.get("optimizer"), str):
      values["optimizer"] = _canonical_optimizer(values["optimizer"])
    if isinstance(values.get("grad_compression"), str):
      values["grad_compression"] = compression.canonical(values["grad_compression"])
  differences = []
  for field in sorted(old.keys() | new.keys()):
    if field.split(".")[0] in MAY_CHANGE or old.get(field) == new.get(field):
      continue
    if field not in old:
      # A field this version added: the recorded run used what was then the only behaviour.
      logger.info("%s is not in the recorded config (an older version wrote it).", field)
      continue
    if field == "num_epochs" and new[field] > old[field]:
      continue
    differences.append(f"{field}: {old.get(field, '(absent)')!r} -> {new.get(field, '(absent)')!r}")
  return differences


def _canonical_optimizer(spec: str) -> str:
  try:
    return canonical_spec(spec)
  except UserError:  # not a valid list (an older version's name): compared as written
    return spec


def check_workdir(workdir: str | None) -> None:
  """Refuses, in one line and before anything is written, a workdir a run cannot use.

  Empty, a file, a path under a file, on a read-only file system, or not writable by this user
  (the nearest existing folder of a workdir still to be made is checked).

  Raises:
    UserError: saying what is wrong with ``workdir`` and what to give instead.
  """
  if not workdir or not str(workdir).strip():
    raise UserError(
      "The workdir is empty: give the directory that holds (or will hold) the run's checkpoints "
      "and records, e.g. --workdir=runs/first."
    )
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(
      f"The workdir {workdir} is a file, not a directory: give a new directory to start a run, "
      "or the run's own directory to resume it."
    )
  existing = path
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError(
      f"The workdir {workdir} lies under {existing}, which is a file: give a directory path "
      "whose parents are directories."
    )
  if os.statvfs(existing).f_flag & os.ST_RDONLY:
    raise UserError(
      f"The workdir {workdir} lies on a read-only file system ({existing}): give a workdir on a "
      "writable one (or copy the run there to resume it)."
    )
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(
      f"The workdir {workdir} is not writable by this user ({existing}): give a workdir you can "
      "write, or change its permissions."
    )


def make_workdir(workdir: str) -> None:
  """Creates ``workdir`` and its ``checkpoints`` folder; a refusal of the file system (a path
  where nothing can be created, say) is one :class:`UserError` naming the workdir."""
  try:
    os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
  except OSError as error:
    raise UserError(
      f"The workdir {workdir} cannot be created or written ({error.strerror}: {error.filename}): "
      "give a workdir you can write."
    ) from None


def check_config_lock(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir that cannot be used (:func:`check_workdir`) or a config that differs from
  ``<workdir>/config.json`` in a locked field.

  Raises:
    UserError: naming each differing field with the recorded and the new value.
  """
  check_workdir(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (OSError, json.JSONDecodeError) as error:
    raise UserError(
      f"{path} cannot be read ({error}); it records the config this workdir was trained with. "
      "Restore it, or train in a new --workdir."
    ) from error
  differences = config_differences(recorded, config)
  if differences:
    raise UserError(
      f"{workdir} was trained with another config ({path}); it resumes only with the same values. "
      f"Differing: {'; '.join(differences)}. Resume with the recorded values, or train in a new "
      f"--workdir. Fields that may change on resume: num_epochs (more), "
      f"{', '.join(sorted(field for field in MAY_CHANGE if field in config))}."
    )


def write_config(config: ml_collections.ConfigDict, workdir: str, views: Sequence[View]) -> None:
  """``config.json`` in ``workdir``, and with several views one per view folder."""
  record = as_json(config)
  atomic_write_json(os.path.join(workdir, CONFIG_FILE), record)
  if len(views) > 1:
    for view in views:
      atomic_write_json(
        os.path.join(view_workdir(workdir, views, view), CONFIG_FILE),
        {**record, "optimizer": view.name, "views": [v.name for v in views]},
      )


def record_machine(workdir: str, epoch_started: int) -> None:
  """Appends this machine to ``machine.json`` (a list: a resumed run keeps the earlier ones)."""
  path = os.path.join(workdir, machine.MACHINE_FILE)
  entries = []
  if os.path.exists(path):
    with open(path) as f:
      entries = json.load(f)
  entries.append({"epoch_started": epoch_started, "machine": machine.describe()})
  atomic_write_json(path, entries)


def _shape_mismatch(
  config: ml_collections.ConfigDict, checkpointer: Checkpointer, epoch: int, error: Exception
) -> UserError:
  return UserError(
    f"The checkpoint of epoch {epoch} in {checkpointer.directory} does not fit this config's "
    f"model and optimizer ({str(error).splitlines()[0][:200]}): it was written with another "
    f"config (model, optimizer list or settings, data) or by an older version of this example "
    f"(whose optimizer chains were laid out differently). Resume with the config that wrote it "
    f"({CONFIG_FILE} of that run), or train in a new --workdir."
  )


class RunDirectory:
  """One run's workdir, opened by ``with``: see the module docstring.

  Args:
    config: the run's config (locked to the workdir: checked here, before anything else).
    workdir: the run's directory.
    views: the views of ``config.optimizer`` (one record folder each when several).
    template: the initial training state, the tree a checkpoint's ``state`` is restored into
      (or given later by :meth:`open`).
    log_fields: record fields shown in each epoch's log line.
    data: what the run trains on, as loaded (arrays, a dataclass of them, file names): its
      :func:`~examples.common.datalock.fingerprint` is recorded in ``data.json`` and a resume on
      other data is refused (:func:`~examples.common.datalock.check_data_lock`). ``None``: not
      locked.

  Attributes (after ``__enter__``):
    start_epoch: the first epoch to train (0, or the restored epoch + 1).
    state: the restored ``state`` item, or ``template`` for a fresh run.
    records: each view's records so far (restored ones included), by view name.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    workdir: str,
    views: Sequence[View],
    *,
    template: Any = None,
    log_fields: Sequence[str] = (),
    data: Any = None,
  ):
    check_config_lock(config, workdir)  # the one check: nothing is read or written before it
    self.config, self.workdir, self.views = config, workdir, list(views)
    self.data_record = None if data is None else datalock.fingerprint(data)
    self.template, self.log_fields = template, tuple(log_fields)
    self.primary = jax.process_index() == 0
    self._stack = contextlib.ExitStack()
    self.start_epoch = 0
    self.state: Any = template
    self._writers: dict[str, MetricsWriter] = {}

  def open(self, template: Any, *, data: Any = None) -> "RunDirectory":
    """Sets the state a checkpoint is restored into; ``with run.open(state, data=...):`` opens
    the run.

    For a trainer that locks the workdir first (constructing this class) and builds its state
    after loading the data: ``data`` is what it loaded, locked as the constructor's ``data`` is.
    """
    self.template = self.state = template
    if data is not None:
      self.data_record = datalock.fingerprint(data)
    return self

  def __enter__(self) -> "RunDirectory":
    if self.template is None:
      raise ValueError("RunDirectory needs the state to restore into: use run.open(state).")
    if self.data_record is not None:
      datalock.check_data_lock(self.workdir, self.data_record)
    with self._stack as stack:
      make_workdir(self.workdir)
      self.checkpointer = stack.enter_context(
        Checkpointer(os.path.join(self.workdir, "checkpoints"))
      )
      latest = self._restore()
      if self.primary:
        write_config(self.config, self.workdir, self.views)
        if self.data_record is not None:
          atomic_write_json(os.path.join(self.workdir, datalock.DATA_FILE), self.data_record)
        record_machine(self.workdir, self.start_epoch)
      for view in self.views:
        self._writers[view.name] = stack.enter_context(
          MetricsWriter(
            view_workdir(self.workdir, self.views, view),
            resume_epoch=latest,
            write_files=self.primary,
          )
        )
      self._stack = stack.pop_all()
    return self

  def _restore(self) -> int | None:
    try:
      latest, restored = self.checkpointer.restore_newest_readable(
        {"state": abstract_like(self.template)}
      )
    except CheckpointMismatchError as error:
      epoch = self.checkpointer.latest_epoch()
      raise _shape_mismatch(self.config, self.checkpointer, epoch, error) from None
    if latest is not None:
      self.state = restored["state"]
      self.start_epoch = latest + 1
      logger.info("Resumed from the checkpoint of epoch %d in %s.", latest, self.workdir)
    return latest

  def __exit__(self, *exc: object) -> None:
    self._stack.close()

  @property
  def records(self) -> dict[str, list[Record]]:
    return {name: writer.records for name, writer in self._writers.items()}

  def write(
    self,
    epoch: int,
    records: Mapping[str, Mapping[str, Any]],
    *,
    shared: Mapping[str, Any] | None = None,
    seconds: float | None = None,
  ) -> None:
    """Writes each view's record of ``epoch`` and logs it.

    A view's record is ``{"epoch": epoch, **shared, **records[name], "seconds": seconds}``:
    ``shared`` holds the fields of the one training (step, learning rate, training loss),
    ``records`` each view's own, ``seconds`` the epoch's wall time (left out when ``None``).
    """
    for view in self.views:
      record = {"epoch": epoch, **(shared or {}), **records[view.name]}
      if seconds is not None:
        record["seconds"] = seconds
      self._writers[view.name].write(record)
      shown = " ".join(
        f"{k} {record[k]:.4g}" for k in self.log_fields if isinstance(record.get(k), (int, float))
      )
      logger.info("epoch %d %s: %s", epoch, view.name, shown)

  def save(self, epoch: int, state: Any, models: Mapping[str, Any] | None = None) -> None:
    """Checkpoints ``state`` and each view's shippable model (by view name) as epoch ``epoch``.

    Write the epoch's records first: a run killed in between resumes from the previous checkpoint
    and cuts these records back, so the two always agree.
    """
    items = {"state": state}
    for view in self.views:
      if models and models.get(view.name) is not None:
        items[model_item(self.views, view)] = models[view.name]
    self.checkpointer.save(epoch, items)
