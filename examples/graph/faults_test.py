"""The graph trainer's fault matrix: values, workdir, data and checkpoints, each one line with
exit status 1 and the workdir untouched (or, for a corrupt checkpoint, the run resumed equal)."""

import logging
import os
import shutil

import pytest

from examples.common import datalock, faultprobes
from examples.common.errors import UserError
from examples.common.faultprobes import (
  assert_one_line,
  keep_xla_flags,  # noqa: F401 (autouse: every test here)
  run_main,
  tree_digest,
)
from examples.graph import train
from examples.graph.conftest import write_ppi_like
from examples.graph.graphsage_data import load_graphsage
from examples.graph.train_test import tiny_config

CONFIG = "--config=examples/graph/configs/ppi.py"
TINY = (
  "--config.num_layers=3",
  "--config.hidden=16",
  "--config.learning_rate=0.01",
  "--config.num_clusters=4",
  "--config.clusters_per_batch=2",
  "--config.num_clusters_val=2",
  "--config.num_clusters_test=1",
  "--config.num_epochs=2",
  "--config.checkpoint_every=1",
  "--config.optimizer=adam-scale",
  "--config.progress_bar=False",
)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
  """Two tiny graphs: ``a`` and ``b`` (other data in the same layout)."""
  root = tmp_path_factory.mktemp("graphs")
  for name, seed in (("a", 0), ("b", 1)):
    write_ppi_like(str(root / name), num_nodes=90, seed=seed)
  return root


VALUES = [
  ("--config.learning_rate=nan", "config.learning_rate=nan (must be a finite number > 0)"),
  ("--config.dropout=nan", "config.dropout=nan (must be a finite number in [0, 1))"),
  ("--config.alpha=inf", "config.alpha=inf (must be a finite number in (0, 1])"),
  ("--config.weight_decay=-inf", "config.weight_decay=-inf (must be a finite number >= 0)"),
  ("--config.optimizer=adam-topk@nan", "the value after @ must be a finite number in (0, 1]"),
  ("--config.optimizer=adam,adam-scale@inf", "the value after @ must be a finite number"),
  ("--config.num_clusters=55", "num_clusters=55 is out of range: it must be between 1 and the 54"),
]


@pytest.mark.parametrize(("override", "message"), VALUES)
def test_a_bad_value_is_one_line_before_anything_is_written(
  capsys, graphs, tmp_path, override, message
):
  workdir = tmp_path / "run"
  argv = [CONFIG, f"--workdir={workdir}", f"--config.data_dir={graphs / 'a'}", *TINY, override]
  assert_one_line(*run_main(capsys, "graph", argv), message)
  assert not workdir.exists()


@pytest.mark.parametrize("fault", ["empty", "a file", "under a file", "refused by the file system"])
def test_a_workdir_fault_is_one_line(capsys, graphs, tmp_path, fault):
  workdir, message = faultprobes.workdir_probes(tmp_path)[fault]
  before = tree_digest(str(tmp_path))
  argv = [CONFIG, f"--workdir={workdir}", f"--config.data_dir={graphs / 'a'}", *TINY]
  assert_one_line(*run_main(capsys, "graph", argv), message)
  assert tree_digest(str(tmp_path)) == before


def test_a_workdir_of_other_data_is_one_line_and_left_as_it_was(capsys, graphs, tmp_path):
  workdir = tmp_path / "run"
  faultprobes.foreign_data_workdir(workdir, load_graphsage(str(graphs / "b"), "ppi"))
  before = tree_digest(str(workdir))
  argv = [CONFIG, f"--workdir={workdir}", f"--config.data_dir={graphs / 'a'}", *TINY]
  assert_one_line(*run_main(capsys, "graph", argv), "was trained on other data")
  assert tree_digest(str(workdir)) == before


def test_a_resume_on_moved_data_corrupt_checkpoint_and_other_data(graphs, tmp_path, caplog):
  """One 2-epoch run; a byte of its newest checkpoint flipped; its data moved; other data."""
  config = tiny_config(str(graphs / "a"))
  workdir = str(tmp_path / "run")
  uninterrupted = train.train_and_evaluate(config, workdir)
  state_files = sorted(
    os.path.join(directory, name)
    for directory, _, files in os.walk(os.path.join(workdir, "checkpoints", "1", "state"))
    for name in files
  )
  with open(state_files[-1], "r+b") as f:  # one byte, the size kept
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x10
    f.seek(0)
    f.write(data)
  moved = tmp_path / "moved"
  shutil.copytree(graphs / "a", moved)
  config.data_dir = str(moved)  # the same graph elsewhere: resumes
  with caplog.at_level(logging.WARNING, logger="examples"):
    resumed = train.train_and_evaluate(config, workdir)
  assert "Skipping the checkpoint of epoch 1" in caplog.text
  assert "differ from the checksums written with it" in caplog.text

  def without_seconds(results):
    return {
      name: [{k: v for k, v in r.items() if k != "seconds"} for r in records]
      for name, records in results.records.items()
    }

  assert without_seconds(resumed) == without_seconds(uninterrupted)
  config.data_dir = str(graphs / "b")
  before = tree_digest(workdir)
  with pytest.raises(UserError, match="was trained on other data"):
    train.train_and_evaluate(config, workdir)
  assert tree_digest(workdir) == before
  assert os.path.exists(os.path.join(workdir, datalock.DATA_FILE))
