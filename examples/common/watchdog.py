"""A stall watchdog for multi-process runs: no progress within a bound ends the process.

A multi-process run whose peer died or stalled waits inside a collective (gloo on CPU, NCCL, ...)
that does not return for tens of minutes, and JAX catches SIGTERM, so neither ``timeout`` nor the
user's Ctrl-C ends it. The training loop instead calls :meth:`Watchdog.beat` after every step and
every evaluation chunk; a daemon thread checks the time since the last beat and, past
``timeout_s``, logs one line saying what to do, flushes and ends the process with
``os._exit(EXIT_CODE)`` (the thread blocked in the collective never returns, so nothing else
would).

Use::

  train_step = watchdog.CompiledAhead(jax.jit(step))
  with watchdog.for_run(config) as dog:
    for epoch in ...:
      dog.phase("train", epoch)
      for batch in ...:
        state = train_step(state, batch)
        dog.beat()
      dog.phase("save", epoch)
      save(state)

It is active only when the run has several processes (``jax.process_count() > 1``) and
``config.collective_timeout_s > 0``; a single process cannot wait on a peer. The bound,
:data:`DEFAULT_TIMEOUT_S` by default, is short enough that a survivor of a dead peer ends within two
minutes; every phase of a healthy run must beat within it:

- compilation, which can take minutes and waits on no peer, does not count: the steps are compiled
  ahead of time through :class:`CompiledAhead`, with the watchdog paused (:func:`compiling`), and
  the compiled executables are then called (a plain jitted call would compile without pausing);
- a checkpoint save or restore beats before and after, and must fit the bound;
- JAX's heartbeat timeout is set well past the bound (:mod:`examples.common.distributed`), so that
  the watchdog, not JAX's abort with a C++ stack, ends a run whose peer stopped.

Where a survivor waits when its peer dies (measured with gloo on the CPU): a step, an evaluation
batch, and a save the peer had not yet entered (Orbax's first barriers are collectives) fail within
a second with ``JaxRuntimeError`` ("Connection reset by peer"). Left to itself the process would
print the traceback and wait in ``jax.distributed.shutdown`` for the dead peer until JAX aborts it
(SIGABRT, exit code 134). The watchdog's ``with`` block turns that error into one line saying to
relaunch, and ends the process at once. A peer that dies within a save, once its writes started,
leaves the survivor's Orbax thread waiting in a barrier of JAX's distributed service that fails
only after Orbax's timeout (minutes): the watchdog ends it at its bound (measured: 93 s after the
death with the default bound). So does any other wait that does not fail (a stalled peer, a
transport that does not notice). When process 0 (JAX's coordinator) dies, JAX's client in each
survivor also ends its process at once ("the JAX distributed service detected fatal errors"), by an
abort that first prints a C++ stack: on the CPU, mid-epoch and mid-evaluation, the failed
collective reached the watchdog first in every run measured, but where the survivor waits on
something that does not fail (Orbax's barrier within a save; any collective on accelerators), it
ends with that abort (SIGABRT). JAX's public API gives no hook to print the relaunch line there
(its client takes a handler, but cannot pass it the status from C++): the parent that the entry
point puts above each process of such a run prints it (:mod:`examples.common.supervisor`,
:func:`coordinator_died_message`) and exits with :data:`EXIT_CODE` too.

Tests make a process SIGKILL itself at a given phase and epoch with the environment variable
:data:`FAULT_ENV` (``<phase>:<epoch>:<process index>``, e.g. ``save:1:1``); see
:meth:`Watchdog.phase` and :func:`fault_point`.
"""

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

EXIT_CODE = 75  # EX_TEMPFAIL: a relaunch is expected to succeed
# The default bound: with the poll (5 s) and a loaded machine's slack, a survivor of a dead peer
# ends within two minutes of the death. Compilation does not count against it (module docstring).
DEFAULT_TIMEOUT_S = 90
# Makes a process SIGKILL itself on reaching a phase (Watchdog.phase): "<phase>:<epoch>:<process>".
FAULT_ENV = "EXAMPLES_KILL_SELF_AT"


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


