"""Table 2 and the curves from run directories written as train.py writes them."""

import json
import os

import jax
import pytest

from examples.common import metrics
from examples.language_modeling import report, train


def _fake_run(root, optimizer, seed, val_ppl, test_ppl, switch_epoch):
  workdir = root / f"{optimizer}-{seed}"
  with metrics.MetricsWriter(str(workdir)) as writer:
    for epoch in range(4):
      averaging = switch_epoch is not None and epoch > switch_epoch
      writer.write(
        {
          "epoch": epoch,
          "train_ppl": 300.0 - 20 * epoch,
          "val_ppl": val_ppl + 10 * (3 - epoch),
          "averaging": averaging,
        }
      )
  (workdir / "config.json").write_text(json.dumps({"optimizer": optimizer, "seed": seed}))
  results = {
    "optimizer": optimizer,
    "val_ppl": val_ppl,
    "test_ppl": test_ppl,
    "switch_epoch": switch_epoch,
    "switched_by": "nt-asgd",
  }
  (workdir / "results.json").write_text(json.dumps(results))
  return str(workdir)


def test_table_and_curves(tmp_path):
  runs = [
    _fake_run(tmp_path, "rsgd-sign", 0, 120.0, 110.0, 2),
    _fake_run(tmp_path, "sgd", 0, 130.0, 121.0, None),
    _fake_run(tmp_path, "sgd", 1, 132.0, 123.0, 1),
  ]
  table = report.write_report(runs, str(tmp_path / "out"))
  lines = table.splitlines()
  assert lines[2] == (
    "| SGD + ASGD (n=2) | 131.00 ± 1.41 / 122.00 ± 1.41 | none, 1 (nt-asgd) | 141.00 ± 15.56 |"
    " 61.41 / 58.89 |"
  )  # before the switch: 130 (never switched) and 152 (epochs 0-1 of the second run)
  assert lines[3] == (
    "| (RSGD + RASGD)-sign | 120.00 / 110.00 | 2 (nt-asgd) | 130.00 | 60.21 / 57.85 |"
  )
  assert (tmp_path / "out" / "table2.md").read_text() == table
  png = (tmp_path / "out" / "curves.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_table_without_records_has_no_before_switch_column(tmp_path):
  results = [report.load_results(_fake_run(tmp_path, "rsgd-sign", 0, 120.0, 110.0, 2))]
  lines = report.table2(results).splitlines()
  assert (
    lines[0]
    == "| PTB | PPL val / test (measured) | switch epoch | PPL val / test (paper, Table 2) |"
  )
  assert lines[2] == "| (RSGD + RASGD)-sign | 120.00 / 110.00 | 2 (nt-asgd) | 60.21 / 57.85 |"


def test_unfinished_runs_are_named(tmp_path):
  workdir = tmp_path / "running"
  workdir.mkdir()
  with pytest.raises(FileNotFoundError, match="has not finished"):
    report.write_report([str(workdir)], str(tmp_path / "out"))
  with pytest.raises(ValueError, match="No run directories"):
    report.write_report([], str(tmp_path / "out"))


def test_committed_table_is_the_committed_runs(tmp_path):
  results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
  runs = [os.path.join(results, "runs", name) for name in report.ORDER]
  table = report.write_report(runs, str(tmp_path / "out"))
  with open(os.path.join(results, "table2.md")) as f:
    assert f.read() == table
  with open(os.path.join(os.path.dirname(results), "README.md")) as f:
    assert table.strip() in f.read()


def test_scale_note_counts_the_models_parameters():
  from flax import nnx

  from examples.language_modeling.configs import small

  config = small.get_config()
  model = train.build_model(config, report.PTB_VOCABULARY)
  built = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert report.awd_lstm_parameters(32, 96, 3, report.PTB_VOCABULARY) == built == 471_056
  # AWD-LSTM's PTB model, as its paper gives it: 24M parameters.
  assert round(report.awd_lstm_parameters(400, 1150, 3, 10_000) / 1e6, 1) == 24.2
  note = report.scale_note(
    {"embed_dim": 32, "hidden": 96, "num_layers": 3, "num_epochs": 100, "max_train_tokens": 100_000}
  )
  assert "0.47M parameters" in note and "24.2M" in note and "100 epochs of 100,000 tokens" in note
  assert report.scale_note({"optimizer": "sgd"}) == ""
