"""A full disk during a training run (fault injection): one RunIOError naming the file, nothing
lost, and once there is space again the same command resumes to the metrics of an uninterrupted
run."""

import errno
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from examples.common.checkpoint import TMP_SUFFIX
from examples.common.fileio import RunIOError
from examples.common.metrics import read_metrics
from examples.image_classification import testdata, train
from examples.image_classification.train_test import tiny_config

VIEWS = "sgdm,rsgdm-scale"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_and_uninterrupted(tmp_path_factory):
  root = tmp_path_factory.mktemp("io_faults")
  data_dir = str(root / "data")
  testdata.write_fashion_mnist(data_dir, train=64, test=24, size=8)
  records = train.train_and_evaluate(
    tiny_config(data_dir, optimizer=VIEWS), str(root / "run")
  ).records
  return data_dir, records


def _no_space() -> OSError:
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _without_seconds(records):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _fails_then_resumes(monkeypatch, os_function, fake, message, data_and_uninterrupted, workdir):
  """Trains with ``os.<os_function>`` faked: one RunIOError; then, undone, the rerun resumes."""
  data_dir, uninterrupted = data_and_uninterrupted
  config = tiny_config(data_dir, optimizer=VIEWS)
  monkeypatch.setattr(os, os_function, fake)
  with pytest.raises(RunIOError, match=message):
    train.train_and_evaluate(config, str(workdir))
  monkeypatch.undo()
  # Epoch 1 was not checkpointed, and no temporary checkpoint is left.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["0"]
  resumed = train.train_and_evaluate(config, str(workdir)).records
  for name, records in uninterrupted.items():
    assert _without_seconds(resumed[name]) == _without_seconds(records)
    assert _without_seconds(read_metrics(str(workdir / name))) == _without_seconds(records)


def test_a_full_disk_at_a_metrics_write(tmp_path, monkeypatch, data_and_uninterrupted):
  real_replace = os.replace

  def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("metrics.jsonl"):
      with open(src) as f:
        if '"epoch": 1' in f.read():  # epoch 0 is written, epoch 1 meets the full disk
          raise _no_space()
    return real_replace(src, dst, *args, **kwargs)

  message = r"cannot write .*metrics\.jsonl: No space left on device"
  _fails_then_resumes(
    monkeypatch, "replace", replace, message, data_and_uninterrupted, tmp_path / "run"
  )


def test_a_full_disk_at_a_checkpoint(tmp_path, monkeypatch, data_and_uninterrupted):
  real_rename = os.rename

  def rename(src, dst, *args, **kwargs):
    if f"1{TMP_SUFFIX}" in str(src):  # Orbax's final rename of the checkpoint of epoch 1
      raise _no_space()
    return real_rename(src, dst, *args, **kwargs)

  message = r"cannot write the checkpoint .*checkpoints/1: No space"
  _fails_then_resumes(
    monkeypatch, "rename", rename, message, data_and_uninterrupted, tmp_path / "run"
  )


def _in_a_full_disk(
  disk, filler_kb: int, command: list[str], listing
) -> subprocess.CompletedProcess:
  """Runs ``command`` with a real 1 MiB tmpfs at ``disk`` (``filler_kb`` of it taken), mounted in
  a private mount namespace (needs root or CAP_SYS_ADMIN; skips otherwise); then writes the
  listing of ``<disk>/run/checkpoints`` to ``listing`` (the tmpfs ends with the namespace)."""
  if shutil.which("unshare") is None:
    pytest.skip("no unshare to mount a small tmpfs")
  disk.mkdir()
  mount = f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(disk))}"
  probe = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True, text=True)
  if probe.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs in a private namespace: {probe.stderr.strip()}")
  filler = f"dd if=/dev/zero of={shlex.quote(str(disk / 'filler'))} bs=1k count={filler_kb}"
  checkpoints = shlex.quote(str(disk / "run" / "checkpoints"))
  script = (
    f"{mount} && {filler} status=none || exit 99\n"
    f"{shlex.join(command)}\nrc=$?\nls -A {checkpoints} > {shlex.quote(str(listing))}\nexit $rc"
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run(
    ["unshare", "-m", "sh", "-c", script],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


# absl's INFO lines (the run's own log: the epochs' metrics); everything else is checked.
_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ ")


def test_a_real_full_disk_at_a_checkpoint_prints_one_line_and_leaves_no_temporary(tmp_path):
  """The command line on a real full disk: past the run's INFO log lines, its whole output is
  one ``error:`` line (Orbax's abandoned writes print nothing, not even at exit), and the failed
  checkpoint's temporary directory is gone when the process ends."""
  data_dir = str(tmp_path / "data")
  testdata.write_fashion_mnist(data_dir, train=64, test=24, size=8)
  disk = tmp_path / "disk"
  listing = tmp_path / "listing"
  # 354 KiB free: the run's files and the checkpoint of epoch 0 (~300 KiB, with its checksums and
  # the data lock's record) fit, epoch 1's not.
  result = _in_a_full_disk(
    disk,
    670,
    [
      sys.executable,
      "-m",
      "examples.image_classification.main",
      "--config=examples/image_classification/configs/fashion_mnist_cnn.py",
      f"--workdir={disk / 'run'}",
      f"--config.data_dir={data_dir}",
      f"--config.optimizer={VIEWS}",
      "--config.model_kwargs.width=4",
      "--config.model_kwargs.hidden=16",
      "--config.batch_size=16",
      "--config.num_epochs=2",
      "--config.lr_decay_epochs=(1,)",
      "--config.train_eval_examples=32",
      "--config.num_devices=1",
      "--config.progress_bar=False",
      "--config.log_every_steps=2",
    ],
    listing,
  )
  output = result.stdout + result.stderr
  lines = [line for line in output.splitlines() if line.strip() and not _INFO.match(line)]
  assert result.returncode == 1, output[-5000:]
  assert len(lines) == 1, output[-5000:]
  assert re.match(
    rf"error: cannot write the checkpoint {re.escape(str(disk))}/run/checkpoints/1: "
    r"No space left on device \(ENOSPC\)\.",
    lines[0],
  ), lines[0]
  assert listing.read_text().split() == ["0"]  # epoch 0 kept, no *.orbax-checkpoint-tmp left
