"""Orbax checkpoints for resumable training: one per epoch, restore the latest.

Orbax writes each checkpoint into a temporary directory and renames it only when complete (its
atomic finalize), so a run killed mid-save leaves the previous checkpoint as the latest one. A run
stopped on a non-finite loss simply does not save the bad epoch, so the last good one stays.

Each checkpoint proves its integrity: once Orbax has finalized a save, process 0 writes
``<epoch>/CHECKSUMS.json`` (atomically) with the size and SHA-256 of every file Orbax wrote for
that epoch. A restore first checks them; a checkpoint whose files differ (a flipped bit, a file
cut short or missing) or that has no checksums while an older one has (a run killed between
Orbax's finalize and the checksums) is named, set aside and skipped like an unreadable one, and
the one before it is restored. A checkpoint without checksums and none older with them (written
by an older version, or the first save of a run killed right after Orbax's finalize, which is
complete) is restored unverified.

A save that fails for lack of space or permissions raises
:class:`~examples.common.fileio.RunIOError` (one message: the directory and the cause) instead of
Orbax's hundreds of log lines: it first waits for the writes Orbax abandoned (their threads keep
writing and logging after the first failure), keeps quiet exactly the reports they leave behind
(see :func:`_absorb_abandoned_work`), and removes its temporary directory; temporary directories
left by a killed run are removed when the next run opens the directory. Either way the previous checkpoint
stays the latest, so rerunning the same command once there is space resumes from it.
"""

import contextlib
import gc
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from examples.common import watchdog
from examples.common.fileio import atomic_write_text, run_io_error

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a checkpoint still being written
CHECKSUMS_FILE = "CHECKSUMS.json"  # in each epoch's folder: size and SHA-256 of its every file
# TensorStore reports the operating system's error inside its message ("No space left on device
# [os_error_code='28']"), Python in its own ("[Errno 28]").
_OS_ERROR = re.compile(r"os_error_code='(\d+)'|\[Errno (\d+)\]")


def _os_error_in(error: BaseException) -> OSError | None:
  """The operating-system error behind ``error`` (its chain or TensorStore's message), if any."""
  seen: set[int] = set()
  current: BaseException | None = error
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    if isinstance(current, OSError) and current.errno:
      return current
    match = _OS_ERROR.search(str(current))
    if match:
      code = int(match.group(1) or match.group(2))
      return OSError(code, os.strerror(code))
    current = current.__cause__ or current.__context__
  return None


class _HoldOrbaxErrors(logging.Filter):
  """Holds back Orbax's log records while a save runs (a failed write logs hundreds of lines)."""

  def __init__(self):
    super().__init__()
    self.held: list[logging.LogRecord] = []

  def filter(self, record: logging.LogRecord) -> bool:
    if "orbax" in record.pathname:
      self.held.append(record)
      return False
    return True


@contextlib.contextmanager
def _holding_orbax_logs() -> Iterator[_HoldOrbaxErrors]:
  hold = _HoldOrbaxErrors()
  targets = [logging.getLogger(name) for name in ("absl", "orbax", "")]
  handlers = [h for target in targets for h in target.handlers]
  if logging.lastResort is not None:  # what prints when no handler is configured
    handlers.append(logging.lastResort)
  for handler in handlers:  # handler filters also see records propagated from child loggers
    handler.addFilter(hold)
  try:
    yield hold
  finally:
    for handler in handlers:
      handler.removeFilter(hold)


class CheckpointMismatchError(ValueError):
  """A readable checkpoint of another tree (another config, an older layout): not a corrupt one."""


class NoReadableCheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be read."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint whose files differ from the checksums written with it, or that has none."""


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def file_checksums(step_dir: str) -> dict[str, dict[str, Any]]:
  """``{relative path: {"size", "sha256"}}`` of every file under ``step_dir`` but the checksums."""
  out = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, step_dir)
      if relative != CHECKSUMS_FILE:
        out[relative] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
  return dict(sorted(out.items()))


