"""Checkpoint save/restore round trip, latest-epoch bookkeeping and pruning."""

import errno
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from examples.common.checkpoint import (
  CHECKSUMS_FILE,
  TMP_SUFFIX,
  Checkpointer,
  CheckpointMismatchError,
  _absorb_abandoned_reads,
  _DropAbandonedWrites,
  _os_error_in,
  abstract_like,
)
from examples.common.fileio import RunIOError


def _state(value: float):
  return {"params": {"w": jnp.full((3,), value)}, "step": jnp.int32(int(value))}


def test_round_trip_and_latest(tmp_path):
  with Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2) as ckpt:
    assert ckpt.latest_epoch() is None
    for epoch in range(3):
      ckpt.save(epoch, {"state": _state(float(epoch)), "model": {"w": jnp.zeros(2) + epoch}})
    assert ckpt.latest_epoch() == 2
    restored = ckpt.restore({"state": abstract_like(_state(0.0))})["state"]
    np.testing.assert_array_equal(restored["params"]["w"], np.full((3,), 2.0))
    assert int(restored["step"]) == 2
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["1", "2"]  # pruned to the last two
    model = ckpt.restore({"model": {"w": jnp.zeros(2)}}, epoch=1)["model"]
    np.testing.assert_array_equal(model["w"], np.ones(2))


def test_reopened_directory_resumes_from_latest(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(0, {"state": _state(5.0)})
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_epoch() == 0
    np.testing.assert_array_equal(
      ckpt.restore({"state": _state(0.0)})["state"]["params"]["w"], np.full((3,), 5.0)
    )


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt, pytest.raises(FileNotFoundError, match="No checkpoint"):
    ckpt.restore({"state": _state(0.0)})


def test_restore_into_a_different_tree_is_a_clear_error(tmp_path):
  # A checkpoint from before the trainer's state became plain dicts: each leaf under a "value" key.
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(0, {"state": {"params": {"w": {"value": jnp.ones(3)}}}})
  with (
    Checkpointer(str(tmp_path)) as ckpt,
    pytest.raises(ValueError, match=r"epoch 0 .* holds a different tree .* fresh workdir"),
  ):
    ckpt.restore({"state": abstract_like({"params": {"w": jnp.ones(3)}})})


def _full_disk_at_finalize(monkeypatch):
  """Orbax's final rename of the temporary checkpoint fails as on a full disk."""
  real_rename = os.rename

  def rename(src, dst, *args, **kwargs):
    if TMP_SUFFIX in str(src):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
    return real_rename(src, dst, *args, **kwargs)

  monkeypatch.setattr(os, "rename", rename)


def test_a_save_on_a_full_disk_is_one_message_and_leaves_no_temporary(
  tmp_path, monkeypatch, caplog
):
  directory = tmp_path / "ckpt"
  with Checkpointer(str(directory)) as ckpt:
    ckpt.save(0, {"state": _state(1.0)})
    _full_disk_at_finalize(monkeypatch)
    with pytest.raises(RunIOError) as raised:
      ckpt.save(1, {"state": _state(2.0)})
    monkeypatch.undo()
  message = str(raised.value)
  assert message.startswith(
    f"cannot write the checkpoint {directory / '1'}: No space left on device (ENOSPC)."
  ), message
  assert "\n" not in message and "rerun the same command" in message
  assert sorted(os.listdir(directory)) == ["0"]  # no orphan *.orbax-checkpoint-tmp
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
  # The space is back: the same directory resumes from epoch 0 and saves epoch 1.
  with Checkpointer(str(directory)) as ckpt:
    assert ckpt.latest_epoch() == 0
    restored = ckpt.restore({"state": abstract_like(_state(0.0))})["state"]
    np.testing.assert_array_equal(restored["params"]["w"], np.full((3,), 1.0))
    ckpt.save(1, {"state": _state(2.0)})
    assert ckpt.all_epochs() == [0, 1]


def test_a_temporary_checkpoint_left_by_a_killed_run_is_removed_at_the_next_start(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(0, {"state": _state(1.0)})
  orphan = tmp_path / f"1{TMP_SUFFIX}"
  (orphan / "state").mkdir(parents=True)
  (orphan / "state" / "partial").write_bytes(b"\0" * 16)
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_epoch() == 0
  assert sorted(os.listdir(tmp_path)) == ["0"]


def test_only_operating_system_errors_become_one_line():
  # TensorStore's message for a full disk (as Orbax raises it), a chained OSError, and a bug.
  tensorstore = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "/c/1.orbax-checkpoint-'
    'tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed writing: "/c/d/8c56": Failed to '
    "write 495997 bytes to file 4: No space left on device [os_error_code='28']"
  )
  assert _os_error_in(tensorstore).errno == errno.ENOSPC
  try:
    try:
      raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as error:
      raise RuntimeError("save failed") from error
  except RuntimeError as chained:
    assert _os_error_in(chained).errno == errno.EACCES
  assert _os_error_in(ValueError("Unsupported type: <class 'object'> for key: ('w',).")) is None


def test_only_the_abandoned_writes_of_a_failed_save_are_dropped_from_asyncio_logs():
  drop = _DropAbandonedWrites()
  drop.paths.add(f"/c/1{TMP_SUFFIX}")

  def record(message, error=None):
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    return logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1, message, (), exc_info)

  never = "Task exception was never retrieved\nfuture: <Task finished exception=ValueError({!r})>"
  assert not drop.filter(record(never.format(f"Error writing /c/1{TMP_SUFFIX}/state/d/0")))
  assert drop.filter(record(never.format("Error writing /c/other/d/0")))  # another path
  assert drop.filter(record("Unclosed client session"))  # another asyncio report
  try:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # raised here, not through Orbax
  except OSError as error:
    assert drop.filter(record("Future exception was never retrieved", error))


