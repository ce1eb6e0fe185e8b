"""The compressed image trainer (``config.grad_compression``): the compressed step and its memory
ratio against NumPy, the exact-mean limits of every option against the plain trainer, views on top,
resume on another device count, refusals."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rsgd_optax as rsgd
from examples.common import sharding
from examples.common.checkpoint import stored_shapes
from examples.common.errors import UserError
from examples.common.metrics import read_metrics
from examples.image_classification import compressed_train, testdata, train, trainers
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


def _numpy_block_sign(v: np.ndarray, block: int) -> np.ndarray:
  """Scaled sign with one scale ``mean |v_b|`` per block of ``block`` entries of the flat leaf."""
  flat = v.ravel()
  out = np.empty_like(flat)
  for start in range(0, flat.size, block):
    b = flat[start : start + block]
    out[start : start + block] = np.mean(np.abs(b)) * np.where(b >= 0, 1.0, -1.0)
  return out.reshape(v.shape)


@pytest.mark.parametrize(
  ("setting", "compress", "error_feedback", "block_size"),
  [
    ("sign", _numpy_sign, True, 0),
    ("topk@0.01", lambda v: _numpy_top_k(v, 0.01), True, 0),
    ("sign-noef", _numpy_sign, False, 0),
    ("sign", lambda v: _numpy_block_sign(v, 16), True, 16),  # compression_block_size reaches it
  ],
)
def test_compressed_steps_equal_numpy(setting, compress, error_feedback, block_size):
  """Two steps of the trainer's compressed step (4 devices, a BN-free CNN, SGDm with weight decay
  and an RSGDm-scale view) against NumPy: each device's gradient of its quarter of the batch (taken
  by plain ``jax.grad`` outside ``shard_map``), the exchange with error feedback, decay, momentum."""
  config = tiny_config(
    "",
    optimizer="sgdm,rsgdm-scale",
    weight_decay=DECAY,
    grad_compression=setting,
    compression_block_size=block_size,
  )
  config.model_kwargs.use_batch_norm = False
  mesh = sharding.create_mesh(DEVICES, "cpu")
  spec = compressed_train.CompressedSpec.from_config(config, steps_per_epoch=100)
  tx, _ = spec.build()
  graphdef, state = compressed_train.init_state(config, 10, (8, 8, 1), tx, mesh, spec.axis)
  steps = compressed_train.make_steps(graphdef, spec, (127.5,), (64.0,), mesh)
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
    sent, ratios = [], []
    for i in range(DEVICES):
      share = slice(i * 4, (i + 1) * 4)
      g = local_grad(current, images[share], labels[share])
      v = jax.tree.map(lambda g, e: np.asarray(g, np.float64) + e, g, memory[i])
      # The memory ratio ||e_i|| / ||g_i + e_i||, over the whole tree, before the update.
      norm = lambda tree: np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(tree)))
      ratios.append(norm(memory[i]) / norm(v))
      c = jax.tree.map(compress, v)
      if error_feedback:
        memory[i] = jax.tree.map(np.subtract, v, c)
      sent.append(c)
    mean = jax.tree.map(lambda *c: sum(c) / DEVICES, *sent)
    trace = jax.tree.map(lambda m, t, p: m + DECAY * p + MOMENTUM * t, mean, trace, params)
    params = jax.tree.map(lambda p, t: p - LR * t, params, trace)
    state, loss, values = steps.train(
      state, *sharding.put_local(steps_sharding(mesh), images, labels)
    )
    if error_feedback:  # the largest over the devices (zero at the first step: no memory yet)
      assert float(values["memory_ratio"]) == pytest.approx(max(ratios), rel=1e-4, abs=1e-7)
    else:
      assert "memory_ratio" not in values
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
  point = rsgd.eval_params(state["opt_state"], state["params"])
  assert jax.tree.structure(point) == jax.tree.structure(state["params"])


def steps_sharding(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


@pytest.fixture(scope="module")
def exact_records(fmnist_dir, tmp_path_factory):
  """One epoch of the plain trainer (the exact mean) on 4 devices, with a view."""
  config = tiny_config(fmnist_dir, optimizer="sgdm,rsgdm-scale", num_epochs=1, num_devices=DEVICES)
  return train.train_and_evaluate(config, str(tmp_path_factory.mktemp("exact"))).records


@pytest.mark.parametrize(
  ("setting", "options"),
  [
    # Every entry sent, through either exchange.
    ("topk@1", {}),
    ("topk@1", {"compression_exchange": "two_phase"}),
    # Sign, with every step inside the exact warm-up, or every leaf below the exact size.
    ("sign", {"compression_exact_steps": 10**6, "compression_exchange": "two_phase"}),
    ("sign", {"compression_exact_below": 10**9, "compression_block_size": 4}),
  ],
)
def test_each_option_has_the_exact_mean_as_its_limit(
  fmnist_dir, tmp_path, exact_records, setting, options
):
  """Settings whose exchange is the exact mean: with batch norm (statistics of the global batch)
  and views, every metric equals the plain all-reduce trainer's. Each option reaches the library:
  sign compresses otherwise (and ``topk@1`` of the two-phase exchange sends its pieces whole)."""
  config = tiny_config(
    fmnist_dir,
    optimizer="sgdm,rsgdm-scale",
    num_epochs=1,
    num_devices=DEVICES,
    grad_compression=setting,
    **options,
  )
  records = trainers.train_and_evaluate(config, str(tmp_path)).records
  for name in ("sgdm", "rsgdm-scale"):
    (exact,), (got,) = exact_records[name], records[name]
    for key in FIELDS - {"seconds"}:
      assert got[key] == pytest.approx(exact[key], rel=1e-4, abs=1e-6), (name, key)
    assert got["memory_ratio"] == 0.0  # nothing was ever kept back


@pytest.mark.parametrize("exchange", ["all_gather", "two_phase"])
def test_a_resume_on_another_device_count_folds_the_memory(fmnist_dir, tmp_path, caplog, exchange):
  """Saved on 4 devices, resumed on 2: each worker memory gets 2 rows; with the two-phase exchange
  each server memory (10 bias entries: pieces of 3 on 4 devices) is cut into 2 pieces of 5."""
  workdir = str(tmp_path)
  config = tiny_config(
    fmnist_dir,
    optimizer="sgdm,rsgdm-scale",
    grad_compression="sign",
    compression_exchange=exchange,
    compression_exact_steps=1,  # the memory sits one level deeper, in ExactStepsState
  )
  config.num_epochs, config.num_devices = 1, DEVICES

  def bias_memories() -> tuple[int, dict[str, tuple[int, ...]]]:
    epoch, shapes = stored_shapes(os.path.join(workdir, "checkpoints"), "state")
    inner = shapes["opt_state"][0]["inner"]
    return epoch, {k: v["fc2"]["bias"] for k, v in inner.items()}

  trainers.train_and_evaluate(config, workdir)
  two_phase = exchange == "two_phase"
  assert bias_memories() == (
    0,
    {"memory": (DEVICES, 10), **({"server_memory": (DEVICES, 3)} if two_phase else {})},
  )
  config.num_epochs, config.num_devices = 2, 2
  with caplog.at_level(logging.INFO, logger="examples"):
    resumed = trainers.train_and_evaluate(config, workdir).records
  assert "memory was saved on 4 devices; folded onto 2" in caplog.text
  assert bias_memories() == (
    1,
    {"memory": (2, 10), **({"server_memory": (2, 5)} if two_phase else {})},
  )
  for name in ("sgdm", "rsgdm-scale"):
    assert [r["epoch"] for r in read_metrics(os.path.join(workdir, name))] == [0, 1]
    assert np.isfinite(resumed[name][-1]["train_loss"])
    assert resumed[name][-1]["memory_ratio"] > 0


def test_fsdp_with_compression_is_refused_in_one_line(fmnist_dir, tmp_path):
  config = tiny_config(fmnist_dir, sharding="fsdp", grad_compression="sign")
  with pytest.raises(UserError, match=r"needs config.sharding='replicated'") as error:
    trainers.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["topk", "topk@0", "topk@1.5", "sign@0.1", "topk@x", "signs"])
def test_bad_compression_values_are_refused_naming_the_forms(fmnist_dir, tmp_path, value):
  config = tiny_config(fmnist_dir, grad_compression=value)
  with pytest.raises(
    UserError,
    match=rf"config\.grad_compression='{value}' \(must be one of none, sign, sign-noef, topk@F",
  ):
    trainers.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_an_unknown_compression_axis_is_refused(fmnist_dir, tmp_path):
  config = tiny_config(fmnist_dir, grad_compression="sign", compression_axis="model")
  with pytest.raises(UserError, match=r"config\.compression_axis='model' \(must be one of data\)"):
    trainers.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    (
      {"compression_exchange": "ring"},
      r"config\.compression_exchange='ring' \(must be one of all_gather, two_phase\)",
    ),
    ({"compression_exact_steps": -1}, r"config\.compression_exact_steps=-1 "),
    (
      {"grad_compression": "topk@0.01", "compression_block_size": 256},
      r"config\.compression_block_size=256 is for sign .* set compression_block_size=0\.$",
    ),
  ],
)
def test_bad_exchange_options_are_refused_before_anything_is_written(
  fmnist_dir, tmp_path, overrides, message
):
  config = tiny_config(fmnist_dir, **{"grad_compression": "sign", **overrides})
  with pytest.raises(UserError, match=message) as error:
    trainers.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run").exists()


def test_the_plain_trainer_names_the_compressed_one(fmnist_dir, tmp_path):
  config = tiny_config(fmnist_dir, grad_compression="sign")
  with pytest.raises(UserError, match=r"is the compressed trainer's .*compressed_train"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
