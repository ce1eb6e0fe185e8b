"""Whole runs on tiny generated Penn Treebank files: views against separate trainings, resume after
SIGKILL, several devices against one, both configs at tiny size, the schedule of evaluations."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import pytest

from examples.common import metrics
from examples.transformer_lm import train
from examples.transformer_lm.configs import default, small
from examples.transformer_lm.conftest import tiny_config

VIEWS = ("adamw", "adamw-scale@0.1", "adamw-sign", "adamw-topk")


def _without_seconds(records):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def views_run(tmp_path_factory):
  """One training of the four views (shared by the tests below)."""
  root = tmp_path_factory.mktemp("views")
  data_dir = root / "ptb"
  data_dir.mkdir()
  from examples.language_modeling.conftest import write_ptb

  write_ptb(data_dir, lines=(240, 30, 30))
  results = train.train_and_evaluate(tiny_config(data_dir), str(root / "views"))
  return data_dir, root, results


def test_every_evaluation_is_recorded_for_every_view(views_run):
  _, root, results = views_run
  assert list(results.records) == list(VIEWS)
  for name in VIEWS:
    records = results.records[name]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]  # 2 epochs x 2 evaluations
    assert records == metrics.read_metrics(str(root / "views" / name))
    assert [r["train_epochs"] for r in records] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    for r in records:
      assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
      assert r["test_ppl"] == pytest.approx(math.exp(r["test_loss"]))
  base = results.records["adamw"]
  assert base[-1]["val_ppl"] < base[0]["val_ppl"]  # it learns the generated pattern
  assert base[-1]["val_ppl"] < 26  # below a uniform guess over the 26 words
  # The views are other points of the same trajectory: the same training loss, other models.
  for name in VIEWS[1:]:
    assert [r["train_loss"] for r in results.records[name]] == [r["train_loss"] for r in base]
    assert results.records[name][-1]["val_loss"] != base[-1]["val_loss"]
  assert results.final == {name: results.records[name][-1] for name in VIEWS}


@pytest.mark.parametrize("name", VIEWS[1:])
def test_each_view_equals_its_own_training_field_for_field(views_run, tmp_path, name):
  data_dir, _, results = views_run
  alone = train.train_and_evaluate(tiny_config(data_dir, optimizer=name), str(tmp_path))
  assert _without_seconds(alone.records[name]) == _without_seconds(results.records[name])


def test_four_devices_equal_one_replicated_and_fsdp(views_run, tmp_path):
  data_dir, _, results = views_run
  assert len(jax.devices("cpu")) >= 4, "the root conftest.py provides 8 CPU devices"
  for layout in ("replicated", "fsdp"):
    config = tiny_config(data_dir, num_devices=4, sharding=layout)
    four = train.train_and_evaluate(config, str(tmp_path / layout))
    for name in VIEWS:
      for got, want in zip(four.records[name], results.records[name], strict=True):
        for field in ("train_loss", "val_loss", "test_loss", "step", "lr"):
          assert got[field] == pytest.approx(want[field], rel=2e-4, abs=1e-6), (layout, name)


def _run_main(data_dir, workdir, **overrides):
  config = tiny_config(data_dir, **overrides)
  args = [f"--config.{k}={v}" for k, v in sorted(config.items()) if k in overrides]
  fixed = {
    "data_source": data_dir, "max_eval_tokens": 0, "context": 8, "layers": 1, "width": 16,
    "heads": 2, "batch_size": 8, "eval_batch_size": 8, "warmup_steps": 2, "learning_rate": 0.01,
    "num_epochs": 2, "evals_per_epoch": 2, "num_devices": 1, "platform": "cpu",
    "optimizer": ",".join(VIEWS), "topk_fraction": 0.1,
  }  # fmt: skip
  args += [f"--config.{k}={v}" for k, v in fixed.items() if k not in overrides]
  command = [
    sys.executable, "-m", "examples.transformer_lm.main",
    "--config=examples/transformer_lm/configs/small.py", f"--workdir={workdir}", *args,
  ]  # fmt: skip
  return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_with_sigkill_resumes_to_the_same_metrics_and_prints_the_table(views_run, tmp_path):
  data_dir, _, results = views_run
  workdir = tmp_path / "killed"
  process = _run_main(data_dir, workdir)
  first = workdir / "adamw" / "metrics.jsonl"
  deadline = time.monotonic() + 240
  try:
    while not (first.exists() and first.read_text().count("\n") >= 2):
      assert process.poll() is None, process.communicate()[0][-3000:]
      assert time.monotonic() < deadline, "the run never reached its second evaluation"
      time.sleep(0.05)
  finally:
    process.send_signal(signal.SIGKILL)  # JAX catches SIGTERM
    process.communicate(timeout=60)  # reaps it and closes its pipe
  assert process.returncode == -signal.SIGKILL

  relaunched = _run_main(data_dir, workdir)
  output, _ = relaunched.communicate(timeout=300)
  assert relaunched.returncode == 0, output[-3000:]
  assert "Resumed from the checkpoint" in output
  for name in VIEWS:
    got = metrics.read_metrics(str(workdir / name))
    assert _without_seconds(got) == _without_seconds(results.records[name]), name
  assert "| adamw-sign |" in output and "last val vs base" in output  # the views' table


def test_a_changed_config_is_refused_and_the_workdir_left_as_it_was(views_run):
  data_dir, root, _ = views_run
  workdir = root / "views"
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  process = _run_main(data_dir, workdir, dropout=0.3)
  output, _ = process.communicate(timeout=120)
  assert process.returncode != 0
  assert "dropout" in output and "Traceback" not in output
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


@pytest.mark.parametrize("module", [small, default], ids=["small", "default"])
def test_both_configs_train_at_tiny_size(ptb_dir, tmp_path, module):
  """The configs as written (positions, dropout, schedule, views), the model shrunk to seconds."""
  config = tiny_config(ptb_dir, module.get_config(), num_epochs=1, evals_per_epoch=1)
  config.optimizer = module.get_config().optimizer
  results = train.train_and_evaluate(config, str(tmp_path))
  assert list(results.records) == module.get_config().optimizer.split(",")
  assert all(math.isfinite(r[-1]["val_ppl"]) for r in results.records.values())
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["positions"] == module.get_config().positions


def test_evaluations_split_the_steps_evenly_and_reach_the_end():
  schedule = train.Schedule(steps_per_epoch=10, evals_per_epoch=3, num_epochs=2)
  bounds = [schedule.step_at(e) for e in range(schedule.evaluations + 1)]
  assert bounds == [0, 3, 6, 10, 13, 16, 20]


def test_views_table_lists_each_view_against_the_base():
  records = {
    "adamw": [{"step": s, "val_ppl": p, "test_ppl": p + 1} for s, p in ((10, 300.0), (20, 200.0))],
    "adamw-sign": [
      {"step": s, "val_ppl": p, "test_ppl": p + 1} for s, p in ((10, 280.0), (20, 205.5))
    ],
  }
  table = train.views_table(records)
  assert "| adamw-sign | 280.0 / 281.0 | 205.5 / 206.5 | +5.5 |" in table
  assert table.splitlines()[0].count("step") == 2


def test_more_evaluations_than_steps_is_one_error(ptb_dir, tmp_path):
  from examples.common.errors import UserError

  with pytest.raises(UserError, match="evals_per_epoch"):
    train.train_and_evaluate(tiny_config(ptb_dir, evals_per_epoch=1000), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
