"""The sweep runner and the Table 1 / figure report, on a tiny generated data set."""

import json
import os

import ml_collections
import numpy as np
import pytest

from examples.common.metrics import MetricsWriter, read_metrics
from examples.image_classification import report, sweep, testdata
from examples.image_classification.train_test import tiny_config


def test_sweep_then_report(tmp_path):
  data_dir = str(tmp_path / "data")
  testdata.write_fashion_mnist(data_dir, train=32, test=16, size=8)
  config = tiny_config(data_dir, num_epochs=3)
  config.sweep = ml_collections.ConfigDict()
  config.sweep.optimizers = ("sgdm", "rsgdm-scale", "signsgdm")
  config.sweep.seeds = (0,)
  config.sweep.learning_rates = ml_collections.ConfigDict({"adam": 1e-3, "signsgdm": 0.01})
  workdir = str(tmp_path / "sweep")

  # sgdm and rsgdm-scale share a trajectory: one training; signsgdm is its own.
  assert sweep.trainings(config) == [["sgdm", "rsgdm-scale"], ["signsgdm"]]
  done = sweep.run_sweep(config, workdir)
  assert done == [
    os.path.join(workdir, "views-sgdm", "seed0", "sgdm"),
    os.path.join(workdir, "views-sgdm", "seed0", "rsgdm-scale"),
    os.path.join(workdir, "signsgdm", "seed0"),
  ]
  assert sweep.run_config(config, "signsgdm", 0).learning_rate == 0.01
  assert sweep.run_config(config, "adam", 3).learning_rate == 1e-3
  assert sweep.run_config(config, "sgdm", 3).learning_rate == config.learning_rate

  # A finished sweep is not retrained.
  stamp = os.path.getmtime(os.path.join(done[0], "metrics.jsonl"))
  sweep.run_sweep(config, workdir)
  assert os.path.getmtime(os.path.join(done[0], "metrics.jsonl")) == stamp

  out = str(tmp_path / "report")
  table = report.write_report([workdir], out)
  lines = table.splitlines()
  assert lines[0] == "| optimizer | epoch 0 | epoch 1 | epoch 2 |"
  assert [line.split(" | ")[0] for line in lines[2:5]] == ["| sgdm", "| rsgdm-scale", "| signsgdm"]
  # Each cell is the best test accuracy in its range, here a single epoch of a single seed.
  sgdm = read_metrics(done[0])
  want = " | ".join(f"{100 * r['test_accuracy']:.2f} ± 0.00" for r in sgdm)
  assert lines[2] == f"| sgdm | {want} |"
  # The paired gain of rsgdm-scale over sgdm, per epoch (one seed): from the two records.
  scale = read_metrics(done[1])
  gains = " | ".join(
    f"{100 * (a['test_accuracy'] - b['test_accuracy']):+.2f}"
    for a, b in zip(scale, sgdm, strict=True)
  )
  assert f"| rsgdm-scale - sgdm | 0 | {gains} |" in lines
  assert (tmp_path / "report" / "table.md").read_text() == table
  assert (tmp_path / "report" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_report_without_runs_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"No metrics\.jsonl"):
    report.find_runs([str(tmp_path)])


