"""Seed aggregation into the Table 1 form and the curve plot."""

import json
import math

import numpy as np
import pytest

from examples.common import report
from examples.common.metrics import MetricsWriter


def _make_run(path, optimizer, accuracies, losses=None):
  path.mkdir()
  (path / "config.json").write_text(json.dumps({"optimizer": optimizer}))
  with MetricsWriter(str(path)) as writer:
    for epoch, acc in enumerate(accuracies):
      loss = 1.0 / (epoch + 1) if losses is None else losses[epoch]
      writer.write({"epoch": epoch, "test_accuracy": acc, "train_loss": loss})
  return str(path)


def test_mean_curve_uses_epochs_every_run_reached(tmp_path):
  runs = [
    report.load_run(_make_run(tmp_path / "a", "x", [0.1, 0.2, 0.3])),
    report.load_run(_make_run(tmp_path / "b", "x", [0.3, 0.4])),
  ]
  epochs, mean, std = report.mean_curve(runs, "test_accuracy")
  np.testing.assert_array_equal(epochs, [0, 1])
  np.testing.assert_allclose(mean, [0.2, 0.3])
  # The sample std (ddof=1), as in the tables: 0.1 * sqrt(2), not the population std 0.1.
  np.testing.assert_allclose(std, [0.1 * np.sqrt(2), 0.1 * np.sqrt(2)])


def test_epoch_thirds_match_the_paper():
  assert report.epoch_thirds(300) == [(0, 99), (100, 199), (200, 299)]
  assert report.epoch_thirds(90) == [(0, 29), (30, 59), (60, 89)]
  with pytest.raises(ValueError):
    report.epoch_thirds(2)


def test_best_in_ranges_ignores_missing_and_non_finite():
  records = [{"epoch": 0, "a": 0.2}, {"epoch": 1, "a": None}, {"epoch": 2, "a": 0.5}, {"epoch": 3}]
  assert report.best_in_ranges(records, "a", [(0, 1), (2, 3)]) == [0.2, 0.5]
  assert math.isnan(report.best_in_ranges(records, "a", [(4, 5)])[0])
  assert report.best_in_ranges(records, "a", [(0, 3)], mode="min") == [0.2]


def test_summary_table_and_plot(tmp_path):
  accs = {
    "sgdm": [[0.1, 0.3, 0.2, 0.5, 0.4, 0.6], [0.2, 0.1, 0.4, 0.3, 0.7, 0.5]],
    "rsgdm-scale": [[0.3, 0.2, 0.5, 0.4, 0.6, 0.6]],
  }
  dirs = [
    _make_run(tmp_path / f"{name}-{seed}", name, series)
    for name, runs in accs.items()
    for seed, series in enumerate(runs)
  ]
  groups = report.group_runs(report.load_run(d) for d in dirs)
  ranges = report.epoch_thirds(6)
  summary = report.summarize(groups, "test_accuracy", ranges)
  # sgdm: best per third is (0.3, 0.5, 0.6) and (0.2, 0.4, 0.7).
  for cell, runs in zip(summary["sgdm"], [(0.3, 0.2), (0.5, 0.4), (0.6, 0.7)], strict=True):
    assert cell.mean == pytest.approx(np.mean(runs))
    assert cell.std == pytest.approx(np.std(runs, ddof=1))
    assert cell.n == 2
  table = report.markdown_table(summary, ranges, order=["sgdm", "rsgdm-scale"])
  lines = table.splitlines()
  assert lines[0] == "| optimizer | epoch 0-1 | epoch 2-3 | epoch 4-5 |"
  assert lines[2] == "| sgdm | 25.00 ± 7.07 | 45.00 ± 7.07 | 65.00 ± 7.07 |"
  assert (
    lines[3] == "| rsgdm-scale | 30.00 ± 0.00 (n=1) | 50.00 ± 0.00 (n=1) | 60.00 ± 0.00 (n=1) |"
  )
  png = tmp_path / "out" / "curves.png"
  panels = [
    report.Panel("train_loss", "loss", log_scale=True),
    report.Panel("test_accuracy", "acc", labels=["sgdm"], title="SGDm only"),
  ]
  report.plot_curves(groups, panels, str(png))
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _seeded_run(path, optimizer, seed, accuracies):
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps({"optimizer": optimizer, "seed": seed}))
  with MetricsWriter(str(path)) as writer:
    for epoch, acc in enumerate(accuracies):
      writer.write({"epoch": epoch, "test_accuracy": acc})
  return report.load_run(str(path))


