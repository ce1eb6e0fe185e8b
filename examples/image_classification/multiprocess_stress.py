"""Stress test, run by hand (not in CI): many fresh 2-process x 2-device FSDP launches, no hang.

Each launch trains a tiny config (synthetic Fashion-MNIST-format data, four views, 3 epochs) in a
fresh workdir as two processes on localhost (gloo). A launch that has not finished within
``--hang_factor`` times the first launch's wall time (or ``--max_launch_s`` before there is one) is
counted as a hang and both processes are SIGKILLed (JAX catches SIGTERM). Run::

  python -m examples.image_classification.multiprocess_stress --launches=10 \\
    --log=/tmp/stress.log

The summary line gives launches, hangs, failures and wall time, with the machine
(:func:`examples.common.machine.summary`). ``--watchdog_s`` sets ``config.collective_timeout_s``
(0: leave the trainer's default), so a stall the watchdog catches shows as a failed launch with its
message, not as a hang.

The helpers :func:`trainer_command` and :func:`run_processes` are shared with
``multiprocess_test.py``.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STRESS_VIEWS = ("sgdm", "rsgdm-scale", "rsgdm-sign", "rsgdm-topk")


def free_port() -> int:
  """A TCP port nobody listens on now (the OS picks it, so parallel test workers differ)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def trainer_command(
  data_dir: str, workdir: str, num_epochs: int, views: Sequence[str], *extra: str
) -> list[str]:
  """The image trainer on a tiny FSDP config (4-wide CNN, batch 16)."""
  return [
    sys.executable,
    "-m",
    "examples.image_classification.main",
    "--config=examples/image_classification/configs/fashion_mnist_cnn.py",
    f"--workdir={workdir}",
    f"--config.data_dir={data_dir}",
    f"--config.optimizer={','.join(views)}",
    f"--config.num_epochs={num_epochs}",
    "--config.lr_decay_epochs=(1,)",
    "--config.batch_size=16",
    "--config.model_kwargs.width=4",
    "--config.model_kwargs.hidden=16",
    "--config.train_eval_examples=32",
    "--config.sharding=fsdp",
    "--config.progress_bar=False",
    *extra,
  ]


def distributed_flags(num_processes: int, process_id: int, port: int) -> tuple[str, ...]:
  if num_processes == 1:
    return ()
  return (
    "--config.distributed=True",
    f"--config.coordinator_address=127.0.0.1:{port}",
    f"--config.num_processes={num_processes}",
    f"--config.process_id={process_id}",
    "--config.distributed_timeout_s=60",
  )


def process_env(num_processes: int, total_devices: int = 4) -> dict[str, str]:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={total_devices // num_processes}"
  return env


def start(command: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen:
  """Starts ``command`` in the repository root, stdout and stderr to ``log_path``.

  A file, not a pipe: a process that fills an unread pipe would block and look like a hang.
  """
  with open(log_path, "w") as log:
    return subprocess.Popen(
      command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def kill(procs: Sequence[subprocess.Popen]) -> None:
  """SIGKILLs every process (and its children) that is still running, and reaps them."""
  for proc in procs:
    if proc.poll() is None:
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
  for proc in procs:
    proc.wait()


def wait_all(procs: Sequence[subprocess.Popen], deadline: float) -> bool:
  """Waits until every process ended or ``deadline`` (time.monotonic()); True if all ended."""
  for proc in procs:
    try:
      proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      return False
  return True


def run_processes(
  data_dir: str,
  workdir: str,
  num_epochs: int,
  num_processes: int,
  views: Sequence[str],
  timeout_s: float,
  extra: Sequence[str] = (),
) -> tuple[list[int | None], list[str]]:
  """Trains as ``num_processes`` processes of ``4 / num_processes`` devices each.

  Returns each process's exit code (``None``: still running at ``timeout_s``, then SIGKILLed) and
  output.
  """
  port = free_port()
  env = process_env(num_processes)
  os.makedirs(os.path.dirname(os.path.abspath(workdir)), exist_ok=True)
  logs = [f"{workdir}-process{i}.log" for i in range(num_processes)]  # outside the workdir
  procs = [
    start(
      trainer_command(
        data_dir, workdir, num_epochs, views, *distributed_flags(num_processes, i, port), *extra
      ),
      env,
      logs[i],
    )
    for i in range(num_processes)
  ]
  return wait_then_read(procs, logs, timeout_s)


def wait_then_read(
  procs: Sequence[subprocess.Popen], logs: Sequence[str], timeout_s: float
) -> tuple[list[int | None], list[str]]:
  """Waits at most ``timeout_s`` for every process, SIGKILLs what still runs, reads the logs.

  Returns each process's exit code (``None``: still running at ``timeout_s``) and each log's text.
  """
  try:
    wait_all(procs, time.monotonic() + timeout_s)
    codes = [proc.poll() for proc in procs]  # before the kill: None marks a process that hung
  finally:
    kill(procs)
  outputs = []
  for path in logs:
    with open(path, errors="replace") as f:
      outputs.append(f.read())
  return codes, outputs


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--launches", type=int, default=10)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--hang_factor", type=float, default=3.0)
  parser.add_argument("--max_launch_s", type=float, default=600.0)
  parser.add_argument("--watchdog_s", type=int, default=0)
  parser.add_argument("--log", default="", help="also append the per-launch lines to this file")
  args = parser.parse_args(argv)
  # A background job of a non-interactive shell ignores SIGINT: stop on SIGTERM too, through the
  # ``finally`` that SIGKILLs the trainers.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

  def say(line: str) -> None:
    print(line, flush=True)
    if args.log:
      with open(args.log, "a") as f:
        f.write(line + "\n")

  sys.path.insert(0, ROOT)
  from examples.common import machine
  from examples.image_classification import testdata

  extra = (f"--config.collective_timeout_s={args.watchdog_s}",) if args.watchdog_s else ()
  say(f"stress: {args.launches} launches of 2 processes x 2 devices, FSDP, {args.epochs} epochs")
  say(f"machine: {machine.summary(machine.describe())}")
  hangs = failures = 0
  normal_s = None
  started_all = time.monotonic()
  with tempfile.TemporaryDirectory(prefix="rsgd-stress-") as tmp:
    data_dir = os.path.join(tmp, "data")
    testdata.write_fashion_mnist(data_dir, train=256, test=64, size=8)
    for launch in range(args.launches):
      bound = args.max_launch_s if normal_s is None else args.hang_factor * normal_s
      started = time.monotonic()
      codes, outputs = run_processes(
        data_dir,
        os.path.join(tmp, f"run{launch}"),
        args.epochs,
        2,
        STRESS_VIEWS,
        bound,
        extra,
      )
      seconds = time.monotonic() - started
      if None in codes:
        hangs += 1
        verdict = f"HANG (killed after {bound:.0f} s)"
      elif any(codes):
        failures += 1
        tails = " | ".join(o.strip().splitlines()[-1] if o.strip() else "" for o in outputs)
        verdict = f"FAILED (exit codes {codes}: {tails})"
      else:
        verdict = "ok"
        normal_s = seconds if normal_s is None else min(normal_s, seconds)
      say(f"launch {launch + 1}/{args.launches}: {verdict} in {seconds:.1f} s")
  total = time.monotonic() - started_all
  say(
    f"result: {args.launches} launches, {hangs} hangs, {failures} failures, "
    f"{total:.0f} s wall in all"
  )
  return 1 if hangs or failures else 0


if __name__ == "__main__":
  sys.exit(main())
