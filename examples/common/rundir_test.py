"""The run directory on a toy family: records, resume, unreadable checkpoints, stops, the config
lock, file modes and the machine record. The toy trainer owns its loop, as the real ones do."""

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from examples.common import optimizers, rundir
from examples.common.checkpoint import Checkpointer, NoReadableCheckpointError
from examples.common.errors import UserError
from examples.common.faultprobes import SYSFS_REFUSAL, tree_digest
from examples.common.metrics import MetricsWriter, read_metrics
from examples.common.nonfinite import NonFiniteLossError
from examples.common.progress import StepLosses


def _config(num_epochs=3, optimizer="sgdm,rsgdm-scale", **fields):
  config = ml_collections.ConfigDict()
  config.optimizer = optimizer
  config.num_epochs = num_epochs
  config.learning_rate = 0.1
  config.width = 4
  config.grad_compression = "none"
  config.progress_bar = False
  config.update(fields)
  return config


def _train(workdir, config, fail_at_epoch=None):
  """A toy trainer: a counter that doubles each step; each view reports it plus an offset."""
  views = optimizers.parse_views(config.optimizer)
  template = {"x": jnp.ones(config.width), "step": jnp.int32(0)}
  with rundir.RunDirectory(config, str(workdir), views, template=template) as run:
    state = run.state
    for epoch in range(run.start_epoch, config.num_epochs):
      with StepLosses(epoch, int(state["step"]), 2, progress_bar=False) as tracker:
        for _ in range(2):
          state = {"x": state["x"] * 2, "step": state["step"] + 1}
          tracker.add(jnp.nan if epoch == fail_at_epoch else state["x"].sum())
        tracker.finish()
      records, models = {}, {}
      for offset, view in enumerate(views):
        records[view.name] = {"step": int(state["step"]), "value": float(state["x"].sum()) + offset}
        models[view.name] = {"w": state["x"] + offset}
      run.write(epoch, records)
      run.save(epoch, state, models)
    return run.records


def test_records_per_view_and_checkpointed_models(tmp_path):
  records = _train(tmp_path, _config())
  for offset, name in enumerate(("sgdm", "rsgdm-scale")):
    assert read_metrics(str(tmp_path / name)) == records[name]
    # x doubles twice per epoch from ones(4): sum 16, 64, 256.
    assert [r["value"] for r in records[name]] == [16.0 + offset, 64.0 + offset, 256.0 + offset]
    assert set(records[name][0]) == {"epoch", "step", "value"}
    assert json.loads((tmp_path / name / "config.json").read_text())["optimizer"] == name
  with Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
    restored = ckpt.restore({"model-rsgdm-scale": None, "state": None}, epoch=2)
  np.testing.assert_array_equal(restored["model-rsgdm-scale"]["w"], np.full(4, 65.0))
  assert int(restored["state"]["step"]) == 6


def test_a_grown_run_resumes_where_it_stopped(tmp_path):
  # More epochs, and fields that do not change results: the progress bar, the sweep around it.
  _train(tmp_path, _config(num_epochs=2, sweep=ml_collections.ConfigDict({"seeds": (0,)})))
  grown = _config(
    num_epochs=3, progress_bar=True, sweep=ml_collections.ConfigDict({"seeds": (0, 1)})
  )
  records = _train(tmp_path, grown)
  assert records == _train(tmp_path / "whole", _config(num_epochs=3))
  machines = json.loads((tmp_path / "machine.json").read_text())
  assert [m["epoch_started"] for m in machines] == [0, 2]
  assert all(m["machine"]["cpu_cores"] >= 1 for m in machines)
  assert json.loads((tmp_path / "config.json").read_text())["num_epochs"] == 3


def test_no_readable_checkpoint_stops_saying_what_to_do(tmp_path):
  _train(tmp_path, _config(num_epochs=2))
  for epoch in ("0", "1"):
    for directory, _, files in os.walk(tmp_path / "checkpoints" / epoch / "state"):
      for name in files:
        if os.path.basename(directory) == "d":
          open(os.path.join(directory, name), "wb").close()  # emptied array files
  with pytest.raises(NoReadableCheckpointError, match=r"None of the checkpoints .* move .* away"):
    _train(tmp_path, _config(num_epochs=3))
  # Nothing was moved or cut back: the records and the checkpoints are as they were.
  assert [r["epoch"] for r in read_metrics(str(tmp_path / "sgdm"))] == [0, 1]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0", "1"]


