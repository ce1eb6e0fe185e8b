"""Two processes x 2 CPU devices on localhost (gloo), FSDP, one shared workdir, against one process
x 4 devices: the same metrics, only process 0 writing records, checkpoints that resume across the
change of process count in both directions, and a peer killed mid-epoch, mid-evaluation or
mid-checkpoint-save: with the default settings the survivor ends within two minutes
saying to relaunch (exit code 75), and the relaunch resumes to the same metrics. And the
compressed exchange (``grad_compression="sign"``, replicated): 2 x 2 against 1 x 4.

Every wait is bounded and every process is ended with SIGKILL (JAX catches SIGTERM); ports come
from the OS and each test has its own ``tmp_path``, so the tests may run in parallel workers.
"""

import json
import os
import shutil
import signal
import time

import pytest

from examples.common import watchdog
from examples.common.metrics import read_metrics
from examples.image_classification import testdata
from examples.image_classification.multiprocess_stress import (
  distributed_flags,
  free_port,
  kill,
  process_env,
  run_processes,
  start,
  trainer_command,
  wait_then_read,
)

pytestmark = pytest.mark.long

VIEWS = ("sgdm", "rsgdm-topk")
RESUMED = "Resumed from the checkpoint of epoch 0"
TIMEOUT_S = 300  # per launch; a hung peer fails the test instead of hanging CI


def _launch(data_dir, workdir, num_epochs, num_processes) -> list[str]:
  """Runs the trainer as ``num_processes`` processes of ``4 / num_processes`` devices each; their
  outputs."""
  codes, outputs = run_processes(data_dir, workdir, num_epochs, num_processes, VIEWS, TIMEOUT_S)
  if None in codes:
    pytest.fail(f"a trainer process did not finish within {TIMEOUT_S} s: {outputs[0][-2000:]}")
  for code, output in zip(codes, outputs, strict=True):
    assert code == 0, output[-3000:]
  return outputs


def _records(workdir):
  return {name: read_metrics(os.path.join(workdir, name)) for name in VIEWS}


def _assert_same_metrics(got, want):
  for name in VIEWS:
    assert [r["epoch"] for r in got[name]] == [r["epoch"] for r in want[name]], name
    for g, w in zip(got[name], want[name], strict=True):
      for field, value in w.items():
        if field != "seconds":  # float rounding differs across layouts; stated tolerance
          assert g[field] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, field, g["epoch"])


@pytest.fixture(scope="module")
def data_and_reference(tmp_path_factory):
  """The data and an uninterrupted 1-process x 4-device run of 2 epochs (shared by the tests)."""
  root = tmp_path_factory.mktemp("multiprocess")
  data_dir = str(root / "data")
  testdata.write_fashion_mnist(data_dir, train=64, test=24, size=8)
  one = str(root / "one")
  _launch(data_dir, one, 2, num_processes=1)
  return data_dir, one, _records(one)


def test_two_processes_match_one_and_checkpoints_cross_the_process_count(
  tmp_path, data_and_reference
):
  data_dir, one, want = data_and_reference

  two_then_one = str(tmp_path / "two_then_one")
  _launch(data_dir, two_then_one, 1, num_processes=2)
  written = _records(two_then_one)
  _assert_same_metrics(written, {name: want[name][:1] for name in VIEWS})
  # One record per epoch and view: process 1 wrote none (its lines would repeat process 0's).
  assert all(len(written[name]) == 1 for name in VIEWS)
  config = json.loads((tmp_path / "two_then_one" / "config.json").read_text())
  assert config["num_processes"] == 2 and config["sharding"] == "fsdp"
  # A 2-process checkpoint, restored in 1 (and not trained again from scratch).
  (output,) = _launch(data_dir, two_then_one, 2, num_processes=1)
  assert RESUMED in output, output[-3000:]
  _assert_same_metrics(_records(two_then_one), want)

  # And the reverse: the 1-process run as if killed after its first epoch (its epoch-1 checkpoint
  # gone, so it resumes from epoch 0 and cuts its records back), restored in 2 processes.
  one_then_two = tmp_path / "one_then_two"
  shutil.copytree(one, one_then_two)
  shutil.rmtree(one_then_two / "checkpoints" / "1")
  outputs = _launch(data_dir, str(one_then_two), 2, num_processes=2)
  assert all(RESUMED in output for output in outputs), outputs[0][-3000:]
  _assert_same_metrics(_records(str(one_then_two)), want)


PHASES = ("train", "evaluate", "save")  # mid-epoch, mid-evaluation, mid-checkpoint-save
# Each launch: the phase in which a process kills itself, and which process. Process 0 dying within
# the save makes JAX's client abort the survivor (its coordination service is gone); the parent that
# supervises each process turns that into the relaunch line (examples.common.supervisor).
DEATHS = {phase: (phase, 1) for phase in PHASES} | {"save-coordinator": ("save", 0)}
DEAD_PEER_LIMIT_S = 120  # from a peer's death to the survivor's exit, with the default settings
RELAUNCHED = (
  "evaluate"  # the workdir relaunched (while the survivor of a dead peer in "save" waits)
)


def _start_two(data_dir, workdir, logs, env) -> list:
  port = free_port()
  return [
    start(trainer_command(data_dir, workdir, 2, VIEWS, *distributed_flags(2, i, port)), env, log)
    for i, log in enumerate(logs)
  ]


