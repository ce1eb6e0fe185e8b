"""The command line, run as a user runs it (a subprocess on tiny generated Penn Treebank files)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = (
  "--config.embed_dim=8",
  "--config.hidden=12",
  "--config.num_layers=2",
  "--config.batch_size=4",
  "--config.eval_batch_size=4",
  "--config.test_batch_size=2",
  "--config.bptt=6",
  "--config.bptt_bucket=32",
  "--config.max_train_tokens=0",
  "--config.max_eval_rows=0",
  "--config.num_epochs=1",
)


def _main(ptb_dir, workdir, *args):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "examples.language_modeling.main",
      "--config=examples/language_modeling/configs/small.py",
      f"--workdir={workdir}",
      f"--config.data_source={ptb_dir}",
      *TINY,
      *args,
    ],
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_views_from_the_command_line(ptb_dir, tmp_path):
  result = _main(ptb_dir, tmp_path / "run", "--config.optimizer=sgd,rsgd-sign")
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ("sgd", "rsgd-sign"):
    assert f"{name}: validation ppl" in result.stderr
    assert json.loads((tmp_path / "run" / name / "results.json").read_text())["optimizer"] == name


def test_a_user_error_is_a_message_not_a_traceback(ptb_dir, tmp_path):
  result = _main(ptb_dir, tmp_path / "run", "--config.optimizer=sgd,adam")
  assert result.returncode == 1
  assert "error: config.optimizer='sgd,adam' mixes optimizers" in result.stderr
  assert "Traceback" not in result.stderr
