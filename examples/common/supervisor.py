"""A parent for each process of a multi-process run: JAX's abort on a dead coordinator, as one line.

When process 0 (the host of JAX's coordination service) dies, JAX's C++ client in every other
process ends its process at once with ``abort()`` and a C++ stack (exit code 134), where the
survivor waits on something that does not fail first (within a checkpoint save; on accelerators).
No Python code runs before that abort: JAX's public API gives no hook, a Python
``missing_heartbeat_callback`` crashes inside the C++ client, and a SIGABRT handler could not tell
this abort from a genuine crash of XLA. So the entry point (:mod:`examples.common.entry`) runs a
run that has several processes (``config.distributed``) as a child of a thin parent, which:

* runs the same command again (``python -m <the family's main module> ARGS``) with
  :data:`CHILD_ENV` set, stdin and stdout shared, the child's stderr passed through live (and its
  last :data:`TAIL_BYTES` kept);
* forwards SIGINT and SIGTERM to the child (the child has its own process group, so a Ctrl-C in
  the terminal reaches it once, through the parent); on Linux the child asks to be SIGKILLed when
  the parent dies (``PR_SET_PDEATHSIG``, :func:`die_with_parent`), so a SIGKILLed parent leaves
  nothing running;
* when the child ended by SIGABRT and the end of its stderr holds JAX's message that the distributed
  service failed (:data:`JAX_SERVICE_FAILURE`), prints the watchdog's relaunch line
  (:func:`examples.common.watchdog.coordinator_died_message`) and exits with
  :data:`~examples.common.watchdog.EXIT_CODE` (75);
* otherwise ends as the child did: the same exit code, or the same signal (a crash stays a crash).

A single-process run is not wrapped: it has no coordinator to lose. The parent costs one more
start of Python with the trainer's imports (measured: about 2 s and 230 MB resident on 2 CPU cores).
"""

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence

from examples.common import watchdog

# Set in the child to the parent's pid: it trains instead of starting another child.
CHILD_ENV = "EXAMPLES_SUPERVISED"
TAIL_BYTES = 16384  # the end of the child's stderr that is searched for JAX's message
# What JAX's client writes before its abort when the coordination service (process 0) is gone.
JAX_SERVICE_FAILURE = (
  "Terminating process because the JAX distributed service detected fatal errors",
)
FORWARDED = (signal.SIGINT, signal.SIGTERM)


def wanted(config: object) -> bool:
  """Whether this process should start the child: a multi-process run, not already the child."""
  get = getattr(config, "get", None)
  return bool(get and get("distributed", False)) and not os.environ.get(CHILD_ENV)


def child_command(argv: Sequence[str]) -> list[str] | None:
  """``python -m <main module> argv[1:]``; ``None`` when ``__main__`` was not run with ``-m``."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is None or not spec.name:
    return None
  return [sys.executable, "-m", spec.name, *argv[1:]]


def is_coordinator_abort(returncode: int, stderr_tail: bytes) -> bool:
  """Whether a child that ended with ``returncode`` was aborted by JAX for a dead coordinator."""
  aborted = returncode in (-signal.SIGABRT, 128 + signal.SIGABRT)
  text = stderr_tail.decode("utf-8", errors="replace")
  return aborted and any(marker in text for marker in JAX_SERVICE_FAILURE)


def die_with_parent() -> None:
  """In the child (:data:`CHILD_ENV` holds the parent's pid): SIGKILL for it when the parent dies.

  Linux's ``PR_SET_PDEATHSIG``, set by the child itself at its start rather than in a
  ``preexec_fn``: a ``preexec_fn`` makes ``subprocess`` fork the parent's Python, which JAX (already
  imported there) warns against. A parent that died before the call ends the child at once.
  """
  parent = os.environ.get(CHILD_ENV, "")
  if not sys.platform.startswith("linux") or not parent.isdigit():
    return
  import ctypes

  pr_set_pdeathsig = 1
  ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
  if os.getppid() != int(parent):  # the parent died before the call
    os._exit(128 + signal.SIGKILL)


@contextlib.contextmanager
def _forwarding(child: subprocess.Popen) -> Iterator[None]:
  def forward(signum: int, _frame: object) -> None:
    with contextlib.suppress(ProcessLookupError):
      child.send_signal(signum)

  previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def run_child(command: Sequence[str], env: dict[str, str] | None = None) -> int:
  """Runs ``command`` as the child; returns the status this process should end with.

  The child's stderr is copied to this process's stderr as it comes. The result is
  :data:`~examples.common.watchdog.EXIT_CODE` (the relaunch line printed) for JAX's abort on a
  dead coordinator, else the child's ``returncode`` (negative: the signal that ended it).
  Must be called from the main thread (it sets signal handlers).
  """
  child_env = {**(os.environ if env is None else env), CHILD_ENV: str(os.getpid())}
  linux = sys.platform.startswith("linux")
  child = subprocess.Popen(
    list(command),
    env=child_env,
    stderr=subprocess.PIPE,
    process_group=0 if linux else None,  # without PDEATHSIG, stay in the parent's group
  )
  assert child.stderr is not None
  tail = b""
  out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
  with _forwarding(child):
    while chunk := os.read(child.stderr.fileno(), 65536):
      tail = (tail + chunk)[-TAIL_BYTES:]
      if out is not None:
        out.write(chunk)
        out.flush()
      else:  # a text-only stderr (pytest's capture)
        sys.stderr.write(chunk.decode("utf-8", errors="replace"))
        sys.stderr.flush()
    child.stderr.close()
    returncode = child.wait()
  if is_coordinator_abort(returncode, tail):
    sys.stderr.write(watchdog.coordinator_died_message() + "\n")
    sys.stderr.flush()
    return watchdog.EXIT_CODE
  return returncode


def exit_like(status: int) -> None:
  """Ends this process with ``status``: an exit code, or (negative) the signal that ended the child.

  A signal is raised on this process with its default action, so that whoever started the run sees
  the crash as the child's (``-6`` for an abort), not as an ordinary exit code.
  """
  if status >= 0:
    sys.exit(status)
  sys.stdout.flush()
  sys.stderr.flush()
  signum = -status
  with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP take no handler
    signal.signal(signum, signal.SIG_DFL)
  os.kill(os.getpid(), signum)
  sys.exit(128 + signum)  # a signal whose default action does not end the process
