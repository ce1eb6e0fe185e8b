"""The sweep runner and the Table 1 / figure report, on a tiny generated data set."""

import os

import ml_collections
import pytest

from examples.common.metrics import read_metrics
from examples.image_classification import report, sweep, testdata
from examples.image_classification.train_test import tiny_config


def test_sweep_then_report(tmp_path):
  data_dir = str(tmp_path / "data")
  testdata.write_fashion_mnist(data_dir, train=32, test=16, size=8)
  config = tiny_config(data_dir, num_epochs=3)
  config.sweep = ml_collections.ConfigDict()
  config.sweep.optimizers = ("sgdm", "rsgdm-scale", "adam")
  config.sweep.seeds = (0,)
  config.sweep.learning_rates = ml_collections.ConfigDict({"adam": 1e-3})
  workdir = str(tmp_path / "sweep")

  done = sweep.run_sweep(config, workdir)
  assert done == [sweep.run_workdir(workdir, name, 0) for name in config.sweep.optimizers]
  assert sweep.run_config(config, "adam", 3).learning_rate == 1e-3
  assert sweep.run_config(config, "sgdm", 3).learning_rate == config.learning_rate

  # A finished sweep is not retrained.
  stamp = os.path.getmtime(os.path.join(done[0], "metrics.jsonl"))
  sweep.run_sweep(config, workdir)
  assert os.path.getmtime(os.path.join(done[0], "metrics.jsonl")) == stamp

  out = str(tmp_path / "report")
  table = report.write_report([workdir], out)
  lines = table.splitlines()
  assert lines[0] == "| optimizer | epoch 0-0 | epoch 1-1 | epoch 2-2 |"
  assert [line.split(" | ")[0] for line in lines[2:]] == ["| sgdm", "| rsgdm-scale", "| adam"]
  # Each cell is the best test accuracy in its range, here a single epoch of a single seed.
  sgdm = read_metrics(done[0])
  want = " | ".join(f"{100 * r['test_accuracy']:.2f} ± 0.00" for r in sgdm)
  assert lines[2] == f"| sgdm | {want} |"
  assert open(os.path.join(out, "table.md")).read() == table
  assert open(os.path.join(out, "curves.png"), "rb").read(4) == b"\x89PNG"


def test_report_without_runs_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"No metrics\.jsonl"):
    report.find_runs([str(tmp_path)])
