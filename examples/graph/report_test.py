"""Tests of the graph report on hand-written metrics files."""

import json
import os

import pytest

from examples.graph import report


def _write_run(root, name, optimizer, val, test):
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"optimizer": optimizer}, f)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for epoch, (v, t) in enumerate(zip(val, test, strict=True)):
      record = {"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_micro_f1": v}
      record["test_micro_f1"] = t
      f.write(json.dumps(record) + "\n")


def test_table_reports_mean_std_across_seeds(tmp_path):
  root = str(tmp_path / "runs")
  _write_run(root, "adam/0", "adam", [0.5, 0.7, 0.6], [0.4, 0.65, 0.8])
  _write_run(root, "adam/1", "adam", [0.6, 0.8, 0.9], [0.6, 0.7, 0.75])
  _write_run(root, "adam-scale/0", "adam-scale", [0.9, 0.9, 0.9], [0.9, 0.8, 0.7])
  text = report.write_report(root, str(tmp_path / "out"))
  # adam: test at best val: epoch 1 (0.65) and epoch 2 (0.75) -> 70.00 ± 7.07; best val 0.7, 0.9
  # -> 80.00 ± 14.14. The largest test scores (0.8, 0.75) are not reported.
  assert (
    text.splitlines()[0] == "| optimizer | seeds | test micro-F1 at best val | best val micro-F1 |"
  )
  assert "| adam | 2 | 70.00 ± 7.07 | 80.00 ± 14.14 |" in text
  assert "77.50" not in text
  # Ties on validation pick the first epoch (test 0.9, not 0.8 or 0.7).
  assert "| adam-scale | 1 | 90.00 ± 0.00 | 90.00 ± 0.00 |" in text
  assert text.index("| adam |") < text.index("| adam-scale |")
  assert os.path.getsize(tmp_path / "out" / "curves.png") > 0
  assert (tmp_path / "out" / "results.md").read_text() == text


def test_no_runs_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="No run"):
    report.write_report(str(tmp_path), str(tmp_path / "out"))