def write_checksums(step_dir: str) -> None:
  """Writes ``<step_dir>/CHECKSUMS.json`` atomically (a :class:`RunIOError` if it cannot)."""
  record = {"algorithm": "sha256", "files": file_checksums(step_dir)}
  atomic_write_text(os.path.join(step_dir, CHECKSUMS_FILE), json.dumps(record, indent=1))


def verify_checksums(step_dir: str) -> bool:
  """Checks ``step_dir`` against its ``CHECKSUMS.json``; ``False`` when it has none.

  Raises:
    CorruptCheckpointError: a file is missing or differs in size or content (the message names
      the first such files).
  """
  path = os.path.join(step_dir, CHECKSUMS_FILE)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      recorded = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise CorruptCheckpointError(f"its {CHECKSUMS_FILE} cannot be read ({error})") from None
  bad = []
  for relative, expected in recorded.items():
    file = os.path.join(step_dir, relative)
    if not os.path.isfile(file):
      bad.append(f"{relative} is missing")
    elif os.path.getsize(file) != expected["size"]:
      bad.append(f"{relative} has {os.path.getsize(file)} bytes, not {expected['size']}")
    elif _sha256(file) != expected["sha256"]:
      bad.append(f"{relative} changed")
  if bad:
    shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
    raise CorruptCheckpointError(f"its files differ from the checksums written with it ({shown})")
  return True


def _is_abandoned_read(error: BaseException | None) -> bool:
  """Whether an error comes from a read or write that a failed restore or save abandoned.

  Two kinds: a late TensorStore callback into Orbax's closed event loop, and a read coroutine
  closed unfinished when it is collected (Orbax wraps the ``GeneratorExit`` it gets then).
  """
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    frames = traceback.extract_tb(error.__traceback__)
    return any(frame.name == "call_soon_threadsafe" for frame in frames)
  return error is not None and isinstance(error.__cause__, GeneratorExit) and _through_orbax(error)


def _absorb_abandoned_reads() -> None:
  """Drops the "Event loop is closed" errors of the reads a failed restore abandoned.

  Orbax runs a restore's reads in an event loop of its own and closes it as soon as one read
  fails; the other TensorStore reads finish later (possibly after this run's Checkpointer closed)
  and call back into the closed loop, which Python reports (as an unraisable error, or through
  ``sys.excepthook`` when TensorStore prints it) as a ``RuntimeError`` per read: harmless, their
  results are not wanted. Failed saves leave such writes too. From the first Checkpointer on,
  exactly that error is dropped; every other one goes on to the hook that was there.
  """
  if not getattr(sys.unraisablehook, "_drops_abandoned_reads", False):
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
      if not _is_abandoned_read(unraisable.exc_value):
        previous(unraisable)

    hook._drops_abandoned_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
  if not getattr(sys.excepthook, "_drops_abandoned_reads", False):
    previous_excepthook = sys.excepthook

    def excepthook(kind: Any, value: Any, tb: Any) -> None:
      if not _is_abandoned_read(value):
        previous_excepthook(kind, value, tb)

    excepthook._drops_abandoned_reads = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


def _is_orbax_thread(thread: threading.Thread) -> bool:
  target = getattr(thread, "_target", None)  # a plain Thread running an Orbax function
  modules = (type(thread).__module__, getattr(target, "__module__", None) or "")
  return any(module.startswith("orbax") for module in modules)


def _join_orbax_threads(running_before: set[threading.Thread], timeout_s: float = 120.0) -> None:
  """Waits (at most ``timeout_s`` in all) for the Orbax threads started since ``running_before``."""
  deadline = time.monotonic() + timeout_s
  for thread in threading.enumerate():
    if thread in running_before or thread is threading.current_thread():
      continue
    if _is_orbax_thread(thread):
      # Thread.join itself: Orbax's own join re-raises the thread's error.
      threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))


