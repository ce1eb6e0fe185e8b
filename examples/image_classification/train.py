"""One trainer for every image-classification experiment: ``train_and_evaluate(config, workdir)``.

The training loop is the ordinary Optax loop: gradients are taken at ``params``, which for the
residual optimizers is the reference (SGD(m)) trajectory ``y``; each epoch evaluates
``rsgd.eval_params(opt_state, params)`` (the RSGD point ``x = y + r``, what the paper reports and
what gets checkpointed for shipping) and, for comparison, ``params`` itself.

Views: ``config.optimizer`` may list several names that share one trajectory
(``sgdm,rsgdm-scale,rsgdm-sign,rsgdm-topk``, ``rsgdm-scale@0.25``; :mod:`examples.common.optimizers`).
The run trains the base trajectory once with every residual in one chain and evaluates each name at
its own point, writing ``<workdir>/<name>/metrics.jsonl`` equal (on the CPU, bit for bit) to a run
of that name alone. :func:`train_and_evaluate` holds the epoch loop (train, evaluate every view,
record, save); the run directory (config lock, resume, records, checkpoints) is
:class:`examples.common.rundir.RunDirectory`, opened by :func:`examples.common.skeleton.start_run`,
and the progress bar, non-finite stop and epoch means are :class:`examples.common.progress.StepLosses`.

Batch normalization: the running statistics are gathered along the reference trajectory (the only
forward passes in train mode are at ``params``). By default ``eval_params`` is evaluated with those
statistics, as a PyTorch implementation that only swaps the weights does. With
``config.recompute_bn_stats`` they are re-estimated at the evaluated point from
``config.bn_recompute_batches`` unaugmented training batches (each batch's exact mean and variance,
averaged), which is the more faithful choice when ``x`` and ``y`` differ a lot (large alpha, sign
schemes early in training).

Data parallelism: a one-axis mesh over the devices (all of them, or ``config.num_devices``, of the
default backend or of ``config.platform``); batches are split along it with
``NamedSharding(mesh, P("data"))``. With ``config.sharding="replicated"`` the training state is
whole on every device and XLA inserts the gradient all-reduce. With ``"fsdp"`` each parameter, its
batch statistics and its optimizer state (momentum, residual) are split along ``data`` on their
largest dimension that divides (:mod:`examples.common.sharding`), so each device holds about
``1/n`` of them and GSPMD reduce-scatters the gradients. Batch-norm statistics are computed over
the global batch, so the result does not depend on the device count or the layout.

Compressed exchange (``config.grad_compression``, replicated layout only): each device takes the
gradient of its share of the batch inside ``jax.shard_map`` and ``rsgd.compressed_mean``, in front
of the whole optimizer chain, exchanges it compressed (:mod:`examples.common.compression`). Batch
norm still normalizes with the global batch's moments (a ``pmean``); each device's error memory is
part of the checkpointed state, and a run resumed on another device count folds it onto the new
count (``rsgd.resize_memory``).
"""

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
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
from examples.common import (
  checkpoint,
  compression,
  optimizers,
  progress,
  sharding,
  skeleton,
  watchdog,
)
from examples.common.config_checks import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, PROBABILITY
from examples.common.errors import UserError
from examples.image_classification import input_pipeline
from examples.image_classification.models import MODELS, create_model

logger = logging.getLogger(__name__)

