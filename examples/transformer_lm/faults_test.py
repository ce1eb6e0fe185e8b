"""The transformer family's fault matrix: values, workdir and data, each one line with exit status 1
and the workdir untouched (the checks are the shared ones; these probe that the family uses them)."""

import pytest

from examples.common import faultprobes
from examples.common.faultprobes import (
  assert_one_line,
  keep_xla_flags,  # noqa: F401 (autouse: every test here)
  run_main,
  tree_digest,
)
from examples.language_modeling import input_pipeline
from examples.language_modeling.conftest import write_ptb

CONFIG = "--config=examples/transformer_lm/configs/small.py"
TINY = [
  "--config.context=8", "--config.layers=1", "--config.width=16", "--config.heads=2",
  "--config.batch_size=8", "--config.eval_batch_size=8", "--config.num_epochs=1",
  "--config.evals_per_epoch=1", "--config.num_devices=1", "--config.max_eval_tokens=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
  """Two tiny Penn-Treebank-format corpora: ``a`` and ``b`` (other text)."""
  root = tmp_path_factory.mktemp("corpora")
  for name, seed in (("a", 0), ("b", 1)):
    (root / name).mkdir()
    write_ptb(root / name, lines=(240, 30, 30), seed=seed)
  return root


def _argv(workdir, data_source, *more):
  return [CONFIG, f"--workdir={workdir}", f"--config.data_source={data_source}", *TINY, *more]


VALUES = [
  ("--config.learning_rate=nan", "config.learning_rate=nan (must be a finite number > 0)"),
  ("--config.dropout=inf", "config.dropout=inf (must be a finite number in [0, 1))"),
  ("--config.optimizer=adamw,adamw-scale@nan", "'adamw-scale@nan': the value after @ must be"),
  ("--config.positions=alibi", "config.positions='alibi'"),
  ("--config.width=18", "must split into config.heads=2 heads of even size"),
  ("--config.evals_per_epoch=100000", "config.evals_per_epoch=100000 asks for more evaluations"),
]


@pytest.mark.parametrize(("override", "message"), VALUES)
def test_a_bad_value_is_one_line_before_anything_is_written(
  capsys, corpora, tmp_path, override, message
):
  workdir = tmp_path / "run"
  assert_one_line(
    *run_main(capsys, "transformer_lm", _argv(workdir, corpora / "a", override)), message
  )
  assert not workdir.exists()


def test_a_workdir_fault_is_one_line(capsys, corpora, tmp_path):
  workdir, message = faultprobes.workdir_probes(tmp_path)["under a file"]
  before = tree_digest(str(tmp_path))
  assert_one_line(*run_main(capsys, "transformer_lm", _argv(workdir, corpora / "a")), message)
  assert tree_digest(str(tmp_path)) == before


def test_a_workdir_of_other_text_is_one_line_and_left_as_it_was(capsys, corpora, tmp_path):
  workdir = tmp_path / "run"
  faultprobes.foreign_data_workdir(workdir, input_pipeline.load_corpus(str(corpora / "b")))
  before = tree_digest(str(workdir))
  argv = _argv(workdir, corpora / "a")
  assert_one_line(*run_main(capsys, "transformer_lm", argv), "was trained on other data")
  assert tree_digest(str(workdir)) == before