def _collect_abandoned_reads(running_before: set[threading.Thread]) -> None:
  """Collects now, quietly, the read coroutines a failed restore left unfinished.

  Orbax stops waiting at the first failed read; the others are closed when collected, each
  reporting an unraisable error and a "never awaited" warning. Collected later, they would
  report into whatever runs then (in a test suite, into the next test).
  """
  _absorb_abandoned_reads()
  _join_orbax_threads(running_before)
  with warnings.catch_warnings():
    warnings.filterwarnings(
      "ignore", r"coroutine '.*_read_array_index_and_device_put' was never awaited", RuntimeWarning
    )
    gc.collect()


class _DropAbandonedWrites(logging.Filter):
  """Drops asyncio's "exception was never retrieved" records of writes into a failed checkpoint."""

  def __init__(self):
    super().__init__()
    self.paths: set[str] = set()

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    if "exception was never retrieved" not in text:
      return True
    error = record.exc_info[1] if record.exc_info else None
    if error is not None and _os_error_in(error) is not None and _through_orbax(error):
      return False  # an Orbax write that met the same IO fault (its message names no path)
    return not any(path in text for path in self.paths)


def _through_orbax(error: BaseException) -> bool:
  frames = traceback.extract_tb(error.__traceback__)
  return any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)


_DROP_ABANDONED_WRITES = _DropAbandonedWrites()


def _absorb_abandoned_work(temporary: str) -> None:
  """Keeps quiet what the writes a failed save abandoned still report after the failure.

  Each abandoned TensorStore write calls back into its closed event loop ("Event loop is
  closed", see :func:`_absorb_abandoned_reads`), and each of their asyncio tasks logs "Task
  exception was never retrieved" when it is collected, possibly at interpreter exit, and the
  coroutines it had not started warn "coroutine ... was never awaited". Only those are dropped:
  asyncio's records naming the failed checkpoint's temporary directory ``temporary`` or holding
  an operating-system error raised through Orbax's code, and that warning for Orbax's
  ``write_fragment`` coroutine.
  """
  _absorb_abandoned_reads()
  _DROP_ABANDONED_WRITES.paths.add(temporary)
  # Their coroutines not yet started when the save failed are collected unawaited.
  warnings.filterwarnings(
    "ignore", r"coroutine '.*write_fragment' was never awaited", RuntimeWarning
  )
  asyncio_logger = logging.getLogger("asyncio")
  if _DROP_ABANDONED_WRITES not in asyncio_logger.filters:
    asyncio_logger.addFilter(_DROP_ABANDONED_WRITES)


