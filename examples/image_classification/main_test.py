"""The command lines, run as a user runs them (subprocesses on tiny generated data)."""

import json
import os
import subprocess
import sys

from examples.common.metrics import MetricsWriter, read_metrics
from examples.image_classification import report, testdata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run(
    [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )


def test_main_with_config_overrides(tmp_path):
  data_dir = str(tmp_path / "data")
  testdata.write_fashion_mnist(data_dir, train=32, test=16, size=8)
  workdir = str(tmp_path / "run")
  result = _run(
    "examples.image_classification.main",
    "--config=examples/image_classification/configs/fashion_mnist_cnn.py",
    f"--workdir={workdir}",
    f"--config.data_dir={data_dir}",
    "--config.optimizer=rsgdm-topk",
    "--config.num_epochs=1",
    "--config.train_eval_examples=16",
    "--config.progress_bar=False",
    "--config.seed=3",
    "--config.batch_size=16",
    "--config.model_kwargs.width=4",
    "--config.model_kwargs.hidden=8",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((tmp_path / "run" / "config.json").read_text())
  assert (config["optimizer"], config["seed"], config["num_epochs"]) == ("rsgdm-topk", 3, 1)
  assert config["model_kwargs"] == {"width": 4, "hidden": 8, "use_batch_norm": True}
  assert [r["epoch"] for r in read_metrics(workdir)] == [0]


def test_main_reports_a_bad_optimizer_name(tmp_path):
  result = _run(
    "examples.image_classification.main",
    "--config=examples/image_classification/configs/fashion_mnist_cnn.py",
    f"--workdir={tmp_path}",
    "--config.optimizer=rsgdm-scaled",
  )
  assert result.returncode == 1
  assert result.stderr.strip().startswith("error: Unknown optimizer 'rsgdm-scaled'. Valid names:")


def test_report_command(tmp_path, capsys):
  for name, accuracies in (("sgdm", [0.5, 0.6, 0.7]), ("rsgdm-sign", [0.55, 0.65, 0.7])):
    run = tmp_path / name / "seed0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"optimizer": name, "num_epochs": 3}))
    with MetricsWriter(str(run)) as writer:
      for epoch, acc in enumerate(accuracies):
        writer.write({"epoch": epoch, "test_accuracy": acc, "train_loss": 1.0 - acc})
  argv = ["report", str(tmp_path), f"--output_dir={tmp_path / 'out'}"]
  report.main(report.FLAGS(argv))  # in-process: what app.run does after parsing the flags
  assert "| rsgdm-sign | 55.00 ± 0.00 | 65.00 ± 0.00 | 70.00 ± 0.00 |" in capsys.readouterr().out
  assert (tmp_path / "out" / "curves.png").exists()