def coordinator_died_message() -> str:
  """The line printed when JAX's client aborted a process because process 0 died.

  Printed by the parent of each process (:mod:`examples.common.supervisor`): the abort itself ends
  the process before any Python code runs.
  """
  return (
    "error: JAX's distributed service failed (a peer process, the coordinator (process 0), "
    f"died); {RELAUNCH}"
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
    self._paused = 0
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._phase: tuple[str, int] | None = None
    self._kill_at = _fault_point()

  def beat(self) -> None:
    """Records progress (cheap: one clock read)."""
    self._last = time.monotonic()
    if self._kill_at is not None and self._kill_at == self._phase:
      _kill_self()

  def phase(self, name: str, epoch: int) -> None:
    """Records the phase the run enters (``train``, ``evaluate``, ``save``) at ``epoch``, and beats.

    With :data:`FAULT_ENV` naming this phase, epoch and process, the process SIGKILLs itself at
    the first beat within the phase (mid-epoch, mid-evaluation); a save has no beats, and
    :func:`fault_point` is called inside it instead.
    """
    self._phase = (name, epoch)
    self._last = time.monotonic()

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Stops the clock inside the block (work that waits on no peer: compilation); beats after."""
    self._paused += 1
    try:
      yield
    finally:
      self._paused -= 1
      self._last = time.monotonic()

  def _watch(self) -> None:
    while not self._stop.wait(self._poll_s):
      silent = time.monotonic() - self._last
      if silent > self.timeout_s and not self._paused:
        self._expire(silent)

  def _expire(self, silent: float) -> None:
    _exit_with(stall_message(silent))

  def __enter__(self) -> "Watchdog":
    if self.active and self._thread is None:
      self._last = time.monotonic()
      self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
      self._thread.start()
    _RUNNING.append(self)
    return self

  def __exit__(self, exc_type: object, error: BaseException | None, traceback: object) -> None:
    if self in _RUNNING:
      _RUNNING.remove(self)
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self.active and _is_runtime_failure(error):
      # Not raised further: the exit would wait in jax.distributed.shutdown for the dead peer.
      _exit_with(collective_failure_message(error))


_RUNNING: list[Watchdog] = []  # the watchdogs whose ``with`` block is open


@contextlib.contextmanager
def compiling() -> Iterator[None]:
  """Pauses every running watchdog inside the block (compilation waits on no peer)."""
  with contextlib.ExitStack() as stack:
    for dog in list(_RUNNING):
      stack.enter_context(dog.paused())
    yield


class CompiledAhead:
  """Calls ``jitted`` through its ahead-of-time compilation, compiled with the watchdogs paused.

  A jitted function compiles at its first call, inside the step that then runs: compilation (which
  can take minutes) and the collective (which may wait on a dead peer) would share one stretch
  without beats. Here each new signature of the arguments is first compiled on its own
  (``jitted.lower(*args, **static).compile()`` inside :func:`compiling`), then the compiled
  executable runs under the watchdog's bound. Keyword arguments are ``jitted``'s static ones.
  The executables are kept per static arguments, the newest tried first: a call whose
  arguments it was not compiled for (another shape, dtype, tree or layout) raises ``TypeError``
  or ``ValueError`` before running, and is compiled anew.
  """

  def __init__(self, jitted: Any):
    self.jitted = jitted
    self._compiled: dict[tuple, list[Any]] = {}

  def lower(self, *args: Any, **static: Any) -> Any:
    """``jitted.lower``: the program for these arguments (to read its HLO, say)."""
    return self.jitted.lower(*args, **static)

  def __call__(self, *args: Any, **static: Any) -> Any:
    key = tuple(sorted(static.items()))
    executables = self._compiled.setdefault(key, [])
    for executable in reversed(executables):
      try:
        return executable(*args)
      except (TypeError, ValueError):
        continue
    with compiling():
      executable = self.jitted.lower(*args, **static).compile()
    executables.append(executable)
    return executable(*args)


def fault_point(phase: str, epoch: int) -> None:
  """SIGKILLs this process when :data:`FAULT_ENV` names ``phase``, ``epoch`` and this process.

  For tests: a peer that dies at a chosen point (``checkpoint.Checkpointer.save`` calls it with
  ``"save"`` between the start of its writes and their completion). Without the variable, nothing.
  """
  if os.environ.get(FAULT_ENV) and _fault_point() == (phase, epoch):
    _kill_self()


def _fault_point() -> tuple[str, int] | None:
  """The phase and epoch at which :data:`FAULT_ENV` makes this process kill itself, if any."""
  value = os.environ.get(FAULT_ENV, "")
  if not value:
    return None
  phase, epoch, process = value.split(":")
  import jax

  return (phase, int(epoch)) if jax.process_index() == int(process) else None


def _kill_self() -> None:
  sys.stdout.flush()
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def for_run(config: Any) -> Watchdog:
  """The watchdog of a run: ``config.collective_timeout_s``, active with several processes."""
  import jax

  timeout = config.get("collective_timeout_s", DEFAULT_TIMEOUT_S)
  return Watchdog(timeout, active=jax.process_count() > 1)
