"""One trainer for every image-classification experiment: ``train_and_evaluate(config, workdir)``.

The training loop is the ordinary Optax loop: gradients are taken at ``params``, which for the
residual optimizers is the reference (SGD(m)) trajectory ``y``; each epoch evaluates
``rsgd.eval_params(opt_state, params)`` (the RSGD point ``x = y + r``, what the paper reports and
what gets checkpointed for shipping) and, for comparison, ``params`` itself.

Views: ``config.optimizer`` may list several names that share one trajectory
(``sgdm,rsgdm-scale,rsgdm-sign,rsgdm-topk``, ``rsgdm-scale@0.25``; :mod:`examples.common.optimizers`).
The run trains the base trajectory once with every residual in one chain and evaluates each name at
its own point, writing ``<workdir>/<name>/metrics.jsonl`` equal (on the CPU, bit for bit) to a run
of that name alone. :func:`run_epochs` holds the epoch loop (train, evaluate every view
(:mod:`examples.image_classification.evaluation`), record, save); the run directory (config lock, resume, records, checkpoints) is
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

Compressed gradient exchange (``config.grad_compression``): its own trainer,
:mod:`examples.image_classification.compressed_train`, which reuses this module's model, data,
loss and epoch loop and the evaluation, and replaces only the train step and the state's layout;
:func:`examples.image_classification.trainers.train_and_evaluate` picks the trainer a config names.
"""

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from examples.common import compression, optimizers, progress, rundir, sharding, skeleton, watchdog
from examples.common.config_checks import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, PROBABILITY
from examples.common.errors import UserError
from examples.image_classification import evaluation, input_pipeline, models

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
    return tx, schedule


@dataclasses.dataclass(frozen=True)
class Steps(evaluation.EvalSteps):
  """The jitted functions of one run (built once, reused every epoch): the evaluation's, and
  ``train(state, images, labels)``, which returns the new state, the step's loss and a dict of the
  step's other values (``accuracy``, and what a trainer adds), each averaged over the epoch.
  """

  train: Any


def train_loss(
  graphdef: nnx.GraphDef,
  mean: np.ndarray,
  std: np.ndarray,
  params: Any,
  batch_stats: Any,
  images: jax.Array,
  labels: jax.Array,
  batch_axis: str | None = None,
) -> tuple[jax.Array, tuple[jax.Array, Any]]:
  """The training loss, and (logits, new batch statistics) as its auxiliary output.

  Fresh variables (copy=True) inside the gradient's trace, so that the train-mode forward pass may
  update the batch statistics there. With ``batch_axis`` (inside ``shard_map``, where each device
  holds its share of the batch), batch norm normalizes with the statistics of the global batch (a
  pmean of each layer's per-channel moments, a few floats next to the gradient): the numbers then
  do not depend on the device count and the running statistics stay replicated. Per-device
  statistics (as PyTorch DDP without SyncBatchNorm) would change the model with the device count.
  """
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  if batch_axis is not None:
    for _, module in nnx.iter_modules(model):
      if isinstance(module, nnx.BatchNorm):
        module.axis_name = batch_axis
  logits = model(input_pipeline.standardize(images, mean, std), train=True)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, (logits, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))


def apply_step(
  tx: optax.GradientTransformation, state: TrainState, grads: Any, batch_stats: Any
) -> TrainState:
  """The training state after one optimizer step on ``grads`` (and the new batch statistics)."""
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  return {
    "params": optax.apply_updates(state["params"], updates),
    "batch_stats": batch_stats,
    "opt_state": opt_state,
    "step": state["step"] + 1,
  }


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
  mean_, std_ = np.asarray(mean, np.float32), np.asarray(std, np.float32)

  loss_fn = functools.partial(train_loss, graphdef, mean_, std_)

  def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"], state["batch_stats"], images, labels
    )
    new_state = apply_step(tx, state, grads, batch_stats)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    if layout == "fsdp":  # keep each leaf split as it came in (GSPMD might gather it otherwise)
      new_state = jax.lax.with_sharding_constraint(
        new_state, sharding.shardings(new_state, mesh, layout)
      )
    return new_state, loss, {"accuracy": accuracy}

  if layout == "fsdp":  # the state's layout comes from the constraint inside the step
    train = jax.jit(train_step, donate_argnums=0)
  else:  # the state and the two scalars replicate
    train = jax.jit(train_step, donate_argnums=0, out_shardings=NamedSharding(mesh, P()))
  return Steps(
    train=watchdog.CompiledAhead(train), **evaluation.step_functions(graphdef, mean_, std_, mesh)
  )