def test_non_finite_loss_stops_and_closes_the_writers(tmp_path, monkeypatch):
  closed = []
  original = MetricsWriter.close

  def close(self):
    closed.append(self.path)
    original(self)

  monkeypatch.setattr(MetricsWriter, "close", close)
  with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2\b"):
    _train(tmp_path, _config(), fail_at_epoch=1)
  assert sorted(closed) == sorted(
    str(tmp_path / n / "metrics.jsonl") for n in ("rsgdm-scale", "sgdm")
  )
  assert [r["epoch"] for r in read_metrics(str(tmp_path / "sgdm"))] == [0]
  with Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
    assert ckpt.all_epochs() == [0]


def test_one_view_keeps_the_flat_layout(tmp_path):
  _train(tmp_path, _config(num_epochs=1, optimizer="sgdm"))
  assert [r["value"] for r in read_metrics(str(tmp_path))] == [16.0]
  assert not (tmp_path / "sgdm").exists()
  with Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
    assert ckpt.restore({"model": None})["model"]["w"].shape == (4,)


@pytest.mark.parametrize(
  ("change", "named"),
  [
    ({"learning_rate": 0.2}, r"learning_rate: 0\.1 -> 0\.2"),
    ({"optimizer": "sgdm,rsgdm-scale@0.25"}, r"optimizer: 'sgdm,rsgdm-scale' -> 'sgdm,rsgdm-sc"),
    ({"optimizer": "sgdm,rsgdm-sign,rsgdm-topk"}, r"optimizer: .* -> 'sgdm,rsgdm-sign,rsgdm-topk'"),
    ({"num_epochs": 1}, r"num_epochs: 2 -> 1"),
    ({"grad_compression": "sign"}, r"grad_compression: 'none' -> 'sign'"),
    ({"width": 8, "learning_rate": 1.0}, r"learning_rate: 0\.1 -> 1\.0; width: 4 -> 8"),
  ],
)
def test_a_changed_config_is_refused_and_the_workdir_left_byte_for_byte(tmp_path, change, named):
  _train(tmp_path, _config(num_epochs=2))
  before = tree_digest(tmp_path)
  config = _config(num_epochs=2)
  config.update(change)
  with pytest.raises(UserError, match=rf"trained with another config .*Differing: {named}"):
    _train(tmp_path, config)
  assert tree_digest(tmp_path) == before  # no empty view folders, no rewritten config.json
  # The documented way to change a locked field: a new workdir.
  assert _train(tmp_path / "new", config)


def test_a_checkpoint_that_does_not_fit_is_a_config_mismatch(tmp_path):
  _train(tmp_path, _config(num_epochs=1))
  os.remove(tmp_path / "config.json")  # a workdir from before the lock: only the shapes tell
  with pytest.raises(UserError, match=r"checkpoint of epoch 0 .* does not fit this config"):
    _train(tmp_path, _config(num_epochs=2, width=8))


def test_files_get_the_users_umask(tmp_path):
  previous = os.umask(0o022)
  try:
    _train(tmp_path, _config(num_epochs=1))
  finally:
    os.umask(previous)
  for name in ("config.json", "machine.json", "sgdm/config.json"):
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name


def _recorded(workdir, **fields):
  """A workdir whose ``config.json`` records ``_config(**fields)`` (nothing trained)."""
  (workdir / "config.json").write_text(json.dumps(_config(**fields).to_dict()))


@pytest.mark.parametrize(
  ("recorded", "resumed"),
  [
    ("sgdm, rsgdm-scale", "sgdm,rsgdm-scale"),
    ("sgdm,rsgdm-topk@1e-2", "sgdm , rsgdm-topk@0.01"),
    ("rsgdm-scale@0.250", "rsgdm-scale@.25"),
  ],
)
def test_two_spellings_of_one_optimizer_list_pass_the_lock(tmp_path, recorded, resumed):
  _recorded(tmp_path, optimizer=recorded)
  rundir.check_config_lock(_config(optimizer=resumed), str(tmp_path))
  with pytest.raises(UserError, match="Differing: optimizer"):
    rundir.check_config_lock(_config(optimizer="sgdm,rsgdm-topk@0.02"), str(tmp_path))