TrainState = dict[str, Any]  # params, batch_stats, opt_state, step


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """Everything that defines the optimizer (hashable, so compiled steps can be shared)."""

  name: str
  learning_rate: float
  momentum: float
  weight_decay: float
  alpha: float
  topk_fraction: float
  decay_epochs: tuple[int, ...]
  decay_factor: float
  steps_per_epoch: int
  grad_compression: str = compression.NONE
  compression_axis: str = "data"

  @property
  def compressed(self) -> bool:
    """Whether gradients are exchanged compressed (per device, inside ``shard_map``)."""
    return self.grad_compression != compression.NONE

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> "OptimizerSpec":
    return cls(
      config.optimizer,
      float(config.learning_rate),
      float(config.momentum),
      float(config.weight_decay),
      float(config.alpha),
      float(config.topk_fraction),
      tuple(int(e) for e in config.lr_decay_epochs),
      float(config.lr_decay_factor),
      steps_per_epoch,
      str(config.get("grad_compression", compression.NONE)),
      str(config.get("compression_axis", "data")),
    )

  def build(self) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer named by ``name`` and its learning-rate schedule."""
    schedule = optimizers.step_decay_schedule(
      self.learning_rate, self.steps_per_epoch, self.decay_epochs, self.decay_factor
    )
    tx = optimizers.make_optimizer(
      self.name,
      schedule,
      momentum=self.momentum,
      weight_decay=self.weight_decay,
      alpha=self.alpha,
      topk_fraction=self.topk_fraction,
    )
    # The exchange goes in front of the whole chain: the base optimizer, weight decay and every
    # view's residual see the same mean on every device, as they see the all-reduced gradient
    # without compression.
    exchange = compression.exchange(self.grad_compression, self.compression_axis)
    if exchange is not None:
      tx = optax.chain(exchange, tx)
    return tx, schedule


@dataclasses.dataclass(frozen=True)
class Steps:
  """The jitted functions of one run (built once, reused every epoch)."""

  train: Any
  evaluate: Any
  batch_moments: Any
  # Everything else computed on the (possibly sharded) state is jitted too: an eager op on arrays
  # of several processes is a collective of its own, and those hung multi-process runs.
  mean_moments: Any
  view_point: Any
  proximity: Any


def _standardize(images: jax.Array, mean: np.ndarray, std: np.ndarray) -> jax.Array:
  return (images.astype(jnp.float32) - mean) / std


# Runs that differ only in seed, epochs or data order (a sweep's seeds, the tests) reuse the
# compiled steps instead of compiling them again.
@functools.lru_cache(maxsize=16)
def make_steps(
  graphdef: nnx.GraphDef,
  spec: OptimizerSpec,
  mean: tuple[float, ...],
  std: tuple[float, ...],
  mesh: Mesh,
  layout: str = "replicated",
) -> Steps:
  """Builds the train, evaluation and batch-statistics steps for ``graphdef`` and ``spec``.

  ``layout`` is ``config.sharding``: the training state keeps that layout from step to step.
  """
  tx, _ = spec.build()
  replicated = NamedSharding(mesh, P())
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

  def stepped(state: TrainState, grads: Any, batch_stats: Any) -> TrainState:
    """The training state after one optimizer step on ``grads`` (and the new batch statistics)."""
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {
      "params": optax.apply_updates(state["params"], updates),
      "batch_stats": batch_stats,
      "opt_state": opt_state,
      "step": state["step"] + 1,
    }

  def loss_fn(params, batch_stats, images, labels, batch_axis: str | None = None):
    """The training loss, and (logits, new batch statistics) as its auxiliary output.

    Fresh variables (copy=True) inside the gradient's trace, so that the train-mode forward pass
    may update the batch statistics there. With ``batch_axis`` (inside ``shard_map``), batch norm
    normalizes with the statistics of the global batch (a pmean of each layer's per-channel
    moments, a few floats next to the gradient): a compressed step then differs from the
    uncompressed one only by the exchange, its numbers do not depend on the device count, and the
    running statistics stay replicated. Per-device statistics (as PyTorch DDP without
    SyncBatchNorm) would change the model with the device count.
    """
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    if batch_axis is not None:
      for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
          module.axis_name = batch_axis
    logits = model(_standardize(images, mean, std), train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

  def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"], state["batch_stats"], images, labels
    )
    new_state = stepped(state, grads, batch_stats)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    if layout == "fsdp":  # keep each leaf split as it came in (GSPMD might gather it otherwise)
      new_state = jax.lax.with_sharding_constraint(
        new_state, sharding.shardings(new_state, mesh, layout)
      )
    return new_state, loss, accuracy

  def compressed_train_step(state: TrainState, images: jax.Array, labels: jax.Array):
    """``train_step`` with each device's own gradient, exchanged by ``compressed_mean``."""
    axis = spec.compression_axis
    state_specs = state_partition_specs(state, spec)

    @functools.partial(
      jax.shard_map,
      mesh=mesh,
      in_specs=(state_specs, P(axis), P(axis)),
      out_specs=(state_specs, P(), P()),
    )
    def per_device(state: TrainState, images: jax.Array, labels: jax.Array):
      # The gradient at params marked as varying is this device's own (of its share of the
      # batch); at the replicated params, jax.grad would sum it over the devices first.
      local = jax.lax.pcast(state["params"], axis, to="varying")
      (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        local, state["batch_stats"], images, labels, axis
      )
      new_state = stepped(state, grads, batch_stats)
      accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
      # Equal shares of the batch: the mean of the devices' means is the batch mean.
      return new_state, jax.lax.pmean(loss, axis), jax.lax.pmean(accuracy, axis)

    return per_device(state, images, labels)

  def eval_step(totals, params, batch_stats, images, labels, mask):
    """``totals`` plus this batch's loss sum, correct count and example count."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    logits = model(_standardize(images, mean, std), train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    return totals + jnp.stack([jnp.sum(losses * mask), jnp.sum(correct * mask), jnp.sum(mask)])

  def batch_moments(params, batch_stats, images):
    """Each batch-norm layer's exact batch mean and variance at ``params`` (momentum 0)."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    for _, module in nnx.iter_modules(model):
      if isinstance(module, nnx.BatchNorm):
        module.momentum = 0.0
    model(_standardize(images, mean, std), train=True)
    return nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  if spec.compressed:
    train = jax.jit(compressed_train_step, donate_argnums=0)  # layouts from shard_map's specs
  elif layout == "fsdp":  # the state's layout comes from the constraint inside the step
    train = jax.jit(train_step, donate_argnums=0)
  else:  # the state and the two scalars replicate
    train = jax.jit(train_step, donate_argnums=0, out_shardings=replicated)
  # Each compiled ahead of its first run, with the stall watchdog paused: its bound then covers
  # only the running steps, which is what waits on the other processes (examples/common/watchdog.py).
  ahead = watchdog.CompiledAhead
  return Steps(
    train=ahead(train),
    evaluate=ahead(jax.jit(eval_step, out_shardings=replicated)),
    batch_moments=ahead(jax.jit(batch_moments, out_shardings=replicated)),
    mean_moments=ahead(
      jax.jit(
        lambda moments: jax.tree.map(lambda *m: sum(m) / len(m), *moments),
        out_shardings=replicated,
      )
    ),
    view_point=ahead(jax.jit(rsgd.eval_params, static_argnames="which")),
    proximity=ahead(jax.jit(rsgd.proximity, static_argnames="which", out_shardings=replicated)),
  )


