"""The shared skeleton of a trainer: checks and the config lock before anything is read or written,
one return type, and the epoch means of the step losses."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from examples.common import config_checks, skeleton
from examples.common.errors import UserError
from examples.common.progress import StepLosses

RANGES = {"learning_rate": config_checks.POSITIVE, "num_epochs": config_checks.AT_LEAST_1}


def _config(**fields) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({"optimizer": "sgdm,rsgdm-scale", "learning_rate": 0.1})
  config.num_epochs = 1
  config.update(fields)
  return config


def _train(config, workdir) -> skeleton.RunResults:
  """A toy trainer in the families' shape: its loop, its records, the shared start and finish."""
  run = skeleton.start_run(config, str(workdir), RANGES)
  with run.open({"w": jnp.zeros(2)}):
    for epoch in range(run.start_epoch, config.num_epochs):
      run.write(
        epoch,
        {view.name: {"value": float(epoch + i)} for i, view in enumerate(run.views)},
        shared={"step": 3 * (epoch + 1)},
        seconds=0.5,
      )
      run.save(epoch, {"w": jnp.full(2, float(epoch))})
  return skeleton.finish(run)


def test_records_and_final_results_by_view(tmp_path):
  results = _train(_config(num_epochs=2), tmp_path)
  want = {
    name: [
      {"epoch": e, "step": 3 * (e + 1), "value": float(e + which), "seconds": 0.5} for e in range(2)
    ]
    for name, which in (("sgdm", 0), ("rsgdm-scale", 1))
  }
  assert results.records == want
  assert results.final == {name: records[-1] for name, records in want.items()}
  lines = (tmp_path / "rsgdm-scale" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == want["rsgdm-scale"]


@pytest.mark.parametrize(
  ("fields", "message"),
  [
    ({"optimizer": "sgdm,adam"}, "trajectory"),
    ({"learning_rate": -1.0}, r"config\.learning_rate=-1\.0"),
  ],
)
def test_a_bad_config_is_refused_before_the_workdir_exists(tmp_path, fields, message):
  with pytest.raises(UserError, match=message):
    skeleton.start_run(_config(**fields), str(tmp_path / "run"), RANGES)
  assert not (tmp_path / "run").exists()


def test_the_lock_is_checked_by_start_run_before_any_data(tmp_path):
  _train(_config(), tmp_path)
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  with pytest.raises(UserError, match=r"Differing: learning_rate: 0\.1 -> 0\.2\."):
    skeleton.start_run(_config(learning_rate=0.2), str(tmp_path), RANGES)
  assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
  # A grown run resumes from the last checkpoint and keeps the earlier records.
  results = _train(_config(num_epochs=2), tmp_path)
  assert [r["epoch"] for r in results.records["sgdm"]] == [0, 1]


def test_epoch_means_plain_and_weighted():
  losses = np.array([2.0, 1.0, 4.0], np.float32)
  accuracy = np.array([0.5, 0.25, 1.0], np.float32)
  with StepLosses(0, 0, 3, progress_bar=False) as plain:
    for loss, acc in zip(losses, accuracy, strict=True):
      plain.add(jnp.float32(loss), accuracy=jnp.float32(acc))
    assert plain.step == 3
    means = plain.finish()
  assert means == {"loss": pytest.approx(7 / 3), "accuracy": pytest.approx(1.75 / 3)}
  lengths = [3, 1, 4]
  with StepLosses(0, 10, None, progress_bar=False) as weighted:
    for loss, length in zip(losses, lengths, strict=True):
      weighted.add(jnp.float32(loss), weight=length)
    assert weighted.step == 13
    means = weighted.finish()
  assert means == {"loss": pytest.approx((6 + 1 + 16) / 8)}


def test_weights_are_given_for_every_loss_or_none():
  with StepLosses(0, 0, None, progress_bar=False) as tracker:
    tracker.add(jnp.float32(1.0), weight=2)
    with pytest.raises(ValueError, match="every loss of an epoch or to none"):
      tracker.add(jnp.float32(1.0))
