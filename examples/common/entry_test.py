"""The one entry point: --help, misspelt fields, one-line user errors, tracebacks for bugs."""

import importlib
import os

import pytest

from examples.common import config_record, entry, errors

CONFIG = "examples/image_classification/configs/fashion_mnist_cnn.py"
FAMILIES = (
  "examples.image_classification.configs.default",
  "examples.language_modeling.configs.default",
  "examples.graph.configs.ppi",
)


@pytest.fixture(autouse=True)
def _restore_xla_flags(monkeypatch):
  """The entry point sets a CPU flag in XLA_FLAGS for the process; later tests get theirs back."""
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))


def _run(capsys, train, *args):
  """Runs the entry point in-process; returns (exit status, stdout, stderr)."""
  argv = ["main", *args]
  with pytest.raises(SystemExit) as exited:
    entry.run("usage text", train, FAMILIES[0], argv=argv)
  out = capsys.readouterr()
  return exited.value.code or 0, out.out, out.err


def _never(config, workdir):
  raise AssertionError("must not train")


def test_help_lists_every_field_with_default_and_meaning(capsys):
  status, out, _ = _run(capsys, _never, "--help")
  assert status == 0
  assert "usage text" in out
  assert "learning_rate = 0.1" in out and "initial learning rate (> 0)" in out
  for field in importlib.import_module(FAMILIES[0]).get_config():
    assert f"  {field} = " in out, field


@pytest.mark.parametrize("module", FAMILIES)
def test_every_config_field_has_a_meaning(module):
  fields = entry.field_help(module)
  declared = set(
    config_record.flat_fields(importlib.import_module(module).get_config(), groups=True)
  )
  assert declared == set(fields)
  assert not [name for name, meaning in fields.items() if not meaning]


def test_a_misspelt_field_names_the_nearest_ones(capsys, tmp_path):
  status, _, err = _run(
    capsys, _never, f"--config={CONFIG}", f"--workdir={tmp_path}", "--config.optimiser=sgdm"
  )
  assert status == 1
  assert err == (
    "error: --config.optimiser is not a config field; did you mean optimizer? --help lists "
    "every field.\n"
  )
  status, _, err = _run(
    capsys, _never, f"--config={CONFIG}", f"--workdir={tmp_path}", "--config.num_epochs=two"
  )
  assert status == 1 and err.startswith("error: ") and err.count("\n") == 1


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(capsys, tmp_path):
  def refuses(config, workdir):
    raise errors.UserError(f"config.seed={config.seed} is refused; use another.")

  status, _, err = _run(capsys, refuses, f"--config={CONFIG}", f"--workdir={tmp_path}")
  assert (status, err.splitlines()[-1]) == (1, "error: config.seed=0 is refused; use another.")
  assert "Traceback" not in err

  def has_a_bug(config, workdir):
    raise ValueError("a bug")

  with pytest.raises(ValueError, match="a bug"):
    entry.run("usage", has_a_bug, FAMILIES[0], argv=["main", f"--config={CONFIG}", "--workdir=x"])


def test_the_config_reaches_the_trainer_with_overrides(capsys, tmp_path):
  seen = []
  argv = [
    "main",
    f"--config={CONFIG}",
    f"--workdir={tmp_path}",
    "--config.optimizer=sgdm,rsgdm-sign",
  ]
  entry.run(
    "usage",
    lambda config, workdir: seen.append((config.optimizer, config.seed, workdir)),
    FAMILIES[0],
    argv=[*argv, "--config.seed=3"],
  )
  assert seen == [("sgdm,rsgdm-sign", 3, str(tmp_path))]