def state_partition_specs(state: TrainState, spec: OptimizerSpec) -> Any:
  """The training state's partition specs with compression: all replicated but the EF memory.

  The error-feedback memory has one row per device along ``spec.compression_axis``
  (:func:`rsgd_optax.memory_specs`); everything else is the same on every device.
  """
  return {
    "params": jax.tree.map(lambda _: P(), state["params"]),
    "batch_stats": jax.tree.map(lambda _: P(), state["batch_stats"]),
    "opt_state": rsgd.memory_specs(state["opt_state"], spec.compression_axis),
    "step": P(),
  }


def state_shardings(state: TrainState, mesh: Mesh, layout: str, spec: OptimizerSpec) -> Any:
  """Where each leaf of the training state lives (``config.sharding``, or compression's layout)."""
  if spec.compressed:
    return jax.tree.map(lambda p: NamedSharding(mesh, p), state_partition_specs(state, spec))
  return sharding.shardings(state, mesh, layout)


def _is_memory(node: Any) -> bool:
  return isinstance(node, rsgd.CompressedMeanState)


def saved_memory_rows(workdir: str) -> int | None:
  """The device count the newest checkpoint's error-feedback memory was written with, if any."""
  stored = checkpoint.stored_shapes(os.path.join(workdir, "checkpoints"), "state")
  if stored is None:
    return None
  try:
    memory = stored[1]["opt_state"][0]["memory"]  # chain(compressed_mean, ...): its state first
  except (KeyError, IndexError, TypeError):
    return None  # another layout: the restore reports the mismatch
  shapes = jax.tree.leaves(memory, is_leaf=lambda x: isinstance(x, tuple))
  return shapes[0][0] if shapes and shapes[0] else None