def init_model(
  config: ml_collections.ConfigDict, num_classes: int, image_shape: tuple[int, ...]
) -> tuple[nnx.GraphDef, Any, Any]:
  """``config.model`` for the data: its graph, and its params and batch statistics as plain dicts.

  Plain dicts of arrays, not nnx.State: the Variable leaves of an nnx.State are flattened and
  rebuilt in Python on every jitted call, a host cost per array that grows with the optimizer state
  (docs/design_notes.md).
  """
  kwargs = dict(config.model_kwargs)
  kwargs.setdefault("in_channels", image_shape[-1])
  if config.model == "small_cnn":
    kwargs.setdefault("image_size", image_shape[0])
  model = models.create_model(config.model, num_classes, rngs=nnx.Rngs(config.seed), **kwargs)
  graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  if jax.tree.leaves(rest):
    raise ValueError(f"Model {config.model} has state besides params and batch statistics.")
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


def init_state(
  config: ml_collections.ConfigDict,
  num_classes: int,
  image_shape: tuple[int, ...],
  tx: optax.GradientTransformation,
  mesh: Mesh,
) -> tuple[nnx.GraphDef, TrainState]:
  """Builds the model and the training state, laid out on ``mesh`` as ``config.sharding`` says."""
  graphdef, params, batch_stats = init_model(config, num_classes, image_shape)
  state = step_zero(params, batch_stats, tx.init(params))
  return graphdef, jax.device_put(state, sharding.shardings(state, mesh, config.sharding))


def step_zero(params: Any, batch_stats: Any, opt_state: Any) -> TrainState:
  """The training state before the first step."""
  return {
    "params": params,
    "batch_stats": batch_stats,
    "opt_state": opt_state,
    "step": jnp.zeros((), jnp.int32),
  }


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
  """One pass over the training batches; stops on a non-finite loss (checked every few steps).

  Returns the new state and the epoch's running means: ``running_train_loss``,
  ``running_train_accuracy`` and any other value the train step returns, under its own name.
  """
  tracker = progress.StepLosses(
    epoch,
    int(state["step"]),
    data.steps_per_epoch,
    check_every=check_every,
    progress_bar=progress_bar,
  )
  with tracker:
    for images, labels in data.train_batches(epoch):
      state, loss, values = steps.train(state, *sharding.put_local(batch_sharding, images, labels))
      tracker.add(loss, **values)
      beat()  # the stall watchdog (examples/common/watchdog.py)
    means = tracker.finish()
  # The running means of the epoch's steps; a trainer's own step values keep their names.
  return state, {
    "running_train_loss": means.pop("loss"),
    "running_train_accuracy": means.pop("accuracy"),
    **means,
  }


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
  "model": tuple(sorted(models.MODELS)),
}
LOG_FIELDS = ("train_loss", "test_accuracy", "reference_test_accuracy", "proximity")


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
  run = skeleton.start_run(config, workdir, CONFIG_RANGES, CONFIG_CHOICES, log_fields=LOG_FIELDS)
  if compression.canonical(config.get("grad_compression", compression.NONE)) != compression.NONE:
    raise UserError(
      f"config.grad_compression={config.grad_compression!r} is the compressed trainer's "
      "(examples.image_classification.compressed_train); run it through "
      "examples.image_classification.main, which picks the trainer, or set grad_compression='none'."
    )
  data = input_pipeline.create_input(config)  # checks batch_size against the training set
  mesh = sharding.create_mesh(config.num_devices, config.platform or None)
  sharding.check_batch_split(config.batch_size, mesh)
  spec = OptimizerSpec.from_config(config, data.steps_per_epoch)
  tx, schedule = spec.build()
  graphdef, state = init_state(config, data.num_classes, data.image_shape, tx, mesh)
  steps = make_steps(graphdef, spec, _floats(data.mean), _floats(data.std), mesh, config.sharding)
  # The watchdog ends a multi-process run whose peer died or stalled (a collective that never
  # returns) with the relaunch message; it sits outside the run directory, which closes first.
  with watchdog.for_run(config) as dog, run.open(state, data=data.contents()):
    run_epochs(config, run, dog, steps, run.state, data, mesh, schedule)
  return skeleton.finish(run)


def run_epochs(
  config: ml_collections.ConfigDict,
  run: rundir.RunDirectory,
  dog: watchdog.Watchdog,
  steps: Steps,
  state: TrainState,
  data: input_pipeline.Input,
  mesh: Mesh,
  schedule: optax.Schedule,
) -> TrainState:
  """The epoch loop, from ``run.start_epoch``: train, evaluate every view, record, save.

  Every value the train step returns besides the loss and accuracy (the compressed trainer's
  memory ratio) is recorded under its own name with the epoch's shared fields.
  """
  batch_sharding = sharding.batch_sharding(mesh)
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
    results = evaluation.evaluate_views(
      config, steps, state, data, batch_sharding, run.views, dog.beat
    )
    step = int(state["step"])
    run.write(
      epoch,
      {name: metrics for name, (metrics, _) in results.items()},
      shared={"step": step, "lr": float(schedule(step - 1)), **running},
      seconds=time.time() - started,
    )
    dog.phase("save", epoch)  # a save has no beats: it must fit the watchdog's bound
    run.save(epoch, state, {name: shipped for name, (_, shipped) in results.items()})
  return state
