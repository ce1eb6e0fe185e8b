"""metrics.jsonl writing, resume truncation and TensorBoard mirroring."""

import errno
import glob
import json
import math
import os

import numpy as np
import pytest

from examples.common import fileio, metrics


def test_writes_one_line_per_epoch_and_tensorboard_events(tmp_path):
  workdir = str(tmp_path)
  with metrics.MetricsWriter(workdir) as writer:
    writer.write({"epoch": 0, "train_loss": np.float32(1.5), "lr": 0.1})
    writer.write({"epoch": 1, "train_loss": 1.25, "lr": 0.1, "test_loss": math.nan})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
    {"epoch": 0, "train_loss": 1.5, "lr": 0.1},
    {"epoch": 1, "train_loss": 1.25, "lr": 0.1, "test_loss": None},
  ]
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))


def test_resume_drops_lines_past_the_restored_epoch(tmp_path):
  workdir = str(tmp_path)
  with metrics.MetricsWriter(workdir) as writer:
    for epoch in range(4):
      writer.write({"epoch": epoch, "train_loss": 1.0 / (epoch + 1)})
  with metrics.MetricsWriter(workdir, resume_epoch=1) as writer:
    assert [r["epoch"] for r in writer.records] == [0, 1]
    writer.write({"epoch": 2, "train_loss": 0.125})
  assert [r["epoch"] for r in metrics.read_metrics(workdir)] == [0, 1, 2]
  assert metrics.read_metrics(workdir)[-1]["train_loss"] == 0.125


def test_fresh_run_starts_an_empty_file(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"epoch": 0}\n')
  with metrics.MetricsWriter(str(tmp_path)):
    pass
  assert metrics.read_metrics(str(tmp_path)) == []


def test_no_temporary_files_left_and_corrupt_file_is_named(tmp_path):
  with metrics.MetricsWriter(str(tmp_path)) as writer:
    writer.write({"epoch": 0})
  assert not glob.glob(str(tmp_path / ".metrics.*"))
  (tmp_path / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1, "tra')
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 2"):
    metrics.read_metrics(str(tmp_path))


def test_record_without_epoch_is_rejected(tmp_path):
  with metrics.MetricsWriter(str(tmp_path)) as writer, pytest.raises(ValueError, match="epoch"):
    writer.write({"train_loss": 1.0})


def test_memory_only_writer_touches_no_files(tmp_path):
  workdir = tmp_path / "run"
  with metrics.MetricsWriter(str(workdir), write_files=False) as writer:
    writer.write({"epoch": 0, "train_loss": 1.0})
    assert writer.records == [{"epoch": 0, "train_loss": 1.0}]
  assert not workdir.exists()


def test_files_get_the_umask_mode_not_0600(tmp_path):
  old = os.umask(0o022)
  try:
    with metrics.MetricsWriter(str(tmp_path)) as writer:
      writer.write({"epoch": 0, "train_loss": 1.0})
  finally:
    os.umask(old)
  # What open(path, "w") gives under umask 022: readable by the group and others.
  assert os.stat(tmp_path / "metrics.jsonl").st_mode & 0o777 == 0o644


def test_a_full_disk_is_one_message_naming_the_file_and_keeps_the_old_records(
  tmp_path, monkeypatch
):
  with metrics.MetricsWriter(str(tmp_path)) as writer:
    writer.write({"epoch": 0, "train_loss": 1.0})

    def full_disk(src, dst):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(fileio.RunIOError) as raised:
      writer.write({"epoch": 1, "train_loss": 0.5})
  message = str(raised.value)
  assert message.startswith(f"cannot write {tmp_path / 'metrics.jsonl'}: No space left on device")
  assert "ENOSPC" in message and "rerun the same command" in message
  assert "\n" not in message and raised.value.errno == errno.ENOSPC
  monkeypatch.undo()
  assert metrics.read_metrics(str(tmp_path)) == [{"epoch": 0, "train_loss": 1.0}]
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "tensorboard"]  # no temporary file left


def test_an_unwritable_workdir_is_one_message(tmp_path, monkeypatch):
  real_open = os.open

  def refuse(path, flags, mode=0o777, **kwargs):
    if str(path).startswith(str(tmp_path)):
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    return real_open(path, flags, mode, **kwargs)

  monkeypatch.setattr(os, "open", refuse)
  with pytest.raises(fileio.RunIOError, match=r"cannot write .*metrics.jsonl: Permission denied"):
    metrics.MetricsWriter(str(tmp_path))