def with_memory_rows(state: TrainState, rows: int, mesh: Mesh) -> TrainState:
  """``state`` as a restore target whose memory has ``rows`` rows (replicated: any count fits)."""
  replicated = NamedSharding(mesh, P())

  def target(node: Any) -> Any:
    if not _is_memory(node):
      return node
    return rsgd.CompressedMeanState(
      jax.tree.map(
        lambda m: jax.ShapeDtypeStruct((rows, *m.shape[1:]), m.dtype, sharding=replicated),
        node.memory,
      )
    )

  return {**state, "opt_state": jax.tree.map(target, state["opt_state"], is_leaf=_is_memory)}


def evaluate(
  steps: Steps,
  params,
  batch_stats,
  batches: Iterator,
  batch_sharding: NamedSharding,
  beat: Callable[[], None] = lambda: None,
) -> tuple[float, float]:
  """Mean loss and accuracy over ``batches`` (padding masked out)."""
  total = np.zeros(3, np.float32)
  for images, labels, mask in batches:
    total = steps.evaluate(
      total,
      params,
      batch_stats,
      *sharding.put_local(batch_sharding, images, labels, mask.astype(np.float32)),
    )
    beat()
  loss_sum, correct, count = np.asarray(jax.device_get(total), np.float64)
  return float(loss_sum / count), float(correct / count)


def recompute_batch_stats(
  steps: Steps,
  params,
  batch_stats,
  batches: Iterator,
  batch_sharding: NamedSharding,
  max_batches: int,
):
  """Batch-norm statistics re-estimated at ``params``: the mean of per-batch moments."""
  moments = []
  for images, _, mask in batches:
    if len(moments) == max_batches:
      break
    if not mask.all():  # padded batches would bias the statistics
      continue
    moments.append(
      steps.batch_moments(params, batch_stats, *sharding.put_local(batch_sharding, images))
    )
  if not moments:
    return batch_stats
  return steps.mean_moments(moments)


def init_state(
  config, num_classes, image_shape, tx, mesh, spec: OptimizerSpec | None = None
) -> tuple[nnx.GraphDef, TrainState]:
  """Builds the model and the training state, laid out on ``mesh`` as ``config.sharding`` says.

  With ``spec.compressed`` the error-feedback memory gets one row per device of the compression
  axis, split along it; the rest is replicated.
  """
  kwargs = dict(config.model_kwargs)
  kwargs.setdefault("in_channels", image_shape[-1])
  if config.model == "small_cnn":
    kwargs.setdefault("image_size", image_shape[0])
  model = create_model(config.model, num_classes, rngs=nnx.Rngs(config.seed), **kwargs)
  graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  if jax.tree.leaves(rest):
    raise ValueError(f"Model {config.model} has state besides params and batch statistics.")
  # Plain dicts of arrays, not nnx.State: the Variable leaves of an nnx.State are flattened and
  # rebuilt in Python on every jitted call, a host cost per array that grows with the optimizer
  # state (docs/design_notes.md).
  params = nnx.to_pure_dict(params)
  if spec is not None and spec.compressed:
    with jax.set_mesh(mesh):  # compressed_mean's init sizes the memory by the mesh axis
      opt_state = tx.init(params)
  else:
    opt_state = tx.init(params)
  state = {
    "params": params,
    "batch_stats": nnx.to_pure_dict(batch_stats),
    "opt_state": opt_state,
    "step": jnp.zeros((), jnp.int32),
  }
  if spec is None:
    return graphdef, jax.device_put(state, sharding.shardings(state, mesh, config.sharding))
  return graphdef, jax.device_put(state, state_shardings(state, mesh, config.sharding, spec))


def _floats(values: np.ndarray) -> tuple[float, ...]:
  return tuple(float(v) for v in np.ravel(values))


def train_epoch(
  steps: Steps,
  state: TrainState,
  data: input_pipeline.Input,
  epoch: int,
  batch_sharding: NamedSharding,
  *,
  check_every: int,
  progress_bar: bool,
  beat: Callable[[], None] = lambda: None,
) -> tuple[TrainState, dict[str, float]]:
  """One pass over the training batches; stops on a non-finite loss (checked every few steps)."""
  tracker = progress.StepLosses(
    epoch,
    int(state["step"]),
    data.steps_per_epoch,
    check_every=check_every,
    progress_bar=progress_bar,
  )
  with tracker:
    for images, labels in data.train_batches(epoch):
      state, loss, accuracy = steps.train(
        state, *sharding.put_local(batch_sharding, images, labels)
      )
      tracker.add(loss, accuracy=accuracy)
      beat()  # the stall watchdog (examples/common/watchdog.py)
    means = tracker.finish()
  return state, {
    "running_train_loss": means["loss"],
    "running_train_accuracy": means["accuracy"],
  }