def test_paired_gains_read_both_layouts(tmp_path):
  ranges = [(0, 0), (1, 1)]
  runs = [
    # Seed 0: views of one training (and a separate sgdm run of seed 0 that must not be chosen).
    _seeded_run(tmp_path / "views-sgdm" / "seed0" / "sgdm", "sgdm", 0, [0.50, 0.60]),
    _seeded_run(
      tmp_path / "views-sgdm" / "seed0" / "rsgdm-scale@0.25", "rsgdm-scale@0.25", 0, [0.55, 0.61]
    ),
    _seeded_run(tmp_path / "old" / "sgdm" / "seed0", "sgdm", 0, [0.10, 0.10]),
    # Seed 1: one run per folder.
    _seeded_run(tmp_path / "old" / "sgdm" / "seed1", "sgdm", 1, [0.40, 0.70]),
    _seeded_run(
      tmp_path / "old" / "rsgdm-scale@0.25" / "seed1", "rsgdm-scale@0.25", 1, [0.47, 0.69]
    ),
    # No base of its trajectory with this seed: left out.
    _seeded_run(tmp_path / "old" / "adam-sign" / "seed0", "adam-sign", 0, [0.3, 0.3]),
    _seeded_run(tmp_path / "old" / "signsgdm" / "seed0", "signsgdm", 0, [0.3, 0.3]),
  ]
  gains = report.paired_gains(runs, "test_accuracy", ranges)
  assert [(g.view, g.base, g.seed) for g in gains] == [
    ("rsgdm-scale@0.25", "sgdm", 0),
    ("rsgdm-scale@0.25", "sgdm", 1),
  ]
  np.testing.assert_allclose(gains[0].gains, [0.05, 0.01], atol=1e-12)
  np.testing.assert_allclose(gains[1].gains, [0.07, -0.01], atol=1e-12)
  summary, per_seed = report.gains_markdown(gains, ranges)
  lines = per_seed.splitlines()
  assert lines[2] == "| rsgdm-scale@0.25 - sgdm | 0 | +5.00 | +1.00 |"
  assert lines[3] == "| rsgdm-scale@0.25 - sgdm | 1 | +7.00 | -1.00 |"
  # Mean ± sample std of (5, 7) and (1, -1).
  assert summary.splitlines()[-1] == "| rsgdm-scale@0.25 - sgdm | 2 | +6.00 ± 1.41 | +0.00 ± 1.41 |"


def _views(tmp_path, seed, series):
  """One training's views: ``{name: [records]}`` under ``views-sgdm/seed<seed>/<name>``."""
  runs = []
  for name, records in series.items():
    path = tmp_path / "views-sgdm" / f"seed{seed}" / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"optimizer": name, "seed": seed}))
    with MetricsWriter(str(path)) as writer:
      for epoch, record in enumerate(records):
        writer.write({"epoch": epoch, **record})
    runs.append(report.load_run(str(path)))
  return runs


