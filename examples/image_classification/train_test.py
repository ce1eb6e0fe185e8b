"""End-to-end trainer tests on tiny generated data in the real formats."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples.common import optimizers, sharding
from examples.common.checkpoint import Checkpointer
from examples.common.errors import UserError
from examples.common.metrics import read_metrics
from examples.common.nonfinite import NonFiniteLossError
from examples.image_classification import input_pipeline, testdata, train
from examples.image_classification.configs import default

FIELDS = {
  "epoch",
  "step",
  "lr",
  "train_loss",
  "train_accuracy",
  "running_train_loss",
  "running_train_accuracy",
  "test_loss",
  "test_accuracy",
  "reference_test_loss",
  "reference_test_accuracy",
  "generalization_error",
  "proximity",
  "seconds",
}


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("fmnist"))
  testdata.write_fashion_mnist(directory, train=64, test=24, size=8)
  return directory


def tiny_config(data_dir: str, **overrides):
  config = default.get_config()
  config.dataset = "fashion_mnist"
  config.data_dir = data_dir
  config.model = "small_cnn"
  config.model_kwargs.width = 4
  config.model_kwargs.hidden = 16
  config.batch_size = 16
  config.num_epochs = 2
  config.lr_decay_epochs = (1,)
  config.optimizer = "rsgdm-scale"
  config.alpha = 0.25
  config.train_eval_examples = 32
  config.num_devices = 1
  config.progress_bar = False
  config.log_every_steps = 2
  config.update(overrides)
  return config


def _without_seconds(records):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_metrics_fields_and_values(fmnist_dir, tmp_path):
  workdir = str(tmp_path)
  records = train.train_and_evaluate(tiny_config(fmnist_dir), workdir).records["rsgdm-scale"]
  assert records == read_metrics(workdir)
  assert [r["epoch"] for r in records] == [0, 1]
  for r in records:
    assert set(r) == FIELDS
    assert r["generalization_error"] == pytest.approx(r["test_loss"] - r["train_loss"])
  assert [r["step"] for r in records] == [4, 8]  # 64 images / batch 16
  assert records[0]["lr"] == pytest.approx(0.1) and records[1]["lr"] == pytest.approx(0.01)
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"] == "rsgdm-scale"

  # Proximity from the checkpointed residual, by its definition ||r|| / ||y||.
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    restored = ckpt.restore({"state": None, "model": None}, epoch=1)
  state, model = restored["state"], restored["model"]
  # Restored without a target: plain containers; opt_state is chain(chain(decay, sgd), residual).
  residual = _flat(state["opt_state"][-1]["residual"])
  params = _flat(state["params"])
  assert records[1]["proximity"] == pytest.approx(
    np.linalg.norm(residual) / np.linalg.norm(params), rel=1e-4
  )
  # The shipped model is eval_params = params + residual.
  np.testing.assert_allclose(_flat(model["params"]), params + residual, rtol=1e-6, atol=1e-7)
  # Evaluating at params (reference) and at params + residual gives different numbers.
  assert records[1]["test_loss"] != records[1]["reference_test_loss"]


def test_base_optimizer_reports_params_as_reference(fmnist_dir, tmp_path):
  records = train.train_and_evaluate(
    tiny_config(fmnist_dir, optimizer="sgdm", num_epochs=1), str(tmp_path)
  ).records["sgdm"]
  assert records[0]["proximity"] == 0.0
  assert records[0]["reference_test_accuracy"] == records[0]["test_accuracy"]


def _kill_in_epoch_2(monkeypatch):
  """Makes training raise KeyboardInterrupt at epoch 2's second batch; returns the original."""
  original = input_pipeline.ArrayInput.train_batches

  def dies_in_epoch_2(self, epoch):
    for step, batch in enumerate(original(self, epoch)):
      if epoch == 2 and step == 1:
        raise KeyboardInterrupt("killed")
      yield batch

  monkeypatch.setattr(input_pipeline.ArrayInput, "train_batches", dies_in_epoch_2)
  return original


