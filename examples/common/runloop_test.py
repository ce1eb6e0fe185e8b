"""The shared run loop on a toy family: records, resume, unreadable checkpoints, stops, logs."""

import logging
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from examples.common import runloop, views
from examples.common.checkpoint import Checkpointer, NoReadableCheckpointError
from examples.common.metrics import read_metrics
from examples.common.nonfinite import NonFiniteLossError


def _config(num_epochs=3, optimizer="sgdm,rsgdm-scale"):
  config = ml_collections.ConfigDict()
  config.optimizer = optimizer
  config.num_epochs = num_epochs
  return config


def _family(fail_at_epoch=None):
  """A counter that doubles each epoch; each view reports it plus a view-specific offset."""

  def train_epoch(state, epoch):
    with runloop.StepLosses(epoch, int(state["step"]), 2, progress_bar=False) as tracker:
      for _ in range(2):
        state = {"x": state["x"] * 2, "step": state["step"] + 1}
        loss = jnp.nan if epoch == fail_at_epoch else state["x"].sum()
        tracker.add(loss)
      losses, _ = tracker.finish()
    return state, {"step": int(state["step"]), "train_loss": float(losses.mean())}

  def evaluate(state, epoch, history):
    out = {}
    for offset, name in enumerate(("sgdm", "rsgdm-scale")):
      value = float(state["x"].sum()) + offset
      out[name] = ({"value": value, "seen": len(history[name])}, {"w": state["x"] + offset})
    return state, out

  return train_epoch, evaluate


def _run(workdir, config, **family):
  train_epoch, evaluate = _family(**family)
  return runloop.run(
    config,
    str(workdir),
    views=views.parse_views(config.optimizer),
    state={"x": jnp.ones(4), "step": jnp.int32(0)},
    train_epoch=train_epoch,
    evaluate=evaluate,
    num_epochs=config.num_epochs,
  )


def test_records_per_view_and_checkpointed_models(tmp_path):
  result = _run(tmp_path, _config())
  for offset, name in enumerate(("sgdm", "rsgdm-scale")):
    records = read_metrics(str(tmp_path / name))
    assert records == result.records[name]
    # x doubles twice per epoch from ones(4): sum 16, 64, 256.
    assert [r["value"] for r in records] == [16.0 + offset, 64.0 + offset, 256.0 + offset]
    assert [r["seen"] for r in records] == [0, 1, 2]
    assert set(records[0]) == {"epoch", "step", "train_loss", "value", "seen", "seconds"}
  with Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
    restored = ckpt.restore({"model-rsgdm-scale": None, "state": None}, epoch=2)
  np.testing.assert_array_equal(restored["model-rsgdm-scale"]["w"], np.full(4, 65.0))
  assert int(restored["state"]["step"]) == 6


def test_no_readable_checkpoint_stops_saying_what_to_do(tmp_path):
  _run(tmp_path, _config(num_epochs=2))
  for epoch in ("0", "1"):
    for directory, _, files in os.walk(tmp_path / "checkpoints" / epoch / "state"):
      for name in files:
        if os.path.basename(directory) == "d":
          open(os.path.join(directory, name), "wb").close()  # emptied array files
  with pytest.raises(NoReadableCheckpointError, match=r"None of the checkpoints .* move .* away"):
    _run(tmp_path, _config(num_epochs=3))
  # Nothing was moved or cut back: the records and the checkpoints are as they were.
  assert [r["epoch"] for r in read_metrics(str(tmp_path / "sgdm"))] == [0, 1]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0", "1"]


def test_non_finite_loss_stops_and_closes_the_writers(tmp_path, monkeypatch):
  closed = []
  original = runloop.MetricsWriter.close

  def close(self):
    closed.append(self.path)
    original(self)

  monkeypatch.setattr(runloop.MetricsWriter, "close", close)
  with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2\b"):
    _run(tmp_path, _config(), fail_at_epoch=1)
  assert sorted(closed) == sorted(
    str(tmp_path / n / "metrics.jsonl") for n in ("rsgdm-scale", "sgdm")
  )
  assert [r["epoch"] for r in read_metrics(str(tmp_path / "sgdm"))] == [0]
  with Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
    assert ckpt.all_epochs() == [0]


def test_one_view_keeps_the_flat_layout(tmp_path):
  config = _config(num_epochs=1, optimizer="sgdm")
  train_epoch, evaluate = _family()

  def one_view(state, epoch, history):
    state, out = evaluate(state, epoch, {"sgdm": history["sgdm"], "rsgdm-scale": []})
    return state, {"sgdm": out["sgdm"]}

  runloop.run(
    config,
    str(tmp_path),
    views=views.parse_views("sgdm"),
    state={"x": jnp.ones(4), "step": jnp.int32(0)},
    train_epoch=train_epoch,
    evaluate=one_view,
    num_epochs=1,
  )
  assert [r["value"] for r in read_metrics(str(tmp_path))] == [16.0]
  assert not (tmp_path / "sgdm").exists()
  with Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
    assert ckpt.restore({"model": None})["model"]["w"].shape == (4,)


def test_orbax_info_lines_are_filtered_and_warnings_kept(tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    _run(tmp_path, _config(num_epochs=1))
    logging.getLogger("absl").warning("kept")
  orbax = [r for r in caplog.records if "orbax" in r.pathname]
  assert not [r for r in orbax if r.levelno < logging.WARNING]
  assert "kept" in caplog.text
  assert "epoch 0 sgdm" in caplog.text  # the loop's own INFO line is not filtered
