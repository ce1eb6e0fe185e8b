"""The language model's fault matrix: values, workdir and data, each one line with exit status 1
and the workdir untouched. (A corrupt checkpoint is skipped by the checkpointer every family
shares: examples/common/checkpoint_test.py, and end to end in the image and graph tests.)"""

import json
import shutil

import pytest

from examples.common import datalock, faultprobes, rundir
from examples.common.faultprobes import (
  assert_one_line,
  keep_xla_flags,  # noqa: F401 (autouse: every test here)
  run_main,
  tree_digest,
)
from examples.language_modeling import input_pipeline
from examples.language_modeling.conftest import tiny_config, write_ptb
from examples.language_modeling.main_test import TINY

CONFIG = "--config=examples/language_modeling/configs/small.py"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
  """Two tiny Penn-Treebank-format corpora: ``a`` and ``b`` (other text)."""
  root = tmp_path_factory.mktemp("corpora")
  for name, seed in (("a", 0), ("b", 1)):
    (root / name).mkdir()
    write_ptb(root / name, seed=seed)
  return root


def _argv(workdir, data_source, *more):
  return [CONFIG, f"--workdir={workdir}", f"--config.data_source={data_source}", *TINY, *more]


VALUES = [
  ("--config.learning_rate=nan", "config.learning_rate=nan (must be a finite number > 0)"),
  ("--config.dropout=nan", "config.dropout=nan (must be a finite number in [0, 1))"),
  ("--config.rsgd_alpha=inf", "config.rsgd_alpha=inf (must be a finite number in (0, 1])"),
  ("--config.clip=nan", "config.clip=nan (must be a finite number > 0)"),
  ("--config.optimizer=rsgd-scale@nan", "'rsgd-scale@nan': the value after @ must be a finite"),
  ("--config.optimizer=sgd,rsgd-topk@-inf", "'rsgd-topk@-inf': the value after @ must be"),
]


@pytest.mark.parametrize(("override", "message"), VALUES)
def test_a_bad_value_is_one_line_before_anything_is_written(
  capsys, corpora, tmp_path, override, message
):
  workdir = tmp_path / "run"
  argv = _argv(workdir, corpora / "a", override)
  assert_one_line(*run_main(capsys, "language_modeling", argv), message)
  assert not workdir.exists()


@pytest.mark.parametrize("fault", ["empty", "a file", "under a file", "refused by the file system"])
def test_a_workdir_fault_is_one_line(capsys, corpora, tmp_path, fault):
  workdir, message = faultprobes.workdir_probes(tmp_path)[fault]
  before = tree_digest(str(tmp_path))
  assert_one_line(*run_main(capsys, "language_modeling", _argv(workdir, corpora / "a")), message)
  assert tree_digest(str(tmp_path)) == before


def test_the_lock_is_to_the_text_not_its_folder(corpora, tmp_path):
  moved = tmp_path / "moved"
  shutil.copytree(corpora / "a", moved)
  here = datalock.fingerprint(input_pipeline.load_corpus(str(corpora / "a")))
  assert datalock.fingerprint(input_pipeline.load_corpus(str(moved))) == here
  other = datalock.fingerprint(input_pipeline.load_corpus(str(corpora / "b")))
  assert other["sha256"] != here["sha256"]
  # The folder itself may change on resume (the text is locked by its fingerprint).
  workdir = tmp_path / "run"
  workdir.mkdir()
  recorded = tiny_config(corpora / "a").to_dict()
  (workdir / "config.json").write_text(json.dumps(recorded, default=str))
  rundir.check_config_lock(tiny_config(moved), str(workdir))


def test_a_workdir_of_other_text_is_one_line_and_left_as_it_was(capsys, corpora, tmp_path):
  workdir = tmp_path / "run"
  faultprobes.foreign_data_workdir(workdir, input_pipeline.load_corpus(str(corpora / "b")))
  before = tree_digest(str(workdir))
  argv = _argv(workdir, corpora / "a")
  assert_one_line(*run_main(capsys, "language_modeling", argv), "was trained on other data")
  assert tree_digest(str(workdir)) == before
