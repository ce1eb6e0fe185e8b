"""The image trainer with a compressed gradient exchange: ``train_and_evaluate(config, workdir)``.

Data parallelism where the devices exchange compressed gradients instead of all-reducing float32
ones (``config.grad_compression``: :mod:`examples.common.compression`). Everything but the train
step is the plain trainer's (:mod:`examples.image_classification.train`): the model, the data, the
loss, the views' evaluation, the epoch loop and the run directory. What differs:

* The train step runs inside ``jax.shard_map``: each device takes the gradient of its share of the
  batch and :func:`rsgd_optax.compressed_mean`, chained in front of the whole optimizer (the base
  optimizer, weight decay and every view's residual then see the same mean on every device, as
  they see the all-reduced gradient without compression), exchanges it. Batch norm normalizes with
  the global batch's moments (a ``pmean`` of a few floats a layer), so the step differs from the
  plain one only by the exchange.
* The state's layout: everything replicated but the error-feedback memories, one row a device
  (:func:`rsgd_optax.memory_specs`). They are part of the checkpoint; a run resumed on another
  device count folds them onto the new count (:func:`rsgd_optax.resize_memory`: each worker starts
  from the mean memory, each server memory is cut again).
* The exchange's options (:class:`examples.common.compression.Options`), each off by default:
  ``config.compression_exchange`` (``"two_phase"``: bytes a device that do not grow with the
  device count), and the anchors' recipe: ``compression_exact_below`` (small leaves exact),
  ``compression_exact_steps`` (an exact warm-up), ``compression_block_size`` (sign: a scale per
  block).
* With error feedback each epoch records ``memory_ratio``, the epoch's mean of
  :func:`rsgd_optax.memory_ratio` (``max_i ||e_i|| / ||g_i + e_i||`` before each step): a memory
  growing past what it is added to comes before a collapse.

Only the replicated layout: FSDP reduce-scatters gradients into shards, while the compressors work
on each device's whole gradient.
"""

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import rsgd_optax as rsgd
from examples.common import checkpoint, compression, sharding, skeleton, watchdog
from examples.common.config_checks import AT_LEAST_0
from examples.common.errors import UserError
from examples.image_classification import evaluation, input_pipeline, train

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CompressedSpec:
  """The optimizer and its compressed exchange (hashable, so compiled steps can be shared).

  Attributes:
    optimizer: the plain trainer's optimizer.
    setting: ``config.grad_compression`` in its one spelling (``"sign"``, ``"topk@0.01"``, ...).
    axis: the mesh axis the gradients are exchanged across.
    options: the exchange and the recipe.
  """

  optimizer: train.OptimizerSpec
  setting: str
  axis: str
  options: compression.Options

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> "CompressedSpec":
    return cls(
      train.OptimizerSpec.from_config(config, steps_per_epoch),
      compression.canonical(config.grad_compression),
      str(config.compression_axis),
      compression.Options(
        exchange=str(config.compression_exchange),
        exact_below=int(config.compression_exact_below),
        exact_steps=int(config.compression_exact_steps),
        block_size=int(config.compression_block_size),
      ),
    )

  @property
  def error_feedback(self) -> bool:
    parsed = compression.parse(self.setting)
    return parsed is not None and parsed.error_feedback

  def build(self) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The exchange in front of the optimizer, and the learning-rate schedule."""
    tx, schedule = self.optimizer.build()
    exchange = compression.exchange(self.setting, self.axis, self.options)
    assert exchange is not None, "the plain trainer trains grad_compression='none'"
    return optax.chain(exchange, tx), schedule


def state_partition_specs(state: train.TrainState, axis: str) -> Any:
  """The training state's partition specs: all replicated but the error-feedback memories.

  The memories (workers', and with the two-phase exchange the servers') have one row per device
  along ``axis`` (:func:`rsgd_optax.memory_specs`); everything else is the same on every device.
  """
  return {
    "params": jax.tree.map(lambda _: P(), state["params"]),
    "batch_stats": jax.tree.map(lambda _: P(), state["batch_stats"]),
    "opt_state": rsgd.memory_specs(state["opt_state"], axis),
    "step": P(),
  }


def state_shardings(state: train.TrainState, mesh: Mesh, axis: str) -> Any:
  """Where each leaf of the training state lives: :func:`state_partition_specs` on ``mesh``."""
  return jax.tree.map(lambda p: NamedSharding(mesh, p), state_partition_specs(state, axis))


# Runs that differ only in seed, epochs or data order (a sweep's seeds, the tests) reuse the
# compiled steps instead of compiling them again.
@functools.lru_cache(maxsize=16)
def make_steps(
  graphdef: nnx.GraphDef,
  spec: CompressedSpec,
  mean: tuple[float, ...],
  std: tuple[float, ...],
  mesh: Mesh,
) -> train.Steps:
  """The compressed train step, and the plain trainer's evaluation steps."""
  tx, _ = spec.build()
  mean_, std_ = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  loss_fn = functools.partial(train.train_loss, graphdef, mean_, std_, batch_axis=spec.axis)
  axis = spec.axis

  def train_step(state: train.TrainState, images: jax.Array, labels: jax.Array):
    state_specs = state_partition_specs(state, axis)

    @functools.partial(
      jax.shard_map,
      mesh=mesh,
      in_specs=(state_specs, P(axis), P(axis)),
      out_specs=(state_specs, P(), P()),
    )
    def per_device(state: train.TrainState, images: jax.Array, labels: jax.Array):
      # The gradient at params marked as varying is this device's own (of its share of the
      # batch); at the replicated params, jax.grad would sum it over the devices first.
      local = jax.lax.pcast(state["params"], axis, to="varying")
      (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        local, state["batch_stats"], images, labels
      )
      values = {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
      if spec.error_feedback:  # the memory this step adds to its gradient, before the update
        values["memory_ratio"] = rsgd.memory_ratio(state["opt_state"], grads, axis)
      new_state = train.apply_step(tx, state, grads, batch_stats)
      # Equal shares of the batch: the mean of the devices' means is the batch mean.
      values = {k: v if k == "memory_ratio" else jax.lax.pmean(v, axis) for k, v in values.items()}
      return new_state, jax.lax.pmean(loss, axis), values

    return per_device(state, images, labels)

  # Layouts from shard_map's specs. Compiled ahead, with the stall watchdog paused.
  train_fn = watchdog.CompiledAhead(jax.jit(train_step, donate_argnums=0))
  return train.Steps(train=train_fn, **evaluation.step_functions(graphdef, mean_, std_, mesh))


def init_state(
  config: ml_collections.ConfigDict,
  num_classes: int,
  image_shape: tuple[int, ...],
  tx: optax.GradientTransformation,
  mesh: Mesh,
  axis: str,
) -> tuple[nnx.GraphDef, train.TrainState]:
  """The model and the training state: memories with one row per device of ``axis``, split
  along it; the rest replicated."""
  graphdef, params, batch_stats = train.init_model(config, num_classes, image_shape)
  with jax.set_mesh(mesh):  # compressed_mean's init sizes the memories by the mesh axis
    opt_state = tx.init(params)
  state = train.step_zero(params, batch_stats, opt_state)
  return graphdef, jax.device_put(state, state_shardings(state, mesh, axis))


def _memory_node(node: Any) -> Any:
  """The stored form of a compressed exchange's state: the dict with ``memory`` in ``node``."""
  if isinstance(node, dict):
    if "memory" in node:
      return node
    children = list(node.values())
  elif isinstance(node, list | tuple):
    children = list(node)
  else:
    return None
  for child in children:
    found = _memory_node(child)
    if found is not None:
      return found
  return None


def saved_memory_rows(workdir: str) -> int | None:
  """The device count the newest checkpoint's error-feedback memories were written with, if any."""
  stored = checkpoint.stored_shapes(os.path.join(workdir, "checkpoints"), "state")
  if stored is None or not isinstance(stored[1], dict):
    return None
  node = _memory_node(stored[1].get("opt_state"))
  if node is None:
    return None  # no memory (no error feedback), or another layout: the restore reports it
  shapes = jax.tree.leaves(node["memory"], is_leaf=lambda x: isinstance(x, tuple))
  shapes = [s for s in shapes if isinstance(s, tuple) and s]
  return shapes[0][0] if shapes else None


def with_memory_rows(state: train.TrainState, rows: int, mesh: Mesh) -> train.TrainState:
  """``state`` as a restore target whose memories have ``rows`` rows (replicated: any count fits).

  The shapes are those :func:`rsgd_optax.resize_memory` gives for ``rows`` devices: ``rows`` rows
  of each worker memory, each server memory cut into ``rows`` pieces.
  """
  replicated = NamedSharding(mesh, P())
  shapes = jax.eval_shape(lambda s: rsgd.resize_memory(s, rows), state["opt_state"])
  target = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
  )
  return {**state, "opt_state": target}


