"""metrics.jsonl writing, resume truncation and TensorBoard mirroring."""

import glob
import json
import math
import os

import numpy as np
import pytest

from examples.common import metrics


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
