"""One step per optimizer, and whole runs on tiny generated Penn Treebank files: the switch to
averaging, results, and a resumed run that continues exactly where the interrupted one stopped."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rsgd_optax as rsgd
from examples.common import metrics
from examples.common.errors import UserError
from examples.language_modeling import input_pipeline, train
from examples.language_modeling.conftest import tiny_config
from rsgd_optax import eval_params, start_averaging


@pytest.mark.parametrize("optimizer", sorted(train.TABLE_NAMES))
def test_one_step_per_optimizer(ptb_dir, optimizer):
  config = tiny_config(ptb_dir, optimizer=optimizer)
  corpus = input_pipeline.load_corpus(config.data_source)
  data = input_pipeline.batchify(corpus.train, config.batch_size)
  model = train.build_model(config, corpus.vocab_size)
  opt = nnx.Optimizer(model, train.build_optimizer(config), wrt=nnx.Param)
  opt.opt_state = start_averaging(opt.opt_state)
  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  window = input_pipeline.window(data, 0, 10, config.bptt_bucket)
  raw, carries = train.train_step(
    model, opt, model.initial_carry(4), window.inputs, window.targets, window.mask,
    jnp.float32(config.learning_rate), jax.random.key(0), ar=config.ar, tar=config.tar,
  )  # fmt: skip
  assert math.isfinite(float(raw)) and abs(float(raw) - math.log(corpus.vocab_size)) < 1.0
  assert [c[0].shape for c in carries] == [(4, 12), (4, 8)]
  moved = jax.tree.map(
    lambda a, b: float(jnp.abs(a - b).max()), nnx.state(model, nnx.Param), before
  )
  assert all(v > 0 for v in jax.tree.leaves(moved))
  # After one averaged step the evaluation point is that step's point: y for SGD, x = y + r for
  # RSGD (to float32 rounding: XLA may fuse y + u into a multiply-add in one place only).
  params = nnx.state(model, nnx.Param)
  shipped = eval_params(opt.opt_state, params)
  point = (
    params
    if optimizer == "sgd"
    else rsgd.eval_params(rsgd.find_residual_state(opt.opt_state), params)
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), shipped, point)


def _records(workdir):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in metrics.read_metrics(workdir)]


def test_runs_switch_to_averaging_report_and_resume_exactly(ptb_dir, tmp_path):
  config = tiny_config(ptb_dir, optimizer="rsgd-sign", averaging_start_epoch=0)
  results = train.train_and_evaluate(config, str(tmp_path / "full")).final["rsgd-sign"]
  records = _records(tmp_path / "full")
  assert [r["epoch"] for r in records] == [0, 1, 2]
  assert [r["averaging"] for r in records] == [False, True, True]
  assert records[0]["switched"] and "switched" not in records[1]
  assert all(r["proximity"] > 0 for r in records)
  assert results["switch_epoch"] == 0 and results["switched_by"] == "start_epoch"
  assert results["name"] == "(RSGD + RASGD)-sign"
  assert results["best_epoch"] in (0, 1, 2)
  assert math.isfinite(results["test_ppl"]) and results["val_ppl"] < 30  # 26 word types
  on_disk = json.loads((tmp_path / "full" / train.RESULTS_FILE).read_text())
  assert on_disk == results
  assert json.loads((tmp_path / "full" / "config.json").read_text())["optimizer"] == "rsgd-sign"

  # Interrupted after 2 epochs, then resumed: the same records and results, bit for bit.
  config.num_epochs = 2
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.num_epochs = 3
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed")).final["rsgd-sign"]
  assert _records(tmp_path / "resumed") == records
  assert resumed == results


def test_bad_config_is_rejected_up_front(ptb_dir, tmp_path):
  for name, overrides, message in (
    ("a", {"optimizer": "asgd"}, "Unknown optimizer"),
    ("b", {"bptt": 0}, r"config\.bptt=0 \(must be >= 1\)"),
    ("c", {"learning_rate": -30.0, "dropout": 1.0}, r"dropout=1\.0 .*learning_rate=-30\.0"),
    ("d", {"num_epochs": 0}, r"config\.num_epochs=0 \(must be >= 1\)"),
    ("e", {"batch_size": 10_000}, r"config\.batch_size=10000 is too large for the \d+ tokens"),
  ):
    with pytest.raises(UserError, match=message):
      train.train_and_evaluate(tiny_config(ptb_dir, **overrides), str(tmp_path / name))
    assert not (tmp_path / name).exists()


def test_the_switch_follows_the_trigger_or_the_latest_start_epoch(ptb_dir):
  config = tiny_config(ptb_dir, nonmono=2)
  rising = [5.0, 4.0, 3.0, 3.5]  # 3.5 is compared with 5.0 only: not worse
  assert not train._switch_now(config, 3, rising)
  assert train._switch_now(config, 4, [*rising, 5.5])
  config.averaging_start_epoch = 4
  assert not train._switch_now(config, 3, rising)
  assert train._switch_now(config, 4, [*rising, 3.4])  # no trigger, but the latest epoch
  config.nt_asgd = False
  assert not train._switch_now(config, 3, [5.0, 4.0, 3.0, 9.9])
  assert train._switch_now(config, 4, [5.0, 4.0, 3.0, 3.5, 1.0])


def test_views_equal_their_runs_alone_each_across_its_own_switch(ptb_dir, tmp_path):
  names = ("sgd", "rsgd-sign", "rsgd-topk")
  settings = {"nonmono": 1, "learning_rate": 5.0, "num_epochs": 4}
  alone = {
    name: train.train_and_evaluate(
      tiny_config(ptb_dir, optimizer=name, **settings), str(tmp_path / name)
    ).final[name]
    for name in names
  }
  # The triggers fire at different epochs, so each view must switch on its own.
  assert len({alone[name]["switch_epoch"] for name in names}) > 1
  together = train.train_and_evaluate(
    tiny_config(ptb_dir, optimizer=",".join(names), **settings), str(tmp_path / "views")
  ).final
  assert sorted(together) == sorted(names)
  for name in names:
    assert _records(tmp_path / "views" / name) == _records(tmp_path / name), name
    assert together[name] == alone[name], name
    on_disk = json.loads((tmp_path / "views" / name / train.RESULTS_FILE).read_text())
    assert on_disk == alone[name]


def test_views_that_do_not_share_plain_sgd_steps_are_refused(ptb_dir, tmp_path):
  with pytest.raises(UserError, match="do not share one trajectory"):
    train.train_and_evaluate(
      tiny_config(ptb_dir, optimizer="sgd,rsgdm-sign"), str(tmp_path / "mixed")
    )
  assert not (tmp_path / "mixed").exists()


def _close(got: dict, want: dict, skip: set[str] = frozenset()) -> bool:
  """Equal fields, floats to float rounding (a sum over devices adds in another order)."""
  assert got.keys() == want.keys()
  return all(
    got[k] == pytest.approx(v, rel=1e-4, abs=1e-6) if isinstance(v, float) else got[k] == v
    for k, v in want.items()
    if k not in skip
  )


def test_four_devices_equal_one(ptb_dir, tmp_path, monkeypatch):
  """The batch columns split over 4 devices (the test process has 8 CPU devices): every record and
  result equals the one-device run's up to float rounding; the windows were split."""
  placed = []
  put_global = train.sharding.put_global

  def recording(sharding, *arrays):
    placed.append((len(sharding.device_set), sharding.is_fully_replicated, arrays[0].shape))
    return put_global(sharding, *arrays)

  monkeypatch.setattr(train.sharding, "put_global", recording)
  runs = {}
  for devices in (1, 4):
    config = tiny_config(
      ptb_dir, optimizer="sgd,rsgd-scale", num_epochs=2, averaging_start_epoch=0, platform="cpu"
    )
    config.num_devices = devices
    runs[devices] = train.train_and_evaluate(config, str(tmp_path / str(devices)))
  # Training and validation windows (4 columns) split over the 4 devices; the test set's 2 columns
  # do not split evenly and stay whole on each device.
  four = [(replicated, shape[1]) for count, replicated, shape in placed if count == 4]
  assert (False, 4) in four and (True, 2) in four and (True, 4) not in four
  one, split = runs[1], runs[4]
  assert sorted(split.records) == ["rsgd-scale", "sgd"]
  for name in split.records:
    for want, got in zip(one.records[name], split.records[name], strict=True):
      assert _close(got, want, skip={"seconds"}), (name, got, want)
    assert _close(split.final[name], one.final[name]), name


def test_a_batch_that_does_not_split_over_the_devices_is_refused(ptb_dir, tmp_path):
  config = tiny_config(ptb_dir, batch_size=6, platform="cpu")
  config.num_devices = 4
  with pytest.raises(UserError, match=r"config\.batch_size=6 does not split over 4 devices"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