def evaluate_views(
  config: ml_collections.ConfigDict,
  steps: Steps,
  state: TrainState,
  data: input_pipeline.Input,
  batch_sharding: NamedSharding,
  view_list: list[optimizers.View],
  beat: Callable[[], None] = lambda: None,
) -> dict[str, tuple[dict[str, float], dict[str, Any]]]:
  """Each view's metrics at its own point, and the model it ships.

  The base view is evaluated at ``params``; a residual view at ``rsgd.eval_params(...,
  which=view.which)``, with ``reference_*`` at ``params``. The test set is evaluated at ``params``
  once for all views (the base view's test metrics are that evaluation, unless it re-estimates its
  batch statistics).
  """
  params, opt_state = state["params"], state["opt_state"]

  @functools.cache
  def reference() -> tuple[float, float]:
    return evaluate(
      steps, params, state["batch_stats"], data.eval_batches("test"), batch_sharding, beat
    )

  recompute = config.get("recompute_bn_stats", False)
  results = {}
  for view in view_list:
    if view.has_residual:
      eval_params = steps.view_point(opt_state, params, which=view.which)
    else:
      eval_params = params
    eval_stats = state["batch_stats"]
    if recompute:
      eval_stats = recompute_batch_stats(
        steps,
        eval_params,
        eval_stats,
        data.eval_batches("train_eval"),
        batch_sharding,
        config.bn_recompute_batches,
      )
    if view.has_residual or recompute:
      test_loss, test_accuracy = evaluate(
        steps, eval_params, eval_stats, data.eval_batches("test"), batch_sharding, beat
      )
    else:
      test_loss, test_accuracy = reference()
    train_loss, train_accuracy = evaluate(
      steps, eval_params, eval_stats, data.eval_batches("train_eval"), batch_sharding, beat
    )
    if view.has_residual:
      reference_loss, reference_accuracy = reference()
      proximity = float(steps.proximity(opt_state, params, which=view.which))
    else:
      reference_loss, reference_accuracy, proximity = test_loss, test_accuracy, 0.0
    metrics = {
      "train_loss": train_loss,
      "train_accuracy": train_accuracy,
      "test_loss": test_loss,
      "test_accuracy": test_accuracy,
      "reference_test_loss": reference_loss,
      "reference_test_accuracy": reference_accuracy,
      "generalization_error": test_loss - train_loss,
      "proximity": proximity,
    }
    results[view.name] = (metrics, {"params": eval_params, "batch_stats": eval_stats})
  return results