def test_killed_run_resumes_to_the_same_metrics(fmnist_dir, tmp_path, monkeypatch):
  config = tiny_config(fmnist_dir, num_epochs=3)
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / "full")).records["rsgdm-scale"]

  original = _kill_in_epoch_2(monkeypatch)
  workdir = str(tmp_path / "killed")
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, workdir)
  assert [r["epoch"] for r in read_metrics(workdir)] == [0, 1]
  monkeypatch.setattr(input_pipeline.ArrayInput, "train_batches", original)
  resumed = train.train_and_evaluate(config, workdir).records["rsgdm-scale"]
  assert _without_seconds(resumed) == _without_seconds(uninterrupted)
  assert _without_seconds(read_metrics(workdir)) == _without_seconds(uninterrupted)


def test_eight_devices_match_one(fmnist_dir, tmp_path):
  # Both runs on the CPU backend, which the root conftest.py gives 8 devices (also on a GPU host).
  cpus = jax.devices("cpu")
  assert len(cpus) >= 8, "the root conftest.py provides 8 CPU devices"
  with jax.default_device(cpus[0]):
    one = train.train_and_evaluate(
      tiny_config(fmnist_dir, num_epochs=1, platform="cpu"), str(tmp_path / "one")
    ).records["rsgdm-scale"]
    eight = train.train_and_evaluate(
      tiny_config(fmnist_dir, num_epochs=1, num_devices=8, platform="cpu"), str(tmp_path / "eight")
    ).records["rsgdm-scale"]
  for key in FIELDS - {"seconds"}:
    assert eight[0][key] == pytest.approx(one[0][key], rel=1e-4, abs=1e-6), key


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(fmnist_dir, tmp_path):
  # Epoch 0 trains normally; the learning rate then jumps by 1e6 and the plain CNN blows up.
  config = tiny_config(
    fmnist_dir,
    num_epochs=3,
    optimizer="sgd",
    lr_decay_epochs=(1,),
    lr_decay_factor=1e6,
    log_every_steps=1,
  )
  config.model_kwargs.use_batch_norm = False
  workdir = str(tmp_path)
  with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+"):
    train.train_and_evaluate(config, workdir)
  assert [r["epoch"] for r in read_metrics(workdir)] == [0]
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    assert ckpt.latest_epoch() == 0
    state = ckpt.restore({"state": None})["state"]
  assert int(state["step"]) == 4
  assert np.all(np.isfinite(_flat(state["params"])))


