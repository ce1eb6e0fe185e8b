"""Checkpoint save/restore round trip, latest-epoch bookkeeping and pruning."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from examples.common.checkpoint import Checkpointer, abstract_like


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