def test_alpha_sweep_from_scale_views(tmp_path):
  root = tmp_path / "runs" / "views-sgdm" / "seed0"
  for name, accuracies in (
    ("sgdm", [0.5, 0.6, 0.7]),
    ("rsgdm-scale@0.5", [0.55, 0.6, 0.7]),
    ("rsgdm-scale@0.0625", [0.6, 0.62, 0.7]),
    ("rsgdm-scale", [0.58, 0.61, 0.7]),  # alpha from config.alpha
  ):
    (root / name).mkdir(parents=True)
    config = {"optimizer": name, "seed": 0, "alpha": 0.25, "num_epochs": 3}
    (root / name / "config.json").write_text(json.dumps(config))
    with MetricsWriter(str(root / name)) as writer:
      for epoch, acc in enumerate(accuracies):
        writer.write({"epoch": epoch, "test_accuracy": acc, "train_loss": 1.0})
  runs = [report.report.load_run(str(root / n)) for n in os.listdir(root)]
  groups = report.report.group_runs(runs)
  assert report.scale_alphas(groups) == {
    "rsgdm-scale@0.5": 0.5,
    "rsgdm-scale@0.0625": 0.0625,
    "rsgdm-scale": 0.25,
  }
  table = report.write_report([str(tmp_path / "runs")], str(tmp_path / "out"))
  assert (tmp_path / "out" / "alpha.png").read_bytes()[:4] == b"\x89PNG"
  assert "| rsgdm-scale@0.0625 - sgdm | 0 | +10.00 | +2.00 | +0.00 |" in table
  # Rows in the order of the names, larger alpha first.
  rows = [line.split(" | ")[0][2:] for line in table.splitlines()[2:6]]
  assert rows == ["sgdm", "rsgdm-scale", "rsgdm-scale@0.5", "rsgdm-scale@0.0625"]


def test_alpha_gains_are_paired_means_and_sample_stds():
  gains = [
    report.report.PairedGain("rsgdm-scale@0.5", "sgdm", seed, values)
    for seed, values in enumerate([[0.01, 0.0, -0.01], [0.03, 0.01, 0.0], [0.02, 0.0, 0.01]])
  ]
  gains.append(report.report.PairedGain("rsgdm-scale@0.25", "sgdm", 0, [0.05, 0.02, 0.0]))
  by_alpha = report.alpha_gains(gains, {"rsgdm-scale@0.5": 0.5, "rsgdm-scale@0.25": 0.25}, 3)
  per_seed = 100 * np.array([[0.01, 0.0, -0.01], [0.03, 0.01, 0.0], [0.02, 0.0, 0.01]])
  np.testing.assert_allclose(by_alpha[0.5][0], per_seed.mean(axis=0))
  np.testing.assert_allclose(by_alpha[0.5][1], per_seed.std(axis=0, ddof=1))
  np.testing.assert_allclose(by_alpha[0.25][0], [5.0, 2.0, 0.0])
  np.testing.assert_allclose(by_alpha[0.25][1], [0.0, 0.0, 0.0])  # one seed: no spread


RESULTS = os.path.join(os.path.dirname(__file__), "results")
COMMITTED = ("fashion_mnist_alpha", "fashion_mnist_compare", "fashion_mnist_table1")


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_table_is_what_the_report_makes_of_the_committed_runs(name):
  folder = os.path.join(RESULTS, name)
  runs = [report.report.load_run(d) for d in report.find_runs([os.path.join(folder, "runs")])]
  assert all(run.machine.get("jax") for run in runs), "every committed run records its machine"
  with open(os.path.join(folder, "table.md")) as f:
    assert f.read() == report.make_table(runs)


def test_committed_alpha_gain_from_the_records():
  """One cell of the committed alpha table, recomputed from the metrics files alone."""
  root = os.path.join(RESULTS, "fashion_mnist_alpha", "runs", "views-sgdm")
  gains = []
  for seed in sorted(os.listdir(root)):
    best = {}
    for view in ("sgdm", "rsgdm-scale@0.0625"):
      records = read_metrics(os.path.join(root, seed, view))
      best[view] = max(r["test_accuracy"] for r in records if r["epoch"] <= 1)
    gains.append(100 * (best["rsgdm-scale@0.0625"] - best["sgdm"]))
  with open(os.path.join(RESULTS, "fashion_mnist_alpha", "table.md")) as f:
    row = next(line for line in f if line.startswith("| rsgdm-scale@0.0625 - sgdm | 5 |"))
  assert row.split(" | ")[2] == f"{np.mean(gains):+.2f} ± {np.std(gains, ddof=1):.2f}"
