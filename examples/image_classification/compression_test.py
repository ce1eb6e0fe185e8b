"""The image trainer with ``config.grad_compression``: the compressed step against NumPy, the
exact-mean limit against the uncompressed trainer, views on top, resume, refusals."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from examples.common import sharding
from examples.common.checkpoint import stored_shapes
from examples.common.errors import UserError
from examples.common.metrics import read_metrics
from examples.image_classification import testdata, train
from examples.image_classification.train_test import FIELDS, tiny_config

DEVICES = 4
LR, MOMENTUM, DECAY = 0.1, 0.9, 0.05  # a decay large enough to show in two steps


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("fmnist"))
  testdata.write_fashion_mnist(directory, train=64, test=24, size=8)
  return directory


def _numpy_sign(v: np.ndarray) -> np.ndarray:
  """Scaled sign as the wire carries it: ``mean |v|`` times +-1, with ``v = 0`` sent as ``+``."""
  return np.mean(np.abs(v)) * np.where(v >= 0, 1.0, -1.0)


def _numpy_top_k(v: np.ndarray, fraction: float) -> np.ndarray:
  """The ``max(1, round(f n))`` entries of largest magnitude (ties: the lower index)."""
  flat = v.ravel()
  k = max(1, round(fraction * flat.size))
  kept = np.argsort(-np.abs(flat), kind="stable")[:k]
  out = np.zeros_like(flat)
  out[kept] = flat[kept]
  return out.reshape(v.shape)


@pytest.mark.parametrize(
  ("setting", "compress", "error_feedback"),
  [
    ("sign", _numpy_sign, True),
    ("topk@0.01", lambda v: _numpy_top_k(v, 0.01), True),
    ("sign-noef", _numpy_sign, False),
  ],
)
def test_compressed_steps_equal_numpy(setting, compress, error_feedback):
  """Two steps of the trainer's compressed step (4 devices, a BN-free CNN, SGDm with weight decay
  and an RSGDm-scale view) against NumPy: each device's gradient of its quarter of the batch (taken
  by plain ``jax.grad`` outside ``shard_map``), the exchange with error feedback, decay, momentum."""
  config = tiny_config(
    "", optimizer="sgdm,rsgdm-scale", weight_decay=DECAY, grad_compression=setting
  )
  config.model_kwargs.use_batch_norm = False
  mesh = sharding.create_mesh(DEVICES, "cpu")
  spec = train.OptimizerSpec.from_config(config, steps_per_epoch=100)
  tx, _ = spec.build()
  graphdef, state = train.init_state(config, 10, (8, 8, 1), tx, mesh, spec)
  steps = train.make_steps(graphdef, spec, (127.5,), (64.0,), mesh)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: np.asarray(p, np.float64), state["params"])
  memory = [jax.tree.map(np.zeros_like, params) for _ in range(DEVICES)]
  trace = jax.tree.map(np.zeros_like, params)

  def local_loss(p, images, labels):
    model = nnx.merge(graphdef, p, {}, copy=True)
    logits = model((images.astype(jnp.float32) - 127.5) / 64.0, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  # Jitted on one device, outside shard_map: an independent path to each device's gradient.
  local_grad, jit_loss = jax.jit(jax.grad(local_loss)), jax.jit(local_loss)
  for _ in range(2):
    images = rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    current = jax.tree.map(jnp.float32, params)
    sent = []
    for i in range(DEVICES):
      share = slice(i * 4, (i + 1) * 4)
      g = local_grad(current, images[share], labels[share])
      v = jax.tree.map(lambda g, e: np.asarray(g, np.float64) + e, g, memory[i])
      c = jax.tree.map(compress, v)
      if error_feedback:
        memory[i] = jax.tree.map(np.subtract, v, c)
      sent.append(c)
    mean = jax.tree.map(lambda *c: sum(c) / DEVICES, *sent)
    trace = jax.tree.map(lambda m, t, p: m + DECAY * p + MOMENTUM * t, mean, trace, params)
    params = jax.tree.map(lambda p, t: p - LR * t, params, trace)
    state, loss, _ = steps.train(state, *sharding.put_local(steps_sharding(mesh), images, labels))
    want_loss = np.mean(
      [
        float(jit_loss(current, images[i * 4 : (i + 1) * 4], labels[i * 4 : (i + 1) * 4]))
        for i in range(DEVICES)
      ]
    )
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)

  jax.tree.map(
    lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6),
    jax.device_get(state["params"]),
    params,
  )
  got_state = state["opt_state"][0]
  if error_feedback:
    for i in range(DEVICES):
      # The memory is v - R(v): a difference of float32 numbers, so compared at its leaf's scale.
      jax.tree.map(
        lambda got, want, i=i: np.testing.assert_allclose(
          got[i], want, rtol=1e-4, atol=1e-5 * np.max(np.abs(want))
        ),
        jax.device_get(got_state.memory),
        memory[i],
      )
  else:
    assert got_state == optax.EmptyState()
  # The residual view's point is computed from the same chain, behind the exchange.
  point = train.rsgd.eval_params(state["opt_state"], state["params"])
  assert jax.tree.structure(point) == jax.tree.structure(state["params"])


def steps_sharding(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def test_top_k_of_everything_is_the_uncompressed_trainer(fmnist_dir, tmp_path):
  """``topk@1`` sends every entry, so the exchange is the exact mean: with batch norm (statistics of
  the global batch) and views, every metric equals the ordinary all-reduce trainer's."""
  views = "sgdm,rsgdm-scale"
  runs = {
    setting: train.train_and_evaluate(
      tiny_config(
        fmnist_dir, optimizer=views, num_epochs=1, num_devices=DEVICES, grad_compression=setting
      ),
      str(tmp_path / setting),
    ).records
    for setting in ("none", "topk@1")
  }
  for name in ("sgdm", "rsgdm-scale"):
    (exact,), (full,) = runs["none"][name], runs["topk@1"][name]
    for key in FIELDS - {"seconds"}:
      assert full[key] == pytest.approx(exact[key], rel=1e-4, abs=1e-6), (name, key)


