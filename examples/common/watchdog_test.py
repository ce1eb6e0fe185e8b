"""The stall watchdog, in a child process (it ends its process with ``os._exit``)."""

import os
import subprocess
import sys
import textwrap
import time

import ml_collections

from examples.common import watchdog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_child(body: str, timeout_s: float = 60) -> tuple[subprocess.CompletedProcess, float]:
  script = "import time\nfrom examples.common import watchdog\n" + textwrap.dedent(body)
  started = time.monotonic()
  child = subprocess.run(
    [sys.executable, "-c", script],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout_s,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  return child, time.monotonic() - started


def test_a_stall_ends_the_process_with_the_relaunch_message():
  # The main thread "hangs" in a call that never returns in time (as a blocked collective does).
  child, seconds = _run_child(
    """
    with watchdog.Watchdog(0.5) as dog:
      dog.beat()
      time.sleep(40)
    print("not reached")
    """
  )
  assert child.returncode == watchdog.EXIT_CODE, child.stderr
  assert "not reached" not in child.stdout
  lines = [line for line in child.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, child.stderr
  assert "no progress for" in lines[0] and "relaunched with the same command" in lines[0]
  assert "resumes from its last checkpoint" in lines[0]
  assert seconds < 30  # the bound (0.5 s) and the interpreter's start-up, far below the sleep


def test_beats_keep_a_slow_but_moving_run_alive():
  child, _ = _run_child(
    """
    with watchdog.Watchdog(0.5) as dog:
      for _ in range(30):  # 1.5 s in all, never 0.5 s without a beat
        time.sleep(0.05)
        dog.beat()
    print("finished")
    """
  )
  assert child.returncode == 0, child.stderr
  assert child.stdout.strip() == "finished"
  assert "error:" not in child.stderr


def test_an_inactive_or_unbounded_watchdog_never_fires():
  child, _ = _run_child(
    """
    with watchdog.Watchdog(0.2, active=False), watchdog.Watchdog(0):
      time.sleep(1.0)
    print("finished")
    """
  )
  assert child.returncode == 0, child.stderr
  assert child.stdout.strip() == "finished"


def test_a_single_process_run_gets_an_inactive_watchdog():
  config = ml_collections.ConfigDict({"collective_timeout_s": 5})
  dog = watchdog.for_run(config)
  assert dog.timeout_s == 5 and not dog.active
  with dog:
    assert dog._thread is None


def test_the_message_names_the_silence():
  assert watchdog.stall_message(61.2).startswith("error: no progress for 61 s ")


def test_a_failed_collective_is_the_relaunch_line_not_a_traceback():
  # What the survivor's next step raises when its gloo peer was killed.
  child, _ = _run_child(
    """
    import jax
    with watchdog.Watchdog(100):
      raise jax.errors.JaxRuntimeError(
        "UNKNOWN: Gloo all-reduce failed: [pair.cc:547] Connection closed by peer [127.0.0.1]:1"
      )
    """
  )
  assert child.returncode == watchdog.EXIT_CODE, child.stderr
  assert "Traceback" not in child.stderr
  (line,) = [line for line in child.stderr.splitlines() if line.startswith("error:")]
  assert "Connection closed by peer" in line and "relaunched with the same command" in line


def test_other_errors_pass_through_the_watchdog():
  child, _ = _run_child(
    """
    with watchdog.Watchdog(100):
      raise ValueError("a bug")
    """
  )
  assert child.returncode == 1 and "ValueError: a bug" in child.stderr
