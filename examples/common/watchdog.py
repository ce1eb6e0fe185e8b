"""A stall watchdog for multi-process runs: no progress within a bound ends the process.

A multi-process run whose peer died or stalled waits inside a collective (gloo on CPU, NCCL, ...)
that does not return for tens of minutes, and JAX catches SIGTERM, so neither ``timeout`` nor the
user's Ctrl-C ends it. The training loop instead calls :meth:`Watchdog.beat` after every step and
every evaluation chunk; a daemon thread checks the time since the last beat and, past
``timeout_s``, logs one line saying what to do, flushes and ends the process with
``os._exit(EXIT_CODE)`` (the thread blocked in the collective never returns, so nothing else
would).

Use::

  with watchdog.for_run(config) as dog:
    for epoch in ...:
      for batch in ...:
        state = train_step(state, batch)
        dog.beat()

It is active only when the run has several processes (``jax.process_count() > 1``) and
``config.collective_timeout_s > 0``; a single process cannot wait on a peer. Phases without beats
(the first step's compilation, a checkpoint save) must fit the bound, hence its default of 600 s.

A peer that dies (SIGKILL, out of memory) usually shows sooner: the survivor's next collective
fails with ``JaxRuntimeError`` (gloo: "Connection closed by peer"). Left to itself the process
would then print that traceback and wait in ``jax.distributed.shutdown`` for the dead peer until
JAX's heartbeat timeout aborts it with a C++ stack (measured: 78 s after the kill). The watchdog's
``with`` block turns that error too into one line saying to relaunch, and ends the process at once.
"""

import logging
import os
import sys
import threading
import time
from typing import Any

EXIT_CODE = 75  # EX_TEMPFAIL: a relaunch is expected to succeed
DEFAULT_TIMEOUT_S = 600


RELAUNCH = (
  "every process must be relaunched with the same command — the run resumes from its last "
  "checkpoint"
)


def stall_message(seconds: float) -> str:
  """The line printed when no progress came for ``seconds``."""
  return (
    f"error: no progress for {seconds:.0f} s (a peer process may have died or stalled); {RELAUNCH}"
  )


def collective_failure_message(error: BaseException) -> str:
  """The line printed when a step failed because a peer went away."""
  cause = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
  return (
    f"error: a step across processes failed ({cause}); a peer process may have died; {RELAUNCH}"
  )


def _is_runtime_failure(error: BaseException | None) -> bool:
  """Whether ``error`` is XLA's runtime error (a failed collective), not a Python-level error."""
  return error is not None and type(error).__name__ in ("JaxRuntimeError", "XlaRuntimeError")


def _exit_with(message: str) -> None:
  # Straight to stderr, as the entry point prints its error lines (logging might drop it or print
  # it twice); what the log handlers hold is flushed first, since os._exit skips every cleanup.
  for handler in logging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.write(message + "\n")
  sys.stderr.flush()
  os._exit(EXIT_CODE)


class Watchdog:
  """Ends the process when :meth:`beat` is not called for ``timeout_s`` seconds.

  Args:
    timeout_s: the bound; ``<= 0`` turns the watchdog off.
    active: start the thread at all (``False``: every call is a no-op).
    poll_s: how often the thread looks (default: a tenth of the bound, at most 5 s).
  """

  def __init__(self, timeout_s: float, *, active: bool = True, poll_s: float | None = None):
    self.timeout_s = float(timeout_s)
    self.active = bool(active) and self.timeout_s > 0
    self._poll_s = poll_s if poll_s is not None else min(5.0, max(0.01, self.timeout_s / 10))
    self._last = time.monotonic()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def beat(self) -> None:
    """Records progress (cheap: one clock read)."""
    self._last = time.monotonic()

  def _watch(self) -> None:
    while not self._stop.wait(self._poll_s):
      silent = time.monotonic() - self._last
      if silent > self.timeout_s:
        self._expire(silent)

  def _expire(self, silent: float) -> None:
    _exit_with(stall_message(silent))

  def __enter__(self) -> "Watchdog":
    if self.active and self._thread is None:
      self.beat()
      self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, exc_type: object, error: BaseException | None, traceback: object) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self.active and _is_runtime_failure(error):
      # Not raised further: the exit would wait in jax.distributed.shutdown for the dead peer.
      _exit_with(collective_failure_message(error))


def for_run(config: Any) -> Watchdog:
  """The watchdog of a run: ``config.collective_timeout_s``, active with several processes."""
  import jax

  timeout = config.get("collective_timeout_s", DEFAULT_TIMEOUT_S)
  return Watchdog(timeout, active=jax.process_count() > 1)
