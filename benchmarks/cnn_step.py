"""A whole training step (forward, backward, update) of an image model, SGDm vs RSGDm.

The model comes from the image-classification example when it is importable; otherwise a small CNN
defined here stands in, and the result says so.

The state crosses ``jax.jit`` as plain dicts of arrays, not as ``nnx.State``: an ``nnx.State`` from
``nnx.split`` holds ``nnx.Variable`` leaves, which JAX flattens and rebuilds in Python on every call.
With DenseNet-121's 362 parameter arrays that host cost grows with every array the optimizer state
adds, and it is what a blocked step on a GPU measured (docs/design_notes.md).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import rsgd_optax as rsgd
from benchmarks import timing

IMAGE_SHAPE = (32, 32, 3)  # CIFAR
NUM_CLASSES = 100
PIPELINED_STEPS = 5  # steps dispatched back to back per timed call, as a training loop runs them


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
      return loss, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"], state["batch_stats"]
    )
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, loss

  return jax.jit(step, donate_argnums=0)


def cnn_rows(name: str, batch: int, rounds: int) -> dict[str, Any]:
  """Step seconds of SGDm and of RSGDm on random CIFAR-shaped batches.

  RSGDm is ``residual_scale(1/16)`` (the goal's row); ``schemes`` also times the sign and top-k
  residuals pipelined, with each step's compile seconds and temporary bytes, since in a whole step
  XLA may reuse the activations' memory for the residual's temporaries.

  Two timings per optimizer: ``PIPELINED_STEPS`` steps dispatched back to back and then waited for
  (what a training loop does: the host prepares the next step while the device runs this one), and
  one step waited for on its own (the host's dispatch cost then adds to the device's time).

  A control, SGDm compiled a second time, measures how far two compilations of one step differ
  (a GPU backend autotunes each compilation's kernels on its own): ``control_ratio`` is the ratio
  that an optimizer adding nothing would get.
  """
  model, source = build_model(name)
  graphdef, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  params, batch_stats = nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)
  images = jax.random.normal(jax.random.key(0), (batch, *IMAGE_SHAPE), jnp.float32)
  labels = jax.random.randint(jax.random.key(1), (batch,), 0, NUM_CLASSES)
  sgdm = optax.sgd(0.1, momentum=0.9)
  txs = {
    "sgdm": sgdm,
    "rsgdm": optax.chain(sgdm, rsgd.residual_scale(1 / 16)),
    "rsgdm_sign": optax.chain(sgdm, rsgd.residual_sign()),
    "rsgdm_topk": optax.chain(sgdm, rsgd.residual_topk(0.01)),
    "sgdm_recompiled": sgdm,
  }
  runners = {}
  state_arrays = {}
  compile_seconds = {}
  temp_bytes = {}
  for key, tx in txs.items():
    carry = [
      {
        "params": jax.tree.map(jnp.copy, params),
        "batch_stats": jax.tree.map(jnp.copy, batch_stats),
        "opt_state": tx.init(params),
      }
    ]
    state_arrays[key] = len(jax.tree.leaves(carry[0]))
    start = time.perf_counter()
    step = _train_step(graphdef, tx).lower(carry[0], images, labels).compile()
    compile_seconds[key] = time.perf_counter() - start
    temp_bytes[key] = step.memory_analysis().temp_size_in_bytes

    def run(steps: int, step=step, carry=carry) -> None:
      for _ in range(steps):
        carry[0], loss = step(carry[0], images, labels)
      loss.block_until_ready()

    runners[key] = functools.partial(run, PIPELINED_STEPS)
    if key in ("sgdm", "rsgdm"):
      runners[f"blocked_{key}"] = functools.partial(run, 1)
  times = timing.interleaved(runners, rounds)
  per_step = {key: [t / PIPELINED_STEPS for t in times[key]] for key in txs}
  schemes = {
    scheme: {
      "seconds": timing.median(per_step[key]),
      "step_ratio": timing.median_ratio(per_step[key], per_step["sgdm"]),
      "compile_seconds": compile_seconds[key],
      "compile_ratio": compile_seconds[key] / compile_seconds["sgdm"],
      "temp_bytes": temp_bytes[key],
    }
    for scheme, key in (
      ("sgdm", "sgdm"),
      ("residual_scale", "rsgdm"),
      ("residual_sign", "rsgdm_sign"),
      ("residual_topk", "rsgdm_topk"),
    )
  }
  return {
    "model": name if source.startswith("examples") else "StandaloneCNN",
    "source": source,
    "batch": batch,
    "parameters": int(sum(p.size for p in jax.tree.leaves(params))),
    "param_arrays": len(jax.tree.leaves(params)),
    "state_arrays": state_arrays,
    "pipelined_steps": PIPELINED_STEPS,
    "sgdm_seconds": timing.median(per_step["sgdm"]),
    "rsgdm_seconds": timing.median(per_step["rsgdm"]),
    "step_ratio": timing.median_ratio(per_step["rsgdm"], per_step["sgdm"]),
    "control_ratio": timing.median_ratio(per_step["sgdm_recompiled"], per_step["sgdm"]),
    "blocked_sgdm_seconds": timing.median(times["blocked_sgdm"]),
    "blocked_rsgdm_seconds": timing.median(times["blocked_rsgdm"]),
    "blocked_step_ratio": timing.median_ratio(times["blocked_rsgdm"], times["blocked_sgdm"]),
    "schemes": schemes,
    "control_compile_ratio": compile_seconds["sgdm_recompiled"] / compile_seconds["sgdm"],
  }
