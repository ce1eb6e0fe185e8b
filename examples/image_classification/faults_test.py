"""The image trainer's fault matrix: values, workdir and data, each one line with exit status 1
and the workdir untouched. (A corrupt checkpoint: train_test's fallback test.)"""

import os
import shutil

import pytest

from examples.common import datalock, faultprobes
from examples.common.faultprobes import (
  assert_one_line,
  keep_xla_flags,  # noqa: F401 (autouse: every test here)
  run_main,
  tree_digest,
)
from examples.image_classification import input_pipeline, testdata

CONFIG = "--config=examples/image_classification/configs/fashion_mnist_cnn.py"
TINY = (
  "--config.num_epochs=1",
  "--config.batch_size=16",
  "--config.train_eval_examples=16",
  "--config.progress_bar=False",
  "--config.model_kwargs.width=4",
  "--config.model_kwargs.hidden=8",
)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """Two tiny Fashion-MNIST-format data sets: ``a`` and ``b`` (other images)."""
  root = tmp_path_factory.mktemp("images")
  for name, seed in (("a", 0), ("b", 1)):
    testdata.write_fashion_mnist(str(root / name), train=32, test=16, size=8, seed=seed)
  return root


def _argv(workdir, data_dir, *more):
  return [CONFIG, f"--workdir={workdir}", f"--config.data_dir={data_dir}", *TINY, *more]


VALUES = [
  ("--config.learning_rate=nan", "config.learning_rate=nan (must be a finite number > 0)"),
  ("--config.momentum=nan", "config.momentum=nan (must be a finite number in [0, 1))"),
  ("--config.alpha=nan", "config.alpha=nan (must be a finite number in (0, 1])"),
  ("--config.topk_fraction=inf", "config.topk_fraction=inf (must be a finite number in (0, 1])"),
  ("--config.lr_decay_factor=-inf", "config.lr_decay_factor=-inf (must be a finite number > 0)"),
  ("--config.optimizer=rsgdm-topk@nan", "'rsgdm-topk@nan': the value after @ must be a finite"),
  ("--config.optimizer=sgdm,rsgdm-scale@inf", "'rsgdm-scale@inf': the value after @ must be"),
  ("--config.grad_compression=topk@nan", "config.grad_compression='topk@nan' (must be one of"),
]


@pytest.mark.parametrize(("override", "message"), VALUES)
def test_a_bad_value_is_one_line_before_anything_is_written(
  capsys, images, tmp_path, override, message
):
  workdir = tmp_path / "run"
  assert_one_line(
    *run_main(capsys, "image_classification", _argv(workdir, images / "a", override)), message
  )
  assert not workdir.exists()


@pytest.mark.parametrize("fault", ["empty", "a file", "under a file", "refused by the file system"])
def test_a_workdir_fault_is_one_line(capsys, images, tmp_path, fault):
  workdir, message = faultprobes.workdir_probes(tmp_path)[fault]
  before = tree_digest(str(tmp_path))
  assert_one_line(*run_main(capsys, "image_classification", _argv(workdir, images / "a")), message)
  assert tree_digest(str(tmp_path)) == before


def _contents(data_dir):
  """What the trainer locks the run to: the loaded data's contents."""
  from examples.image_classification.configs import fashion_mnist_cnn

  config = fashion_mnist_cnn.get_config()
  config.data_dir, config.batch_size = str(data_dir), 16
  return input_pipeline.create_input(config).contents()


def test_the_lock_is_to_the_data_not_its_folder(images, tmp_path):
  moved = tmp_path / "moved"
  shutil.copytree(images / "a", moved)
  here = datalock.fingerprint(_contents(images / "a"))
  assert datalock.fingerprint(_contents(moved)) == here
  assert datalock.fingerprint(_contents(images / "b"))["sha256"] != here["sha256"]


def test_a_workdir_of_other_data_is_one_line_and_left_as_it_was(capsys, images, tmp_path):
  workdir = tmp_path / "run"
  faultprobes.foreign_data_workdir(workdir, _contents(images / "b"))
  before = tree_digest(str(workdir))
  argv = _argv(workdir, images / "a")
  assert_one_line(*run_main(capsys, "image_classification", argv), "was trained on other data")
  assert tree_digest(str(workdir)) == before


def test_image_folders_are_locked_to_their_file_names_and_labels(tmp_path):
  def contents(data_dir):
    folders = input_pipeline.ImageFolderInput(
      str(data_dir), batch_size=2, seed=0, num_workers=0, train_eval_examples=2
    )
    return datalock.fingerprint(folders.contents())

  testdata.write_image_folders(str(tmp_path / "a"), per_class=2, classes=2)
  shutil.copytree(tmp_path / "a", tmp_path / "moved")
  here = contents(tmp_path / "a")
  assert contents(tmp_path / "moved") == here
  train = tmp_path / "moved" / "train"
  first_class = sorted(os.listdir(train))[0]
  image = sorted(os.listdir(train / first_class))[0]
  os.rename(train / first_class / image, train / first_class / f"x{image}")
  assert contents(tmp_path / "moved")["sha256"] != here["sha256"]