def test_two_spellings_of_one_compression_pass_the_lock(tmp_path):
  _recorded(tmp_path, grad_compression="topk@1e-2")
  rundir.check_config_lock(_config(grad_compression="topk@0.01"), str(tmp_path))
  with pytest.raises(UserError, match=r"Differing: grad_compression: 'topk@0.01' -> 'topk@0.02'"):
    rundir.check_config_lock(_config(grad_compression="topk@0.02"), str(tmp_path))


def test_the_lock_lists_only_the_fields_the_family_has(tmp_path):
  _recorded(tmp_path)
  with pytest.raises(UserError) as error:
    rundir.check_config_lock(_config(learning_rate=0.2), str(tmp_path))
  # The toy config has progress_bar of the fields that may change, and none of the others.
  assert str(error.value).endswith(
    "Fields that may change on resume: num_epochs (more), progress_bar."
  )


def _workdir_faults(tmp_path):
  """Each workdir a run cannot use, with what its one line says; made under ``tmp_path``."""
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  faults = {
    "empty": ("", "The workdir is empty"),
    "blank": ("  ", "The workdir is empty"),
    "a file": (str(a_file), "is a file, not a directory"),
    "under a file": (str(a_file / "run"), f"lies under {a_file}, which is a file"),
    # A file system that refuses to create anything in it (sysfs; whoever runs the tests).
    "refused by the file system": ("/sys/rsgd-run", SYSFS_REFUSAL),
  }
  if os.geteuid() != 0:  # permission bits bind every user but root
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    faults["not writable"] = (str(locked / "run"), "is not writable by this user")
  else:  # root passes permission bits: a folder it cannot enter (another process's) instead
    faults["not writable"] = ("/proc/1/rsgd-run", "is not writable by this user")
  return faults


@pytest.mark.parametrize(
  "fault",
  ["empty", "blank", "a file", "under a file", "refused by the file system", "not writable"],
)
def test_every_workdir_fault_is_one_line_and_nothing_is_written(tmp_path, fault):
  workdir, message = _workdir_faults(tmp_path)[fault]
  before = tree_digest(tmp_path)
  with pytest.raises(UserError) as error:
    _train(workdir, _config(num_epochs=1))
  assert message in str(error.value) and "\n" not in str(error.value)
  assert tree_digest(tmp_path) == before


def test_a_workdir_on_a_read_only_file_system_is_one_line(tmp_path, monkeypatch):
  # No test may mount a file system: the read-only flag statvfs reports is what is checked.
  real = os.statvfs

  def read_only(path):
    result = real(path)
    return os.statvfs_result((*result[:8], result.f_flag | os.ST_RDONLY, *result[9:]))

  monkeypatch.setattr(os, "statvfs", read_only)
  with pytest.raises(UserError, match=r"lies on a read-only file system \(.*\): give a workdir"):
    rundir.check_workdir(str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def _train_on(workdir, config, data):
  """The toy trainer, locked to ``data`` (its result does not depend on it)."""
  views = optimizers.parse_views(config.optimizer)
  template = {"x": jnp.ones(config.width), "step": jnp.int32(0)}
  with rundir.RunDirectory(config, str(workdir), views, template=template, data=data) as run:
    for epoch in range(run.start_epoch, config.num_epochs):
      run.write(epoch, {view.name: {"value": float(epoch)} for view in views})
      run.save(epoch, run.state)
    return run.start_epoch


def test_a_run_resumes_on_its_data_wherever_it_lies_and_refuses_other_data(tmp_path):
  data = {"train": np.arange(12, dtype=np.uint8).reshape(3, 4), "labels": np.arange(3)}
  _train_on(tmp_path, _config(num_epochs=1), data)
  recorded = json.loads((tmp_path / "data.json").read_text())
  assert (recorded["arrays"], recorded["bytes"]) == (2, 12 + data["labels"].nbytes)
  before = tree_digest(tmp_path)
  other = {**data, "train": data["train"] + 1}
  with pytest.raises(UserError, match=r"was trained on other data \(.*data\.json: 2 arrays, "):
    _train_on(tmp_path, _config(num_epochs=2), other)
  assert tree_digest(tmp_path) == before
  # The same data (another copy, as loaded from another folder) resumes.
  moved = {name: array.copy() for name, array in data.items()}
  assert _train_on(tmp_path, _config(num_epochs=2), moved) == 1
