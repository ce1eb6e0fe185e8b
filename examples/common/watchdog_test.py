"""The stall watchdog, in a child process (it ends its process with ``os._exit``)."""

import os
import subprocess
import sys
import textwrap
import time

import ml_collections

from examples.common import watchdog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_child(
  body: str, timeout_s: float = 60, **env: str
) -> tuple[subprocess.CompletedProcess, float]:
  script = "import time\nfrom examples.common import watchdog\n" + textwrap.dedent(body)
  started = time.monotonic()
  child = subprocess.run(
    [sys.executable, "-c", script],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout_s,
    env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
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


def test_compilation_does_not_count_against_the_bound():
  # A "compilation" of 1.5 s under a bound of 0.5 s: the watchdog is paused while it runs, and its
  # clock starts again after it (a 1.5 s silence after the compiled call still ends the process).
  child, _ = _run_child(
    """
    class Lowered:
      def __init__(self, counts):
        self.counts = counts
      def compile(self):
        self.counts.append(1)
        time.sleep(1.5)
        return lambda x: x + 1

    class Jitted:
      counts = []
      def lower(self, x):
        return Lowered(self.counts)

    ahead = watchdog.CompiledAhead(Jitted())
    with watchdog.Watchdog(0.5, poll_s=0.05):
      print(ahead(1), ahead(2), len(Jitted.counts), flush=True)
      time.sleep(1.5)
    print("not reached")
    """
  )
  assert child.returncode == watchdog.EXIT_CODE, child.stderr
  assert child.stdout.split() == ["2", "3", "1"]  # compiled once, then the executable reused
  (line,) = [line for line in child.stderr.splitlines() if line.startswith("error:")]
  assert "no progress for" in line


def test_compiled_ahead_equals_the_jitted_function_and_compiles_once_per_signature():
  import jax
  import jax.numpy as jnp
  import numpy as np

  def scaled(x, y, which="double"):
    return x * (2.0 if which == "double" else 3.0) + y

  ahead = watchdog.CompiledAhead(jax.jit(scaled, static_argnames="which"))
  a, b = np.arange(3.0, dtype=np.float32), np.ones(3, np.float32)
  np.testing.assert_array_equal(ahead(a, b), a * 2 + b)
  np.testing.assert_array_equal(ahead(a, b, which="triple"), a * 3 + b)
  np.testing.assert_array_equal(ahead(a + 1, b), (a + 1) * 2 + b)  # same signature: reused
  c = np.arange(5.0, dtype=np.float32)
  np.testing.assert_array_equal(ahead(c, c), c * 3)  # another shape: compiled anew
  np.testing.assert_array_equal(ahead(jnp.asarray(a), b), a * 2 + b)
  assert {key: len(found) for key, found in ahead._compiled.items()} == {
    (("which", "triple"),): 1,
    (): 2,
  }


def test_the_fault_point_kills_the_process_in_the_named_phase_and_epoch():
  body = """
    with watchdog.Watchdog(100) as dog:
      for epoch in range(3):
        for phase in ("train", "evaluate"):
          dog.phase(phase, epoch)
          print(phase, epoch, flush=True)
          dog.beat()
          print("beat", flush=True)
        dog.phase("save", epoch)
        watchdog.fault_point("save", epoch)
        print("saved", flush=True)
    """
  for fault, last in [("evaluate:1:0", ["evaluate", "1"]), ("save:2:0", ["evaluate", "2", "beat"])]:
    child, _ = _run_child(body, **{watchdog.FAULT_ENV: fault})
    assert child.returncode == -9, child.stderr
    assert child.stdout.split()[-len(last) :] == last, child.stdout
  # Another process's fault point: this one (process 0) runs to the end.
  child, _ = _run_child(body, **{watchdog.FAULT_ENV: "evaluate:1:1"})
  assert child.returncode == 0 and child.stdout.split()[-3:] == ["2", "beat", "saved"]