def test_panel_draws_equal_curves_once_and_lists_only_drawn_lines(tmp_path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = []
  for seed, (shared, gap) in enumerate([(0.5, 0.01), (0.7, 0.02)]):
    runs += _views(
      tmp_path,
      seed,
      {
        "sgdm": [{"ref": shared, "acc": shared, "prox": 0.0}] * 3,
        "rsgdm-scale": [{"ref": shared, "acc": shared + gap, "prox": gap}] * 3,
        "rsgdm-sign": [{"ref": shared, "acc": shared + 2 * gap, "prox": 2 * gap}] * 3,
      },
    )
  groups = report.group_runs(runs)
  order = ["sgdm", "rsgdm-scale", "rsgdm-sign"]
  fig, axes = plt.subplots(1, 3)
  same = report.Panel("ref", "accuracy at y (%)", scale=100, same_label="params: every view")
  colours = report.draw_panel(axes[0], groups, same, order)
  _, labels = axes[0].get_legend_handles_labels()
  assert labels == ["params: every view"] and len(axes[0].lines) == 1
  assert set(colours) == set(order)
  # Mean over the two seeds, in %.
  np.testing.assert_allclose(axes[0].lines[0].get_ydata(), [60.0] * 3)
  # sgdm's proximity is 0: nothing to draw on a log axis, so no legend entry for it.
  report.draw_panel(axes[1], groups, report.Panel("prox", "p", log_scale=True), order)
  assert axes[1].get_legend_handles_labels()[1] == ["rsgdm-scale", "rsgdm-sign"]
  # Different curves each get their line, mean ± sample std as the band.
  report.draw_panel(axes[2], groups, report.Panel("acc", "acc (%)", scale=100), order)
  assert axes[2].get_legend_handles_labels()[1] == order
  sign = axes[2].lines[2].get_ydata()
  np.testing.assert_allclose(sign, [np.mean([52.0, 74.0])] * 3)
  band = axes[2].collections[2].get_paths()[0].vertices[:, 1]
  half_width = np.std([52.0, 74.0], ddof=1)
  np.testing.assert_allclose([band.min(), band.max()], [63 - half_width, 63 + half_width])
  plt.close(fig)


def test_machine_caption_says_what_is_recorded(tmp_path):
  runs = _views(tmp_path, 0, {"sgdm": [{"acc": 0.5}], "rsgdm-scale": [{"acc": 0.6}]})
  assert report.machine_caption(runs) == "Measured on: machine not recorded."
  # One record above the views, for the whole sweep.
  record = {"cpu": "AMD EPYC", "cpu_cores": 2, "platform": "cpu", "jax": "0.10.2"}
  (tmp_path / "machine.json").write_text(json.dumps({**record, "jaxlib": "0.10.2"}))
  runs = [report.load_run(r.workdir) for r in runs]
  assert report.machine_caption(runs) == (
    "Measured on: AMD EPYC, 2 cores, jax 0.10.2 / jaxlib 0.10.2."
  )
  # A partial record, written afterwards from notes: what is missing is said.
  partial = {"cpu": "AMD EPYC", "cpu_cores": 2, "note": "from the run's notes"}
  assert report.describe_machine(partial) == (
    "AMD EPYC, 2 cores, jax and jaxlib versions not recorded (from the run's notes)"
  )


def test_a_trainers_machine_list_reads_as_one_machine_and_names_earlier_ones(tmp_path):
  epyc = {"cpu": "AMD EPYC", "cpu_cores": 2, "platform": "cpu", "jax": "0.10.2", "jaxlib": "0.10.2"}
  xeon = {**epyc, "cpu": "Intel Xeon"}
  run_dir = tmp_path / "views-sgdm" / "seed0" / "sgdm"
  run_dir.mkdir(parents=True)
  # The trainer writes one entry per start in the training's workdir, above each view's folder.
  record = [{"epoch_started": 0, "machine": epyc}, {"epoch_started": 2, "machine": epyc}]
  (tmp_path / "views-sgdm" / "seed0" / "machine.json").write_text(json.dumps(record))
  assert report.find_machine(str(run_dir)) == epyc
  record.append({"epoch_started": 4, "machine": xeon})
  (tmp_path / "views-sgdm" / "seed0" / "machine.json").write_text(json.dumps(record))
  found = report.find_machine(str(run_dir))
  assert found["cpu"] == "Intel Xeon"
  assert "earlier epochs on AMD EPYC" in report.describe_machine(found)
