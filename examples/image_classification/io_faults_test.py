"""A full disk during a training run (fault injection): one RunIOError naming the file, nothing
lost, and once there is space again the same command resumes to the metrics of an uninterrupted
run."""

import errno
import os

import pytest

from examples.common.checkpoint import TMP_SUFFIX
from examples.common.metrics import RunIOError, read_metrics
from examples.image_classification import testdata, train
from examples.image_classification.train_test import tiny_config

VIEWS = "sgdm,rsgdm-scale"


@pytest.fixture(scope="module")
def data_and_uninterrupted(tmp_path_factory):
  root = tmp_path_factory.mktemp("io_faults")
  data_dir = str(root / "data")
  testdata.write_fashion_mnist(data_dir, train=64, test=24, size=8)
  records = train.train_and_evaluate(tiny_config(data_dir, optimizer=VIEWS), str(root / "run"))
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
  resumed = train.train_and_evaluate(config, str(workdir))
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
