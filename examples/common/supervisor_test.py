"""The supervising parent of a multi-process run, with tiny Python children in place of trainers."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import ml_collections
import pytest

from examples.common import supervisor, watchdog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What JAX's client printed before its abort when process 0 died within a checkpoint save (measured).
JAX_ABORT = (
  "F1207 13:56:03.829169   18909 client.h:80] Terminating process because the JAX distributed "
  "service detected fatal errors. This most likely indicates that another task died; see the "
  "other task logs for more details.\n*** Check failure stack trace: ***\n"
  "    @     0x7f8d1f7040ee  xla::CoordinationServiceAgent::SetError()\n"
)


def _child(body: str) -> list[str]:
  return [sys.executable, "-c", "import os, sys, time\n" + textwrap.dedent(body)]


def _parent(command: list[str]) -> subprocess.Popen:
  """A process that supervises ``command`` as the entry point does; stderr piped."""
  script = (
    "import sys\nfrom examples.common import supervisor\n"
    f"supervisor.exit_like(supervisor.run_child({command!r}))\n"
  )
  return subprocess.Popen(
    [sys.executable, "-c", script],
    cwd=ROOT,
    stderr=subprocess.PIPE,
    env={**os.environ, "PYTHONPATH": ROOT},
    start_new_session=True,
  )


def _kill(proc: subprocess.Popen) -> None:
  if proc.poll() is None:
    os.killpg(proc.pid, signal.SIGKILL)
  proc.wait(timeout=30)
  if proc.stderr is not None:
    proc.stderr.close()


def test_jax_abort_on_a_dead_coordinator_ends_with_the_relaunch_line(capfd):
  abort = f"sys.stderr.write({JAX_ABORT!r}); sys.stderr.flush(); os.abort()"
  status = supervisor.run_child(_child(abort))
  err = capfd.readouterr().err
  assert status == 75 == watchdog.EXIT_CODE
  assert "Terminating process because the JAX distributed service" in err  # passed through
  last = err.strip().splitlines()[-1]
  assert last.startswith("error:") and watchdog.RELAUNCH in last and "process 0" in last


def test_other_endings_pass_through(capfd):
  other_abort = "sys.stderr.write('F1207 xla crash: bad shape\\n'); sys.stderr.flush(); os.abort()"
  assert supervisor.run_child(_child(other_abort)) == -signal.SIGABRT
  # JAX's text, but an ordinary exit: not the abort.
  assert supervisor.run_child(_child(f"sys.stderr.write({JAX_ABORT!r}); sys.exit(3)")) == 3
  assert supervisor.run_child(_child("sys.exit(0)")) == 0
  err = capfd.readouterr().err
  assert "bad shape" in err and "error:" not in err


def test_the_child_runs_with_the_marker_and_the_same_stdout(capfd):
  body = f"print(os.environ.get({supervisor.CHILD_ENV!r}), flush=True)"
  assert supervisor.run_child(_child(body)) == 0
  assert capfd.readouterr().out == f"{os.getpid()}\n"  # the parent's pid


@pytest.mark.parametrize("signum", [signal.SIGABRT, signal.SIGKILL])
def test_a_crash_of_the_child_is_a_crash_of_the_parent(signum):
  body = (
    f"sys.stderr.write('other failure\\n'); sys.stderr.flush(); os.kill(os.getpid(), {int(signum)})"
  )
  parent = _parent(_child(body))
  try:
    _, err = parent.communicate(timeout=60)
  finally:
    _kill(parent)
  assert parent.returncode == -signum
  assert b"other failure" in err and b"error:" not in err


def test_stderr_is_streamed_live_and_sigterm_is_forwarded(tmp_path):
  # The child writes a line, then waits for SIGTERM: the line must reach the parent's stderr while
  # the child still runs, and the parent's SIGTERM must reach the child (which exits 7 on it).
  body = """
    import signal
    signal.signal(signal.SIGTERM, lambda *_: (sys.stderr.write('child got SIGTERM\\n'), os._exit(7)))
    sys.stderr.write('started\\n'); sys.stderr.flush()
    time.sleep(60)
    """
  parent = _parent(_child(body))
  try:
    assert parent.stderr is not None
    assert parent.stderr.readline() == b"started\n"  # bounded: the child sleeps 60 s at most
    assert parent.poll() is None
    parent.send_signal(signal.SIGTERM)
    rest = parent.stderr.read()
    parent.wait(timeout=30)
  finally:
    _kill(parent)
  assert parent.returncode == 7 and b"child got SIGTERM" in rest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_parent_takes_the_child_with_it():
  parent = _parent(
    _child(
      "from examples.common import supervisor\n"
      "supervisor.die_with_parent()  # as the entry point does first in the child\n"
      "sys.stderr.write(f'{os.getpid()}\\n'); sys.stderr.flush(); time.sleep(60)"
    )
  )
  try:
    assert parent.stderr is not None
    child_pid = int(parent.stderr.readline())
    os.kill(parent.pid, signal.SIGKILL)  # the parent only: the child has its own process group
    parent.wait(timeout=30)
    deadline = time.monotonic() + 20
    while _alive(child_pid) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert not _alive(child_pid)
  finally:
    _kill(parent)


def _alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
  except FileNotFoundError:
    return False


def test_only_a_multi_process_run_outside_the_child_is_wrapped(monkeypatch):
  monkeypatch.delenv(supervisor.CHILD_ENV, raising=False)
  assert supervisor.wanted(ml_collections.ConfigDict({"distributed": True}))
  assert not supervisor.wanted(ml_collections.ConfigDict({"distributed": False}))
  assert not supervisor.wanted(ml_collections.ConfigDict({"num_epochs": 1}))
  monkeypatch.setenv(supervisor.CHILD_ENV, "1")
  assert not supervisor.wanted(ml_collections.ConfigDict({"distributed": True}))