def test_recompute_bn_stats_matches_batch_moments_at_eval_params(fmnist_dir, tmp_path):
  config = tiny_config(fmnist_dir, num_epochs=1, recompute_bn_stats=True, alpha=1.0)
  config.optimizer = "rsgdm-sign"
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    restored = ckpt.restore({"state": None, "model": None})
  model_params = restored["model"]["params"]
  # Reference: the first conv's output at eval_params on the (unaugmented) train-eval images,
  # per-channel mean over all of them (two full batches of 16).
  data = input_pipeline.create_input(config)
  images = data.train_eval.images.astype(np.float32)
  x = (images - data.mean) / data.std
  kernel = np.asarray(model_params["conv1"]["kernel"])
  y = jax.lax.conv_general_dilated(
    jnp.asarray(x), jnp.asarray(kernel), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  want_mean = np.asarray(jnp.mean(y, axis=(0, 1, 2)))
  got = restored["model"]["batch_stats"]["bn1"]["mean"]
  np.testing.assert_allclose(got, want_mean, rtol=1e-4, atol=1e-5)
  assert not np.allclose(restored["state"]["batch_stats"]["bn1"]["mean"], want_mean, atol=1e-3)


def test_unknown_optimizer_fails_before_training(fmnist_dir, tmp_path):
  with pytest.raises(UserError, match="Unknown optimizer 'rsgdm-foo'"):
    train.train_and_evaluate(tiny_config(fmnist_dir, optimizer="rsgdm-foo"), str(tmp_path))


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_one_epoch_on_cifar100_files(tmp_path, fmt):
  writer = testdata.write_cifar100_binary if fmt == "binary" else testdata.write_cifar100_python
  writer(str(tmp_path / "data"), train=16, test=8)
  config = tiny_config(str(tmp_path / "data"), dataset="cifar100", batch_size=8, num_epochs=1)
  records = train.train_and_evaluate(config, str(tmp_path / "run")).records["rsgdm-scale"]
  assert records[0]["step"] == 2 and np.isfinite(records[0]["test_loss"])


def test_one_epoch_on_imagenet_folders(tmp_path):
  testdata.write_image_folders(str(tmp_path / "data"), per_class=4, classes=2)
  config = tiny_config(
    str(tmp_path / "data"),
    dataset="imagenet",
    batch_size=4,
    num_epochs=1,
    image_size=16,
    resize_size=18,
    num_workers=0,
  )
  records = train.train_and_evaluate(config, str(tmp_path / "run")).records["rsgdm-scale"]
  assert records[0]["step"] == 2 and np.isfinite(records[0]["test_loss"])


def test_an_unknown_platform_is_named_in_the_error():
  with pytest.raises(UserError, match=r"config.platform='bogus' has no devices here"):
    sharding.create_mesh(platform="bogus")


# Views: one training, every scheme of the list evaluated from it.

VIEWS = ("sgdm", "rsgdm-scale", "rsgdm-sign", "rsgdm-topk", "rsgdm-scale@0.5")


def _truncate_arrays(checkpoint_dir: str) -> None:
  """Cuts every array file of a checkpoint's ``state`` item to half its length."""
  for directory, _, files in os.walk(os.path.join(checkpoint_dir, "state")):
    if os.path.basename(directory) == "d":
      for name in files:
        path = os.path.join(directory, name)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("recompute", [False, True])
def test_views_equal_separate_runs_field_for_field(fmnist_dir, tmp_path, recompute):
  config = tiny_config(fmnist_dir, recompute_bn_stats=recompute, bn_recompute_batches=2)
  config.optimizer = ",".join(VIEWS)
  workdir = tmp_path / "views"
  records = train.train_and_evaluate(config, str(workdir)).records
  assert not (workdir / "metrics.jsonl").exists()
  with Checkpointer(str(workdir / "checkpoints")) as ckpt:
    shared = ckpt.restore({"state": None, **{f"model-{n}": None for n in VIEWS}}, epoch=1)
  for name in VIEWS:
    alone_dir = tmp_path / name
    alone_config = tiny_config(fmnist_dir, recompute_bn_stats=recompute, bn_recompute_batches=2)
    # The name alone, its @ setting given the ordinary way (config.alpha).
    alone_config.optimizer, setting = optimizers.split_setting(name)
    if setting is not None:
      alone_config.alpha = setting
    alone = train.train_and_evaluate(alone_config, str(alone_dir)).records[alone_config.optimizer]
    view_records = read_metrics(str(workdir / name))
    assert view_records == records[name]
    assert set(view_records[0]) == FIELDS
    # Bit for bit (JSON floats round-trip exactly), "seconds" aside.
    assert _without_seconds(view_records) == _without_seconds(alone), name
    assert json.loads((workdir / name / "config.json").read_text())["optimizer"] == name
    with Checkpointer(str(alone_dir / "checkpoints")) as ckpt:
      model = ckpt.restore({"model": None}, epoch=1)["model"]
    jax.tree.map(np.testing.assert_array_equal, shared[f"model-{name}"], model)
  # The views are distinct evaluations (so a wrong `which` would show above).
  losses = {read_metrics(str(workdir / n))[-1]["test_loss"] for n in VIEWS}
  assert len(losses) == len(VIEWS)


def test_a_mixed_list_is_refused_before_anything_is_written(fmnist_dir, tmp_path):
  config = tiny_config(fmnist_dir, optimizer="sgdm,rsgdm-scale,signsgdm")
  with pytest.raises(UserError, match=r"signsgdm moves the model by its compressed step"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_killed_multi_view_run_resumes_to_the_same_metrics(fmnist_dir, tmp_path, monkeypatch):
  config = tiny_config(fmnist_dir, num_epochs=3, optimizer="sgdm,rsgdm-sign,rsgdm-topk")
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / "full")).records
  original = _kill_in_epoch_2(monkeypatch)
  workdir = tmp_path / "killed"
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(workdir))
  for name in uninterrupted:
    assert [r["epoch"] for r in read_metrics(str(workdir / name))] == [0, 1]
  monkeypatch.setattr(input_pipeline.ArrayInput, "train_batches", original)
  resumed = train.train_and_evaluate(config, str(workdir)).records
  assert set(resumed) == {"sgdm", "rsgdm-sign", "rsgdm-topk"}
  for name, records in uninterrupted.items():
    assert _without_seconds(resumed[name]) == _without_seconds(records)
    assert _without_seconds(read_metrics(str(workdir / name))) == _without_seconds(records)