# The plain trainer's fields, and the exchange's.
CONFIG_RANGES = {
  **train.CONFIG_RANGES,
  "compression_exact_below": AT_LEAST_0,
  "compression_exact_steps": AT_LEAST_0,
  "compression_block_size": AT_LEAST_0,
}
CONFIG_CHOICES = {
  **train.CONFIG_CHOICES,
  "grad_compression": compression.CHOICES,
  "compression_axis": ("data",),  # the trainer's one mesh axis
  "compression_exchange": compression.EXCHANGES,
}


def _check(config: ml_collections.ConfigDict) -> None:
  """What the ranges cannot say: the layout, and block-wise scales only for sign."""
  if config.sharding != "replicated":
    raise UserError(
      f"config.grad_compression={config.grad_compression!r} needs config.sharding='replicated' "
      f"(got {config.sharding!r}): compression exchanges whole per-device gradients, while "
      "FSDP reduce-scatters them into shards; use sharding='replicated', or grad_compression="
      "'none' with FSDP."
    )
  parsed = compression.parse(config.grad_compression)
  if parsed is not None and parsed.scheme != "sign" and config.compression_block_size:
    raise UserError(
      f"config.compression_block_size={config.compression_block_size} is for sign (a scale per "
      f"block); config.grad_compression={config.grad_compression!r} sends values, not scales: "
      "set compression_block_size=0."
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> skeleton.RunResults:
  """Trains as :func:`examples.image_classification.train.train_and_evaluate` does, with the
  gradients exchanged as ``config.grad_compression`` says.

  Raises:
    examples.common.errors.UserError: a config value out of range, a layout other than
      replicated, block-wise scales for top-k, or a workdir trained with another config (nothing
      is written).
    examples.common.nonfinite.NonFiniteLossError: the training loss became NaN or infinite; the
      last good checkpoint is kept.
  """
  run = skeleton.start_run(
    config, workdir, CONFIG_RANGES, CONFIG_CHOICES, log_fields=train.LOG_FIELDS
  )
  _check(config)
  data = input_pipeline.create_input(config)  # checks batch_size against the training set
  mesh = sharding.create_mesh(config.num_devices, config.platform or None)
  sharding.check_batch_split(config.batch_size, mesh)
  spec = CompressedSpec.from_config(config, data.steps_per_epoch)
  tx, schedule = spec.build()
  graphdef, state = init_state(config, data.num_classes, data.image_shape, tx, mesh, spec.axis)
  steps = make_steps(graphdef, spec, train._floats(data.mean), train._floats(data.std), mesh)
  # The memories have one row per device. A checkpoint written on another device count is
  # restored with its own rows and folded onto this one (rsgd.resize_memory: each device gets the
  # mean memory, the gradient mass not yet applied; server memories are cut again); the run goes
  # on from there.
  saved_rows = saved_memory_rows(workdir)
  devices = mesh.shape[spec.axis]
  fold_memory = saved_rows is not None and saved_rows != devices
  template = with_memory_rows(state, saved_rows, mesh) if fold_memory else state
  with watchdog.for_run(config) as dog, run.open(template, data=data.contents()):
    state = run.state
    if fold_memory and run.start_epoch:
      fold = jax.jit(
        rsgd.resize_memory, static_argnums=1, out_shardings=state_shardings(state, mesh, spec.axis)
      )
      state = fold(state, devices)
      logger.info(
        "The error-feedback memory was saved on %d devices; folded onto %d (each device starts "
        "from the mean memory, rsgd.resize_memory).",
        saved_rows,
        devices,
      )
    train.run_epochs(config, run, dog, steps, state, data, mesh, schedule)
  return skeleton.finish(run)
