"""Per-epoch metrics: one JSON line per epoch in ``<workdir>/metrics.jsonl``, TensorBoard scalars.

The JSON-lines file is the record that reports and tests read; TensorBoard (through tensorboardX) is
for watching a run. Both are resume-safe: a run restored from the checkpoint of epoch ``e`` first
drops every line past ``e`` (written after that checkpoint by the run that died), and TensorBoard's
``purge_step`` hides the same epochs in its event files.

Each write replaces the file atomically (:func:`examples.common.fileio.atomic_write_text`), so a
crash never leaves a partial line; the files are small (one line per epoch), so rewriting them is
cheap. A write that fails (a full disk, an unwritable workdir) raises
:class:`~examples.common.fileio.RunIOError`: one message naming the file and the cause. Nothing is
lost: the records are written before the epoch's checkpoint, so a rerun of the same command resumes
from the previous checkpoint and writes that epoch again.
"""

import contextlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from tensorboardX import SummaryWriter

from examples.common.fileio import atomic_write_text, reporting_io_errors

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Returns the records of ``<workdir>/metrics.jsonl`` (empty if there is none yet)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {number}: not valid JSON ({e}).") from e
  return records


def _atomic_write_lines(path: str, records: list[Mapping[str, Any]]) -> None:
  atomic_write_text(path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in records))


class MetricsWriter:
  """Appends per-epoch records to ``metrics.jsonl`` and mirrors numeric fields to TensorBoard.

  Args:
    workdir: the run's directory (created if needed).
    resume_epoch: the last epoch whose checkpoint was restored, or ``None`` for a fresh run. Lines
      with a larger ``epoch`` are dropped (a fresh run drops every line).
    write_files: ``False`` keeps the records in memory only (the non-primary processes of a
      multi-host run, which must not write the same files).
  """

  def __init__(self, workdir: str, *, resume_epoch: int | None = None, write_files: bool = True):
    self.path = os.path.join(workdir, METRICS_FILE)
    kept = (
      []
      if resume_epoch is None
      else [r for r in read_metrics(workdir) if r["epoch"] <= resume_epoch]
    )
    self._records = kept
    self._write_files = write_files
    self._tensorboard = None
    if write_files:
      with reporting_io_errors(workdir):
        os.makedirs(workdir, exist_ok=True)
      _atomic_write_lines(self.path, kept)
      purge = 0 if resume_epoch is None else resume_epoch + 1
      self._tensorboard_dir = os.path.join(workdir, "tensorboard")
      with reporting_io_errors(self._tensorboard_dir, "TensorBoard events in"):
        self._tensorboard = SummaryWriter(
          logdir=self._tensorboard_dir, purge_step=purge, flush_secs=30
        )

  @property
  def records(self) -> list[dict[str, Any]]:
    """The records written so far (including those kept from before a resume)."""
    return list(self._records)

  def write(self, record: Mapping[str, Any]) -> None:
    """Writes one epoch's ``record``; it must hold an integer ``epoch``."""
    if "epoch" not in record:
      raise ValueError(f"A metrics record needs an 'epoch' field, got keys {sorted(record)}.")
    clean = {k: _plain(v) for k, v in record.items()}
    self._records.append(clean)
    if not self._write_files:
      return
    _atomic_write_lines(self.path, self._records)
    with reporting_io_errors(self._tensorboard_dir, "TensorBoard events in"):
      for key, value in clean.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tensorboard.add_scalar(key, value, global_step=clean["epoch"])
      self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      tensorboard, self._tensorboard = self._tensorboard, None
      with reporting_io_errors(self._tensorboard_dir, "TensorBoard events in"):
        tensorboard.close()

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, exc_type: object, *exc: object) -> None:
    if exc_type is None:
      self.close()
    else:  # the error on its way out is the one to report, not a second one from closing
      with contextlib.suppress(OSError):
        self.close()


def _plain(value: Any) -> Any:
  """Turns NumPy/JAX scalars into Python numbers; non-finite floats become JSON null."""
  if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value