def test_a_peer_killed_in_each_phase_ends_the_survivor_and_the_relaunch_resumes(
  tmp_path, data_and_reference
):
  """Process 1 SIGKILLs itself in epoch 1 (``watchdog.FAULT_ENV``): after its first step, after its
  first evaluation batch, or in the checkpoint save once its writes started; and process 0 (JAX's
  coordinator) in the save. With the default settings (no ``collective_timeout_s`` given) the
  survivor ends within two minutes with the relaunch line and exit code 75: at once where its
  collective fails, at the watchdog's bound in the save (it waits in Orbax's barrier), at once
  through its supervising parent when JAX aborts it for the dead coordinator. The four launches run
  at once, and one workdir is relaunched while the save's survivor still waits, so that the waits
  overlap."""
  data_dir, _, want = data_and_reference
  env = process_env(2)
  launches = {}
  for name, (phase, dead) in DEATHS.items():
    logs = [str(tmp_path / f"{name}-process{i}.log") for i in range(2)]
    procs = _start_two(
      data_dir, str(tmp_path / name), logs, {**env, watchdog.FAULT_ENV: f"{phase}:1:{dead}"}
    )
    # (survivor, peer) and (the survivor's log, the peer's log)
    launches[name] = (procs[::-1], logs[::-1]) if dead == 0 else (procs, logs)
  relaunch_logs = [str(tmp_path / f"relaunch-process{i}.log") for i in range(2)]
  relaunched: list = []
  died: dict[str, float] = {}
  ended: dict[str, float] = {}
  deadline = time.monotonic() + TIMEOUT_S + DEAD_PEER_LIMIT_S
  try:
    while len(ended) < len(DEATHS) and time.monotonic() < deadline:
      now = time.monotonic()
      for name, ((survivor, peer), _) in launches.items():
        if name not in died and peer.poll() is not None:
          died[name] = now
        if name not in ended and survivor.poll() is not None:
          ended[name] = now
      if RELAUNCHED in ended and not relaunched:
        # Relaunching both processes with the same command.
        relaunched = _start_two(data_dir, str(tmp_path / RELAUNCHED), relaunch_logs, env)
      time.sleep(0.1)
  finally:
    for procs, _ in launches.values():
      kill(procs)
  try:
    for name, ((survivor, peer), logs) in launches.items():
      with open(logs[0]) as f:
        output = f.read()
      assert peer.returncode == -signal.SIGKILL, (name, _tail(logs[1]))
      assert name in ended, f"{name}: the survivor ran {DEAD_PEER_LIMIT_S} s after the kill"
      waited = ended[name] - died[name]
      assert survivor.returncode == watchdog.EXIT_CODE, (name, output[-3000:])
      errors = [line for line in output.splitlines() if line.startswith("error:")]
      assert len(errors) == 1 and watchdog.RELAUNCH in errors[0], (name, output[-3000:])
      assert waited < DEAD_PEER_LIMIT_S, (name, waited)
      print(f"{name}: the survivor ended {waited:.1f} s after its peer's death")
  finally:
    codes, outputs = wait_then_read(relaunched, relaunch_logs, TIMEOUT_S)
  # The relaunch resumes and ends where an uninterrupted run does.
  assert codes == [0, 0], outputs[0][-3000:]
  assert all(RESUMED in output for output in outputs), outputs[0][-3000:]
  _assert_same_metrics(_records(str(tmp_path / RELAUNCHED)), want)


def _tail(path: str) -> str:
  with open(path) as f:
    return f.read()[-3000:]


@pytest.mark.parametrize("exchange", ["all_gather", "two_phase"])
def test_two_processes_with_sign_compression_match_one(tmp_path, exchange):
  """``grad_compression="sign"`` (error feedback on): 2 processes x 2 devices exchange the packed
  sign bits over gloo and give the metrics of 1 process x 4 devices (the memory ratio included),
  through either exchange (the two-phase one adds an all-to-all and the server memories). One
  epoch, one view besides the base: the cheapest run that exercises the exchange, the memories and
  a view across processes. Both launches run at once (most of each is start-up and compilation)."""
  data_dir = str(tmp_path / "data")
  testdata.write_fashion_mnist(data_dir, train=64, test=24, size=8)
  views = ("sgdm", "rsgdm-scale")
  extra = (
    "--config.sharding=replicated",
    "--config.grad_compression=sign",
    f"--config.compression_exchange={exchange}",
  )
  port = free_port()
  procs, logs = [], []
  for num_processes in (1, 2):
    workdir = str(tmp_path / f"processes{num_processes}")
    for i in range(num_processes):
      flags = distributed_flags(num_processes, i, port)
      logs.append(str(tmp_path / f"processes{num_processes}-{i}.log"))
      command = trainer_command(data_dir, workdir, 1, views, *flags, *extra)
      procs.append(start(command, process_env(num_processes), logs[-1]))
  codes, outputs = wait_then_read(procs, logs, TIMEOUT_S)
  if None in codes:
    pytest.fail(f"a trainer process did not finish within {TIMEOUT_S} s: {outputs[-1][-2000:]}")
  for code, output in zip(codes, outputs, strict=True):
    assert code == 0, output[-3000:]
  records = {}
  for num_processes in (1, 2):
    workdir = tmp_path / f"processes{num_processes}"
    config = json.loads((workdir / "config.json").read_text())
    assert config["grad_compression"] == "sign" and config["sharding"] == "replicated"
    assert config["compression_exchange"] == exchange
    assert config["num_processes"] == (2 if num_processes == 2 else 0)
    records[num_processes] = {name: read_metrics(str(workdir / name)) for name in views}
  for name in views:
    (two,), (one,) = records[2][name], records[1][name]
    assert one["memory_ratio"] > 0
    for field, value in one.items():
      if field != "seconds":
        assert two[field] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, field)