def test_a_resume_on_another_device_count_folds_the_memory(fmnist_dir, tmp_path, caplog):
  workdir = str(tmp_path)
  config = tiny_config(fmnist_dir, optimizer="sgdm,rsgdm-scale", grad_compression="sign")
  config.num_epochs, config.num_devices = 1, DEVICES
  train.train_and_evaluate(config, workdir)
  assert stored_shapes(os.path.join(workdir, "checkpoints"), "state")[1]["opt_state"][0]["memory"][
    "fc2"
  ]["bias"] == (DEVICES, 10)
  config.num_epochs, config.num_devices = 2, 2
  with caplog.at_level(logging.INFO, logger="examples"):
    resumed = train.train_and_evaluate(config, workdir).records
  assert "memory was saved on 4 devices; folded onto 2" in caplog.text
  epoch, shapes = stored_shapes(os.path.join(workdir, "checkpoints"), "state")
  assert epoch == 1 and shapes["opt_state"][0]["memory"]["fc2"]["bias"] == (2, 10)
  for name in ("sgdm", "rsgdm-scale"):
    assert [r["epoch"] for r in read_metrics(os.path.join(workdir, name))] == [0, 1]
    assert np.isfinite(resumed[name][-1]["train_loss"])


def test_fsdp_with_compression_is_refused_in_one_line(fmnist_dir, tmp_path):
  config = tiny_config(fmnist_dir, sharding="fsdp", grad_compression="sign")
  with pytest.raises(UserError, match=r"needs config.sharding='replicated'") as error:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["topk", "topk@0", "topk@1.5", "sign@0.1", "topk@x", "signs"])
def test_bad_compression_values_are_refused_naming_the_forms(fmnist_dir, tmp_path, value):
  config = tiny_config(fmnist_dir, grad_compression=value)
  with pytest.raises(
    UserError,
    match=rf"config\.grad_compression='{value}' \(must be one of none, sign, sign-noef, topk@F",
  ):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_an_unknown_compression_axis_is_refused(fmnist_dir, tmp_path):
  config = tiny_config(fmnist_dir, grad_compression="sign", compression_axis="model")
  with pytest.raises(UserError, match=r"config\.compression_axis='model' \(must be one of data\)"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
