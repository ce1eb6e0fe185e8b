"""Writing a run's files: atomic replacement, and one error naming the file when a write fails.

Each write replaces the file atomically (a temporary file, then ``os.replace``), so a crash never
leaves a partial file. The file gets the mode a plain ``open`` would give (``0666`` less the umask),
so others sharing the workdir can read it.

A write that fails (a full disk, an unwritable workdir) raises :class:`RunIOError`: one message
naming the file and the cause, which the entry point prints as one ``error:`` line.
"""

import contextlib
import errno as errno_lib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any


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


def atomic_write_json(path: str, data: Any) -> None:
  """Replaces ``path`` by ``data`` as indented JSON (keys sorted), creating its directory.

  Raises:
    RunIOError: the directory or the file cannot be written.
  """
  directory = os.path.dirname(path) or "."
  with reporting_io_errors(directory):
    os.makedirs(directory, exist_ok=True)
  atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))