def test_a_failed_restore_leaves_no_reads_to_report_into_later_code(tmp_path, monkeypatch):
  # Orbax abandons the other reads at the first failed one; collected later, each would report an
  # unraisable error and a "never awaited" warning into whatever runs then (another test, say).
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  _absorb_abandoned_reads()  # wraps the recorder, as it wraps the hook a run starts with
  tree = {f"w{i}": jnp.full((32, 32), float(i)) for i in range(100)}
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(0, {"state": tree})
    with pytest.raises(CheckpointMismatchError):
      ckpt.restore({"state": abstract_like({**tree, "w0": jnp.zeros(8)})})
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    gc.collect()
  assert [u.exc_value for u in reported] == []
  assert [str(w.message) for w in caught] == []


# Checkpoints that prove their integrity: each kind of file Orbax writes, one byte flipped.


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
  """Checkpoints of epochs 0 and 1 (``state`` and ``model``), never changed: tests copy them."""
  directory = str(tmp_path_factory.mktemp("two") / "ckpt")
  with Checkpointer(directory) as ckpt:
    for epoch in range(2):
      ckpt.save(epoch, {"state": _state(float(epoch)), "model": {"w": jnp.zeros(2) + epoch}})
  return directory


def _kinds(step_dir):
  """One file of each kind under ``step_dir``: paths with the hashed file names as ``*``."""
  kinds = {}
  for root, _, files in os.walk(step_dir):
    for name in sorted(files):
      relative = os.path.relpath(os.path.join(root, name), step_dir)
      kind = re.sub(r"[0-9a-f]{32}", "*", relative)
      kinds.setdefault(kind, relative)
  return kinds


def _flip_byte(path):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    f.seek(0)
    f.write(data)


def test_every_kind_of_checkpoint_file_is_covered_by_the_checksums(two_epochs):
  step = os.path.join(two_epochs, "1")
  kinds = _kinds(step)
  # What Orbax writes (the step's and each item's metadata, the OCDBT manifests and data files,
  # the array metadata), all of it in the checksums.
  assert {"_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt"} <= set(kinds)
  assert any(kind.startswith("state/ocdbt.process_0/d/") for kind in kinds)
  with open(os.path.join(step, CHECKSUMS_FILE)) as f:
    recorded = json.load(f)["files"]
  on_disk = {
    os.path.relpath(os.path.join(root, name), step)
    for root, _, files in os.walk(step)
    for name in files
  }
  assert set(recorded) == on_disk - {CHECKSUMS_FILE}
  for relative, entry in recorded.items():
    with open(os.path.join(step, relative), "rb") as f:
      data = f.read()
    assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_flipped_byte_in_any_kind_of_file_falls_back_to_the_checkpoint_before(
  two_epochs, tmp_path, caplog
):
  for kind, relative in _kinds(os.path.join(two_epochs, "1")).items():
    if kind == CHECKSUMS_FILE:
      continue
    directory = str(tmp_path / re.sub(r"\W", "_", kind) / "ckpt")
    shutil.copytree(two_epochs, directory)
    _flip_byte(os.path.join(directory, "1", relative))
    caplog.clear()
    with caplog.at_level(logging.WARNING), Checkpointer(directory) as ckpt:
      epoch, restored = ckpt.restore_newest_readable({"state": abstract_like(_state(0.0))})
      assert epoch == 0, kind
      np.testing.assert_array_equal(restored["state"]["params"]["w"], np.zeros(3))
      assert ckpt.all_epochs() == [0], kind  # the corrupt one set aside
    assert (
      f"Skipping the checkpoint of epoch 1 in {directory}: its files differ from the checksums "
      f"written with it ({relative} changed)"
    ) in caplog.text, kind
    assert os.listdir(directory + "-unreadable")[0].startswith("1-")


def test_a_checkpoint_without_checksums_among_checked_ones_is_skipped(two_epochs, tmp_path):
  directory = str(tmp_path / "ckpt")
  shutil.copytree(two_epochs, directory)
  os.remove(os.path.join(directory, "1", CHECKSUMS_FILE))  # killed right after Orbax's finalize
  with Checkpointer(directory) as ckpt:
    assert ckpt.restore_newest_readable({"state": abstract_like(_state(0.0))})[0] == 0


def test_checkpoints_of_an_older_version_without_checksums_restore(two_epochs, tmp_path):
  directory = str(tmp_path / "ckpt")
  shutil.copytree(two_epochs, directory)
  for epoch in ("0", "1"):
    os.remove(os.path.join(directory, epoch, CHECKSUMS_FILE))
  with Checkpointer(directory) as ckpt:
    epoch, restored = ckpt.restore_newest_readable({"state": abstract_like(_state(0.0))})
  assert epoch == 1
  np.testing.assert_array_equal(restored["state"]["params"]["w"], np.ones(3))


def test_a_corrupt_checkpoint_falls_back_to_an_older_one_without_checksums(two_epochs, tmp_path):
  directory = str(tmp_path / "ckpt")
  shutil.copytree(two_epochs, directory)
  os.remove(os.path.join(directory, "0", CHECKSUMS_FILE))  # written by an older version
  _flip_byte(os.path.join(directory, "1", "state", "_METADATA"))
  with Checkpointer(directory) as ckpt:
    epoch, restored = ckpt.restore_newest_readable({"state": abstract_like(_state(0.0))})
  assert epoch == 0
  np.testing.assert_array_equal(restored["state"]["params"]["w"], np.zeros(3))