class Checkpointer:
  """Saves named pytrees once per epoch and restores the latest ones.

  Each checkpoint holds named items, e.g. ``state`` (everything needed to resume) and ``model``
  (the evaluated parameters, what one ships); a restore reads only the items it asks for.

  Args:
    directory: where the checkpoints live (``<workdir>/checkpoints``); created if needed.
    max_to_keep: how many recent epochs to keep on disk.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    # A failed write or read may leave TensorStore operations that call back into Orbax's closed
    # event loop later, even before the failure reaches this class.
    _absorb_abandoned_reads()
    # What a run killed mid-save left (Orbax's own cleanup option runs in the background, so a
    # listing right after start-up could still see it).
    self._remove_temporary("*")
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_epoch(self) -> int | None:
    """The epoch of the newest complete checkpoint, or ``None`` if there is none."""
    return self._manager.latest_step()

  def save(self, epoch: int, items: Mapping[str, Any]) -> None:
    """Saves ``items`` (name -> pytree) as epoch ``epoch``; returns once finalized on disk."""
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    failure: Exception | None = None
    running = set(threading.enumerate())
    with _holding_orbax_logs() as held:
      try:
        self._manager.save(epoch, args=ocp.args.Composite(**args))
        watchdog.fault_point("save", epoch)  # tests: a process killed mid-save
        self._manager.wait_until_finished()
      except Exception as error:
        failure = error
      cause = None if failure is None else _os_error_in(failure)
      if cause is not None:
        # Orbax raises at the first failed write while its other writes go on in their threads
        # and event loops, each logging its own failure; wait for them (still holding their
        # records), so that nothing prints after the one error line and the temporary directory
        # is removed after the last write into it, not before.
        _absorb_abandoned_work(os.path.join(self.directory, f"{epoch}{TMP_SUFFIX}"))
        _join_orbax_threads(running)
        gc.collect()  # the failed writes' asyncio tasks report themselves when collected
        self._remove_temporary(epoch)
    # Replayed only now that the hold is off (inside it, each record would be held again).
    if cause is None:  # saved, or not an IO fault (a bug): Orbax's account of it is kept
      self._replay(held.held)
      if failure is not None:
        raise failure
      if jax.process_index() == 0:
        write_checksums(os.path.join(self.directory, str(epoch)))
      return
    raise run_io_error(
      os.path.join(self.directory, str(epoch)), cause, "the checkpoint"
    ) from failure

  @staticmethod
  def _replay(records: list[logging.LogRecord]) -> None:
    for record in records:
      if record.levelno >= logging.WARNING:
        logging.getLogger(record.name).handle(record)

  def _remove_temporary(self, epoch: int | str) -> None:
    """Removes what a failed save of ``epoch`` (``"*"``: any) left; process 0 owns the directory."""
    if jax.process_index() != 0:
      return
    for path in glob.glob(os.path.join(self.directory, f"{epoch}{TMP_SUFFIX}*")):
      shutil.rmtree(path, ignore_errors=True)

  def restore(self, abstract_items: Mapping[str, Any], epoch: int | None = None) -> dict[str, Any]:
    """Restores the named items of epoch ``epoch`` (default: the latest).

    Each value of ``abstract_items`` is a pytree of ``jax.ShapeDtypeStruct`` (with shardings) or
    arrays, e.g. from :func:`abstract_like`; the restored arrays get its structure and shardings.
    """
    epoch = self.latest_epoch() if epoch is None else epoch
    if epoch is None:
      raise FileNotFoundError(f"No checkpoint to restore in {self.directory}.")
    self._verify(epoch)
    args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
    running = set(threading.enumerate())
    try:
      restored = self._manager.restore(epoch, args=ocp.args.Composite(**args))
    except Exception as error:
      # The failed read's frames, kept by the traceback, may hold the reads that never started:
      # cleared, those can be collected now rather than whenever the error is let go of.
      traceback.clear_frames(error.__traceback__)
      _collect_abandoned_reads(running)
      if not isinstance(error, ValueError):
        raise
      # Another tree, or the same tree with other shapes (another model width, say): both mean
      # the checkpoint belongs to another config, not that it is corrupt.
      if not any(m in str(error) for m in ("tree structures do not match", "stored shape")):
        raise
      raise CheckpointMismatchError(
        f"The checkpoint of epoch {epoch} in {self.directory} holds a different tree than this run "
        "expects: it was written with another config, or by an older version of this example (the "
        "image trainer's state became plain dicts of arrays). Resume with the config that wrote "
        "it, or train in a fresh workdir."
      ) from error
    return {name: restored[name] for name in abstract_items}

  def _verify(self, epoch: int) -> None:
    """Checks epoch ``epoch`` against its checksums before anything of it is read.

    Raises:
      CorruptCheckpointError: its files differ from its checksums, or it has none while an older
        checkpoint here has them (it was written by a version that writes them, and its save was
        cut off before they were written).
    """
    if verify_checksums(os.path.join(self.directory, str(epoch))):
      return
    older = [e for e in self.all_epochs() if e < epoch]
    if any(os.path.exists(os.path.join(self.directory, str(e), CHECKSUMS_FILE)) for e in older):
      raise CorruptCheckpointError(
        f"it has no {CHECKSUMS_FILE} (its save was cut off before they were written)"
      )
    logger.info(
      "The checkpoint of epoch %d in %s has no %s (written by an older version): restored "
      "unverified.",
      epoch,
      self.directory,
      CHECKSUMS_FILE,
    )

  def all_epochs(self) -> list[int]:
    """The epochs of every complete checkpoint on disk, oldest first."""
    return sorted(self._manager.all_steps())

  def restore_newest_readable(
    self, abstract_items: Mapping[str, Any]
  ) -> tuple[int | None, dict[str, Any] | None]:
    """Restores the newest checkpoint that can be read; ``(None, None)`` when there is none.

    A checkpoint that fails to read (truncated or missing array files, say) or fails its
    checksums (:meth:`_verify`) is logged as skipped
    and moved aside to ``<directory>-unreadable/`` (so the resumed run can write that epoch again
    and nothing is deleted); the one before it is tried. A checkpoint of another tree
    (:class:`CheckpointMismatchError`) is not skipped: an older one would not fit either.

    Raises:
      NoReadableCheckpointError: checkpoints exist and none of them can be read.
    """
    epochs = self.all_epochs()
    skipped = []
    for epoch in reversed(epochs):
      try:
        restored = self.restore(abstract_items, epoch)
      except CheckpointMismatchError:
        raise
      except Exception as error:  # Orbax/TensorStore raise many types for unreadable files.
        _absorb_abandoned_reads()
        reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        if not isinstance(error, CorruptCheckpointError):
          reason = f"it cannot be read: {reason}"
        logger.warning(
          "Skipping the checkpoint of epoch %d in %s: %s. Trying the one before it.",
          epoch,
          self.directory,
          reason,
        )
        skipped.append((epoch, reason))
        continue
      self._set_aside([e for e, _ in skipped])
      if skipped:
        logger.warning("Resuming from the checkpoint of epoch %d instead.", epoch)
      return epoch, restored
    if epochs:
      listing = "; ".join(f"epoch {e}: {why}" for e, why in skipped)
      raise NoReadableCheckpointError(
        f"None of the checkpoints in {self.directory} can be read ({listing}). To train from "
        f"scratch, move {self.directory} away (or use a fresh workdir); to resume, put back a "
        "readable copy of one of them."
      )
    return None, None

  def _set_aside(self, epochs: list[int]) -> None:
    """Moves skipped (unreadable or corrupt) checkpoints to ``<directory>-unreadable/``."""
    if not epochs or jax.process_index() != 0:
      return
    aside = self.directory.rstrip(os.sep) + "-unreadable"
    os.makedirs(aside, exist_ok=True)
    for epoch in epochs:
      target = os.path.join(aside, f"{epoch}-{time.strftime('%Y%m%dT%H%M%S')}")
      shutil.move(os.path.join(self.directory, str(epoch)), target)
      logger.warning("Moved the skipped checkpoint of epoch %d to %s.", epoch, target)
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def stored_shapes(directory: str, item: str) -> tuple[int, Any] | None:
  """The newest complete checkpoint's epoch and the shapes of its ``item``, read from its metadata.

  Reads only metadata (no arrays) and writes nothing; ``None`` when ``directory`` holds no complete
  checkpoint. The shapes come as a pytree of tuples in the saved structure (Orbax's containers),
  for a caller that must build a restore target of the saved shapes (a device-count-dependent leaf).
  """
  if not os.path.isdir(directory):
    return None
  epochs = [int(name) for name in os.listdir(directory) if name.isdigit()]
  if not epochs:
    return None
  epoch = max(epochs)
  # Orbax logs a warning for the step-level metadata file its item reader does not need.
  with _holding_orbax_logs(), ocp.StandardCheckpointer() as reader:
    metadata = reader.metadata(os.path.join(directory, str(epoch), item))
  tree = getattr(metadata, "item_metadata", metadata)
  return epoch, jax.tree.map(lambda leaf: tuple(leaf.shape), tree.tree)


def abstract_like(state: Any) -> Any:
  """The ``ShapeDtypeStruct`` tree (keeping shardings) that :meth:`Checkpointer.restore` fills."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