def test_a_truncated_or_corrupt_newest_checkpoint_falls_back_to_the_one_before(
  fmnist_dir, tmp_path, caplog
):
  config = tiny_config(fmnist_dir, num_epochs=3, optimizer="sgdm,rsgdm-scale")
  workdir = tmp_path / "run"
  uninterrupted = train.train_and_evaluate(config, str(workdir)).records
  _truncate_arrays(str(workdir / "checkpoints" / "2"))
  with caplog.at_level(logging.WARNING, logger="examples"):
    resumed = train.train_and_evaluate(config, str(workdir)).records
  assert "Skipping the checkpoint of epoch 2" in caplog.text
  assert "Resuming from the checkpoint of epoch 1 instead" in caplog.text
  for name, records in uninterrupted.items():
    # Epoch 2 was trained again from the checkpoint of epoch 1, to the same numbers.
    assert _without_seconds(resumed[name]) == _without_seconds(records)
  assert os.listdir(tmp_path / "run" / "checkpoints-unreadable")[0].startswith("2-")
  with Checkpointer(str(workdir / "checkpoints")) as ckpt:
    assert ckpt.all_epochs() == [1, 2]
  # A bit flipped in an array file, its size unchanged: the checksums catch it, the same way.
  data_files = [
    os.path.join(directory, name)
    for directory, _, files in os.walk(workdir / "checkpoints" / "2" / "state")
    if os.path.basename(directory) == "d"
    for name in files
  ]
  with open(data_files[0], "r+b") as f:
    f.seek(os.path.getsize(data_files[0]) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="examples"):
    resumed = train.train_and_evaluate(config, str(workdir)).records
  assert "epoch 2" in caplog.text and "differ from the checksums written with it" in caplog.text
  for name, records in uninterrupted.items():
    assert _without_seconds(resumed[name]) == _without_seconds(records)


def test_config_out_of_range_is_refused_before_anything_is_written(fmnist_dir, tmp_path):
  for overrides, message in (
    ({"num_epochs": 0}, r"config\.num_epochs=0 \(must be >= 1\)"),
    ({"batch_size": 0}, r"config\.batch_size=0 \(must be >= 1\)"),
    ({"batch_size": 65}, r"config\.batch_size=65 .* between 1 and the 64 training examples"),
    ({"learning_rate": -0.1}, r"config\.learning_rate=-0\.1 \(must be > 0\)"),
    ({"alpha": 0.0, "topk_fraction": 2.0}, r"alpha=0\.0 \(must be in \(0, 1\]\).*topk_fraction"),
  ):
    with pytest.raises(UserError, match=message):
      train.train_and_evaluate(tiny_config(fmnist_dir, **overrides), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_finished_run_refuses_a_new_width_naming_the_field(fmnist_dir, tmp_path):
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(fmnist_dir, num_epochs=1), str(workdir))
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  config = tiny_config(fmnist_dir, num_epochs=1)
  config.model_kwargs.width = 8
  with pytest.raises(UserError, match=r"Differing: model_kwargs\.width: 4 -> 8\."):
    train.train_and_evaluate(config, str(workdir))
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
