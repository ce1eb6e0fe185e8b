"""Two processes x 2 CPU devices on localhost (gloo), FSDP, one shared workdir, against one process
x 4 devices: the same metrics, only process 0 writing records, and checkpoints that resume across
the change of process count in both directions."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from examples.common.metrics import read_metrics
from examples.image_classification import testdata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIEWS = ("sgdm", "rsgdm-topk")
RESUMED = "Resumed from the checkpoint of epoch 0"
TIMEOUT_S = 300  # per launch; a hung peer fails the test instead of hanging CI


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(data_dir, workdir, num_epochs, *extra):
  return [
    sys.executable,
    "-m",
    "examples.image_classification.main",
    "--config=examples/image_classification/configs/fashion_mnist_cnn.py",
    f"--workdir={workdir}",
    f"--config.data_dir={data_dir}",
    f"--config.optimizer={','.join(VIEWS)}",
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


def _launch(data_dir, workdir, num_epochs, num_processes) -> list[str]:
  """Runs the trainer as ``num_processes`` processes of ``4 / num_processes`` devices each; their
  outputs."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // num_processes}"
  port = _free_port()
  procs = []
  for process_id in range(num_processes):
    extra = ()
    if num_processes > 1:
      extra = (
        "--config.distributed=True",
        f"--config.coordinator_address=127.0.0.1:{port}",
        f"--config.num_processes={num_processes}",
        f"--config.process_id={process_id}",
        "--config.distributed_timeout_s=60",
      )
    procs.append(
      subprocess.Popen(
        _command(data_dir, workdir, num_epochs, *extra),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
      )
    )
  outputs = []
  try:
    outputs = [proc.communicate(timeout=TIMEOUT_S)[0] for proc in procs]
  except subprocess.TimeoutExpired:
    for proc in procs:
      proc.kill()
    pytest.fail(f"a trainer process did not finish within {TIMEOUT_S} s")
  for proc, output in zip(procs, outputs, strict=True):
    assert proc.returncode == 0, output[-3000:]
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


def test_two_processes_match_one_and_checkpoints_cross_the_process_count(tmp_path):
  data_dir = str(tmp_path / "data")
  testdata.write_fashion_mnist(data_dir, train=64, test=24, size=8)
  one = str(tmp_path / "one")
  _launch(data_dir, one, 2, num_processes=1)
  want = _records(one)

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
