"""A whole training step (forward, backward, update) of an image model, SGDm vs RSGDm.

The model comes from the image-classification example when it is importable; otherwise a small CNN
defined here stands in, and the result says so.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import rsgd_optax as rsgd
from benchmarks import timing

IMAGE_SHAPE = (32, 32, 3)  # CIFAR
NUM_CLASSES = 100


class StandaloneCNN(nnx.Module):
  """conv-BN-ReLU-pool twice, then a dense head: used when the example models are not importable."""

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(IMAGE_SHAPE[-1], 32, (3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(32, rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, (3, 3), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(64, rngs=rngs)
    self.head = nnx.Linear(64 * (IMAGE_SHAPE[0] // 4) ** 2, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
      x = bn(conv(x), use_running_average=not train)
      x = nnx.max_pool(nnx.relu(x), (2, 2), strides=(2, 2))
    return self.head(x.reshape(x.shape[0], -1))


def build_model(name: str) -> tuple[nnx.Module, str]:
  """The example model ``name``, or the standalone CNN when the examples are not importable."""
  try:
    from examples.image_classification.models import create_model
  except ImportError:
    return StandaloneCNN(NUM_CLASSES, rngs=nnx.Rngs(0)), "standalone CNN in benchmarks/cnn_step.py"
  kwargs: dict[str, Any] = {}
  if name == "small_cnn":
    kwargs = {"in_channels": IMAGE_SHAPE[-1], "image_size": IMAGE_SHAPE[0]}
  model = create_model(name, NUM_CLASSES, rngs=nnx.Rngs(0), **kwargs)
  return model, "examples/image_classification/models"


def _train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
  def step(state, images, labels):
    def loss_fn(params, batch_stats):
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      logits = model(images, train=True)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, nnx.state(model, nnx.BatchStat)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"], state["batch_stats"]
    )
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, loss

  return jax.jit(step, donate_argnums=0)


def cnn_rows(name: str, batch: int, rounds: int) -> dict[str, Any]:
  """Step seconds of SGDm and of RSGDm (residual_scale(1/16)) on random CIFAR-shaped batches."""
  model, source = build_model(name)
  graphdef, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  images = jax.random.normal(jax.random.key(0), (batch, *IMAGE_SHAPE), jnp.float32)
  labels = jax.random.randint(jax.random.key(1), (batch,), 0, NUM_CLASSES)
  sgdm = optax.sgd(0.1, momentum=0.9)
  txs = {"sgdm": sgdm, "rsgdm": optax.chain(sgdm, rsgd.residual_scale(1 / 16))}
  runners = {}
  for key, tx in txs.items():
    step = _train_step(graphdef, tx)
    carry = [
      {
        "params": jax.tree.map(jnp.copy, params),
        "batch_stats": jax.tree.map(jnp.copy, batch_stats),
        "opt_state": tx.init(params),
      }
    ]

    def run(step=step, carry=carry) -> None:
      carry[0], loss = step(carry[0], images, labels)
      loss.block_until_ready()

    runners[key] = run
  times = timing.interleaved(runners, rounds)
  return {
    "model": name if source.startswith("examples") else "StandaloneCNN",
    "source": source,
    "batch": batch,
    "parameters": int(sum(p.size for p in jax.tree.leaves(params))),
    "sgdm_seconds": timing.median(times["sgdm"]),
    "rsgdm_seconds": timing.median(times["rsgdm"]),
    "step_ratio": timing.median_ratio(times["rsgdm"], times["sgdm"]),
  }
