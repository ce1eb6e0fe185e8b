"""Per-epoch metrics: one JSON line per epoch in ``<workdir>/metrics.jsonl``, TensorBoard scalars.

The JSON-lines file is the record that reports and tests read; TensorBoard (through tensorboardX) is
for watching a run. Both are resume-safe: a run restored from the checkpoint of epoch ``e`` first
drops every line past ``e`` (written after that checkpoint by the run that died), and TensorBoard's
``purge_step`` hides the same epochs in its event files.

Each write replaces the file atomically (a temporary file, then ``os.replace``), so a crash never
leaves a partial line. The files are small (one line per epoch), so rewriting them is cheap. The
file gets the mode a plain ``open`` would give (``0666`` less the umask), so others sharing the
workdir can read it.

A write that fails (a full disk, an unwritable workdir) raises :class:`RunIOError`: one message
naming the file and the cause. Nothing is lost: the records are written before the epoch's
checkpoint, so a rerun of the same command resumes from the previous checkpoint and writes that
epoch again.
"""

import contextlib
import errno as errno_lib
import json
import math
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from tensorboardX import SummaryWriter

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


class RunIOError(OSError):
  """Writing a run's files failed (a full disk, an unwritable workdir); says which file and why.

  ``str()`` is the whole message (no ``[Errno N]`` prefix), for the entry point's ``error:`` line.
  """

  def __str__(self) -> str:
    return str(self.strerror)


def run_io_error(path: str, error: OSError, what: str = "") -> RunIOError:
  """A :class:`RunIOError` for ``error`` met while writing ``path`` (``what``: e.g. "checkpoint")."""
  code = error.errno
  cause = os.strerror(code) if code else (str(error).splitlines() or [type(error).__name__])[0]
  name = f" ({errno_lib.errorcode[code]})" if code in errno_lib.errorcode else ""
  return RunIOError(
    code,
    f"cannot write {what + ' ' if what else ''}{path}: {cause}{name}. Free space on that disk or "
    "make the workdir writable, then rerun the same command: the run resumes from its last "
    "complete checkpoint and nothing written before is lost.",
  )


@contextlib.contextmanager
def reporting_io_errors(path: str, what: str = "") -> Iterator[None]:
  """Turns an ``OSError`` inside the block into a :class:`RunIOError` naming ``path``."""
  try:
    yield
  except RunIOError:
    raise
  except OSError as error:
    raise run_io_error(path, error, what) from error


def atomic_write_text(path: str, text: str) -> None:
  """Replaces ``path`` by ``text`` atomically, with the mode ``open(path, "w")`` would give.

  The temporary file is created by ``os.open(..., 0o666)``, so the umask applies (``mkstemp``
  would give ``0600`` whatever the umask), and removed if anything fails.

  Raises:
    RunIOError: the file cannot be written (full disk, unwritable directory, ...).
  """
  directory = os.path.dirname(path) or "."
  tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
  with reporting_io_errors(path):
    try:
      fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
      with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException:
      with contextlib.suppress(OSError):
        os.remove(tmp)
      raise


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