# Every numeric field with its valid range; checked before anything is loaded or written.
CONFIG_RANGES = {
  "train_subset": AT_LEAST_0,
  "test_subset": AT_LEAST_0,
  "train_eval_examples": AT_LEAST_0,
  "crop_padding": AT_LEAST_0,
  "image_size": AT_LEAST_1,
  "resize_size": AT_LEAST_1,
  "num_workers": AT_LEAST_0,
  "learning_rate": POSITIVE,
  "momentum": PROBABILITY,
  "weight_decay": AT_LEAST_0,
  "alpha": FRACTION,
  "topk_fraction": FRACTION,
  "lr_decay_epochs": AT_LEAST_1,
  "lr_decay_factor": POSITIVE,
  "num_epochs": AT_LEAST_1,
  "batch_size": AT_LEAST_1,  # and at most the training set: checked once the data is loaded
  "num_devices": AT_LEAST_0,
  "num_processes": AT_LEAST_0,
  "distributed_timeout_s": POSITIVE,
  "bn_recompute_batches": AT_LEAST_1,
  "log_every_steps": AT_LEAST_1,
}
CONFIG_CHOICES = {
  "dataset": ("cifar100", "imagenet", "fashion_mnist", "mnist5k"),
  "sharding": sharding.SHARDINGS,
  "model": tuple(sorted(MODELS)),
  "grad_compression": compression.CHOICES,
  "compression_axis": ("data",),  # the trainer's one mesh axis
}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> skeleton.RunResults:
  """Trains ``config.model`` with ``config.optimizer``, resuming from ``workdir`` if possible.

  ``config.optimizer`` is one name, or a comma-separated list of names that share one trajectory
  (``sgdm,rsgdm-scale,rsgdm-sign,rsgdm-topk``): one training, one record per view
  (``<workdir>/<name>/metrics.jsonl``; one name: ``<workdir>/metrics.jsonl``); see
  :mod:`examples.common.optimizers`.

  Returns:
    Each view's per-epoch records and its last record, by name
    (:class:`~examples.common.skeleton.RunResults`).

  Raises:
    examples.common.errors.UserError: a config value out of range, or a workdir trained with
      another config (nothing is written).
    examples.common.nonfinite.NonFiniteLossError: the training loss became NaN or infinite; the
      last good checkpoint is kept.
  """
  log_fields = ("train_loss", "test_accuracy", "reference_test_accuracy", "proximity")
  run = skeleton.start_run(config, workdir, CONFIG_RANGES, CONFIG_CHOICES, log_fields=log_fields)
  if config.get("grad_compression", compression.NONE) != compression.NONE:
    if config.sharding != "replicated":
      raise UserError(
        f"config.grad_compression={config.grad_compression!r} needs config.sharding='replicated' "
        f"(got {config.sharding!r}): compression exchanges whole per-device gradients, while "
        "FSDP reduce-scatters them into shards; use sharding='replicated', or grad_compression="
        "'none' with FSDP."
      )
  data = input_pipeline.create_input(config)  # checks batch_size against the training set
  mesh = sharding.create_mesh(config.num_devices, config.platform or None)
  sharding.check_batch_split(config.batch_size, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  spec = OptimizerSpec.from_config(config, data.steps_per_epoch)
  tx, schedule = spec.build()
  graphdef, state = init_state(config, data.num_classes, data.image_shape, tx, mesh, spec)
  steps = make_steps(graphdef, spec, _floats(data.mean), _floats(data.std), mesh, config.sharding)
  # The watchdog ends a multi-process run whose peer died or stalled (a collective that never
  # returns) with the relaunch message; it sits outside the run directory, which closes first.
  # The error-feedback memory has one row per device. A checkpoint written on another device
  # count is restored with its own rows and folded onto this one (rsgd.resize_memory: each device
  # gets the mean memory, the gradient mass not yet applied); the run goes on from there.
  saved_rows = saved_memory_rows(workdir) if spec.compressed else None
  devices = mesh.shape[spec.compression_axis]
  fold_memory = saved_rows is not None and saved_rows != devices
  template = with_memory_rows(state, saved_rows, mesh) if fold_memory else state
  with watchdog.for_run(config) as dog, run.open(template, data=data.contents()):
    state = run.state
    if fold_memory and run.start_epoch:
      fold = jax.jit(
        rsgd.resize_memory,
        static_argnums=1,
        out_shardings=state_shardings(template, mesh, config.sharding, spec),
      )
      state = fold(state, devices)
      logger.info(
        "The error-feedback memory was saved on %d devices; folded onto %d (each device starts "
        "from the mean memory, rsgd.resize_memory).",
        saved_rows,
        devices,
      )
    for epoch in range(run.start_epoch, config.num_epochs):
      started = time.time()
      dog.phase("train", epoch)
      # A divergence raises inside train_epoch, before anything of this epoch is written.
      state, running = train_epoch(
        steps,
        state,
        data,
        epoch,
        batch_sharding,
        check_every=config.log_every_steps,
        progress_bar=config.progress_bar,
        beat=dog.beat,
      )
      dog.phase("evaluate", epoch)
      results = evaluate_views(config, steps, state, data, batch_sharding, run.views, dog.beat)
      step = int(state["step"])
      run.write(
        epoch,
        {name: metrics for name, (metrics, _) in results.items()},
        shared={"step": step, "lr": float(schedule(step - 1)), **running},
        seconds=time.time() - started,
      )
      dog.phase("save", epoch)  # a save has no beats: it must fit the watchdog's bound
      run.save(epoch, state, {name: shipped for name, (_, shipped) in results.items()})
  return skeleton.finish(run)
