"""The faults a careful user runs into, as probes of a family's entry point (for its tests).

Each family's ``faults_test.py`` runs its ``main`` in-process (:func:`run_main`) with one fault
each (a non-finite value, a bad ``@`` value, an unusable workdir, a workdir trained on other
data) and asserts: exit status 1, one ``error: ...`` line, and the workdir untouched
(:func:`tree_digest` before and after). The probes fail before anything is compiled, so a whole
matrix costs seconds.
"""

import hashlib
import importlib
import json
import os
from collections.abc import Sequence
from typing import Any

import pytest

from examples.common import datalock, entry

# Entry point of each family: the module whose train_and_evaluate its main.py runs, and its default
# config module.
FAMILIES = {
  "image_classification": (
    "examples.image_classification.trainers",  # the plain or the compressed trainer
    "examples.image_classification.configs.default",
  ),
  "language_modeling": (
    "examples.language_modeling.train",
    "examples.language_modeling.configs.default",
  ),
  "graph": ("examples.graph.train", "examples.graph.configs.ppi"),
  "transformer_lm": ("examples.transformer_lm.train", "examples.transformer_lm.configs.default"),
}


def run_main(capsys: Any, family: str, argv: Sequence[str]) -> tuple[int, str]:
  """Runs ``python -m examples.<family>.main *argv`` in-process; returns (exit status, stderr)."""
  trainer, config_module = FAMILIES[family]
  train = importlib.import_module(trainer)
  with pytest.raises(SystemExit) as exited:
    entry.run("usage", train.train_and_evaluate, config_module, argv=["main", *argv])
  return exited.value.code or 0, capsys.readouterr().err


def tree_digest(directory: str) -> dict[str, str]:
  """Every file's bytes and mode, and every folder, under ``directory`` (``{}`` when it does not
  exist)."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), directory)] = "dir"
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = (
          f"{hashlib.sha256(f.read()).hexdigest()} {os.stat(path).st_mode:o}"
        )
  return out


# sysfs creates nothing for anyone: root passes the permission check and is refused by the file
# system itself; any other user is refused by the permission check.
SYSFS_REFUSAL = (
  "cannot be created or written" if os.access("/sys", os.W_OK) else "is not writable by this user"
)


def workdir_probes(tmp_path: Any) -> dict[str, tuple[str, str]]:
  """``{fault: (--workdir value, what the one line says)}``, made under ``tmp_path``."""
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  return {
    "empty": ("", "The workdir is empty"),
    "a file": (str(a_file), "is a file, not a directory"),
    "under a file": (str(a_file / "run"), "which is a file"),
    "refused by the file system": ("/sys/rsgd-run", SYSFS_REFUSAL),
  }


def foreign_data_workdir(workdir: Any, other_data: Any) -> None:
  """A workdir started on ``other_data`` (its ``data.json``), as a refused resume finds it."""
  workdir.mkdir()
  (workdir / datalock.DATA_FILE).write_text(json.dumps(datalock.fingerprint(other_data)))


def assert_one_line(status: int, err: str, message: str) -> None:
  """Exit status 1, one ``error: ...`` line holding ``message`` and ending the output (the log
  lines of a run that got as far as loading its data may come before it), no traceback."""
  lines = err.strip().splitlines()
  assert status == 1, err[-2000:]
  assert "Traceback" not in err, err[-2000:]
  assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err[-2000:]
  assert message in lines[-1], lines[-1]


@pytest.fixture(autouse=True)
def keep_xla_flags(monkeypatch: Any) -> None:
  """The entry point sets a CPU flag in ``XLA_FLAGS`` for the process; later tests get theirs."""
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
