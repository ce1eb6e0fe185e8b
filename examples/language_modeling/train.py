"""AWD-LSTM on Penn Treebank with SGD -> ASGD (NT-ASGD), and with residuals RSGD -> RASGD.

The training loop follows the public AWD-LSTM code (``salesforce/awd-lstm-lm``, ``main.py``):
variable-length BPTT with the learning rate scaled by ``seq_len / bptt`` per batch, gradient norm
clipped to ``clip``, L2 weight decay added to the gradient, activation (AR) and temporal activation
(TAR) regularization, LSTM state carried across windows and reset each epoch. After each epoch the
model is evaluated on the validation set at ``rsgd_optax``'s evaluation point; while averaging is off
the validation loss is checked with the non-monotone trigger, and when it fires averaging is switched
on in the optimizer state (no new optimizer, no recompilation). The model with the best validation
loss is kept and evaluated on the test set at the end.

Views: SGD + ASGD and (RSGD + RASGD)-{sign, topk, scale} take the same plain SGD steps, so
``config.optimizer=sgd,rsgd-sign,rsgd-topk,rsgd-scale`` trains them as one run. The chain is
``clip -> weight decay -> SGD`` followed by one ``iterate_averaging`` per view (around
``optax.identity()`` for SGD, around the view's residual otherwise): each view keeps its own
NT-ASGD trigger on its own validation loss, its own switch epoch, its own average of its own point
and its own best model, and writes ``<workdir>/<name>/`` as a run of that name alone would.

:func:`train_and_evaluate` holds the epoch loop (train, evaluate and switch each view, record,
save) over the model and optimizer, its only state: the nnx objects, passed to ``nnx.jit`` as they
are and checkpointed as ``nnx.state``. Everything a resumed run needs is in the Orbax checkpoint of
the last finished epoch (model, optimizer state with the averaging switches, best models so far)
and in ``metrics.jsonl`` (each view's validation losses so far, which its trigger list starts from
on resume). The run directory (config lock, resume, records, checkpoints) is
:class:`examples.common.rundir.RunDirectory`, opened by :func:`examples.common.skeleton.start_run`.

Data parallelism: each window's columns (the batch) split over a one-axis ``data`` mesh
(``config.num_devices`` devices of ``config.platform``; :mod:`examples.common.sharding`), the model,
optimizer state and best models whole on every device, and the LSTM state split as its columns
are; XLA sums the gradient over the devices. Dropout masks do not depend on the layout (JAX's
partitionable random bits), so a run on several devices equals one on a single device up to float
rounding. Evaluation columns split too when their count divides evenly (the test set's one column
is evaluated whole on every device).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
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
from examples.common import config_checks, optimizers, progress, rundir, sharding, skeleton
from examples.common.config_checks import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, PROBABILITY
from examples.common.errors import UserError
from examples.language_modeling import input_pipeline, models
from rsgd_optax import (
  averaging_started,
  eval_params,
  find_averaging_state,
  iterate_averaging,
  nonmonotone_trigger,
  start_averaging,
)

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"

# The paper's Table 2 names for the optimizers this example is run with.
TABLE_NAMES = {
  "sgd": "SGD + ASGD",
  "rsgd-sign": "(RSGD + RASGD)-sign",
  "rsgd-topk": "(RSGD + RASGD)-topk (1%)",
  "rsgd-scale": "(RSGD + RASGD)-scale (alpha = 1/4)",
}


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> models.AWDLSTM:
  return models.AWDLSTM(
    vocab_size,
    embed_dim=config.embed_dim,
    hidden=config.hidden,
    num_layers=config.num_layers,
    dropouts=models.Dropouts(
      dropout=config.dropout,
      dropouth=config.dropouth,
      dropouti=config.dropouti,
      dropoute=config.dropoute,
      wdrop=config.wdrop,
    ),
    rngs=nnx.Rngs(config.seed),
  )


def build_optimizer(
  config: ml_collections.ConfigDict, view_list: list[optimizers.View] | None = None
) -> optax.GradientTransformation:
  """The optimizer of the views in ``config.optimizer``, learning rate injected so that each batch
  can scale it by ``seq_len / bptt``; averaging is off until a trigger fires.

  ``clip -> weight decay -> SGD``, then one iterate averaging per view in list order (one view or
  many: one layout), around the view's residual (or ``optax.identity()`` for the base), so
  ``which=i`` names view ``i``.
  """
  view_list = optimizers.parse_views(config.optimizer) if view_list is None else view_list

  def make(learning_rate: float) -> optax.GradientTransformation:
    base = optimizers.base_optimizer(view_list, learning_rate, weight_decay=config.weight_decay)
    tails = optimizers.view_tails(
      view_list, alpha=config.rsgd_alpha, topk_fraction=config.topk_fraction
    )
    averaged = [iterate_averaging(tail or optax.identity()) for tail in tails]
    return optax.chain(optax.clip_by_global_norm(config.clip), base, *averaged)

  return optax.inject_hyperparams(make)(learning_rate=config.learning_rate)


def loss_terms(
  outputs: models.Outputs, targets: jax.Array, mask: jax.Array, *, ar: float, tar: float
) -> tuple[jax.Array, jax.Array]:
  """(training objective, cross-entropy) over the unpadded rows.

  The objective adds AWD-LSTM's AR, ``ar * mean(dropped_last_output ** 2)``, and TAR,
  ``tar * mean((h_t - h_{t-1}) ** 2)`` over the last layer's undropped output.
  """
  tokens = mask.sum()
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(outputs.logits, targets)
  raw = jnp.sum(cross_entropy * mask) / tokens
  width = outputs.last_hidden.shape[-1]
  activation = jnp.sum(outputs.last_dropped**2 * mask[..., None]) / (tokens * width)
  pairs = mask[1:] * mask[:-1]
  steps = outputs.last_hidden[1:] - outputs.last_hidden[:-1]
  temporal = jnp.sum(steps**2 * pairs[..., None]) / (jnp.maximum(pairs.sum(), 1.0) * width)
  return raw + ar * activation + tar * temporal, raw


@functools.partial(nnx.jit, static_argnames=("ar", "tar"))
def train_step(
  model: models.AWDLSTM,
  optimizer: nnx.Optimizer,
  carries: list[models.Carry],
  inputs: jax.Array,
  targets: jax.Array,
  mask: jax.Array,
  learning_rate: jax.Array,
  key: jax.Array,
  *,
  ar: float,
  tar: float,
) -> tuple[jax.Array, list[models.Carry]]:
  """One SGD step on one BPTT window; returns its cross-entropy and the carried LSTM state."""

  def objective(model: models.AWDLSTM) -> tuple[jax.Array, tuple[jax.Array, Any]]:
    outputs = model(inputs, carries, mask, key)
    total, raw = loss_terms(outputs, targets, mask, ar=ar, tar=tar)
    return total, (raw, outputs.carries)

  (_, (raw, new_carries)), grads = nnx.value_and_grad(objective, has_aux=True)(model)
  optimizer.opt_state.hyperparams["learning_rate"][...] = learning_rate
  optimizer.update(model, grads)
  return raw, jax.lax.stop_gradient(new_carries)


@nnx.jit
def eval_step(
  model: models.AWDLSTM,
  carries: list[models.Carry],
  inputs: jax.Array,
  targets: jax.Array,
  mask: jax.Array,
) -> tuple[jax.Array, jax.Array, list[models.Carry]]:
  """Summed cross-entropy and token count of one window, without dropout."""
  outputs = model(inputs, carries, mask)
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(outputs.logits, targets)
  return jnp.sum(cross_entropy * mask), mask.sum(), outputs.carries


def evaluate(
  model: models.AWDLSTM, data: np.ndarray, config: ml_collections.ConfigDict, mesh: Mesh
) -> float:
  """Mean cross-entropy per token over batchified ``data`` (every target counted once).

  The columns split over ``mesh`` when their count divides evenly (the test set's single column
  does not: it is evaluated whole on every device).
  """
  columns = sharding.batch_sharding(mesh, batch_dim=1, batch_size=data.shape[1])
  carries = _carries_on(model.initial_carry(data.shape[1]), mesh, data.shape[1])
  total, tokens = 0.0, 0.0
  for window in input_pipeline.eval_windows(data, bptt=config.bptt, bucket=config.bptt_bucket):
    inputs, targets, mask = sharding.put_global(columns, window.inputs, window.targets, window.mask)
    loss_sum, count, carries = eval_step(model, carries, inputs, targets, mask)
    total += float(loss_sum)
    tokens += float(count)
  return total / tokens


def _carries_on(carries: list[models.Carry], mesh: Mesh, batch_size: int) -> list[models.Carry]:
  """The LSTM state ``(batch, hidden)`` split over ``mesh`` as its batch's columns are."""
  return jax.device_put(carries, sharding.batch_sharding(mesh, batch_size=batch_size))


def _with_params(model: models.AWDLSTM, params: nnx.State) -> models.AWDLSTM:
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  return nnx.merge(graphdef, params, rest)


def _snapshot(tree: Any) -> Any:
  """A copy that later in-place updates of the model or optimizer do not reach."""
  return jax.tree.map(jnp.copy, tree)


@dataclasses.dataclass
class Trigger:
  """One view's NT-ASGD input: its validation losses before averaging, and its best one so far."""

  val_losses: list[float] = dataclasses.field(default_factory=list)
  best_val: float = math.inf

  @classmethod
  def from_records(cls, records: list[dict[str, Any]]) -> Trigger:
    """The state after the restored epochs (a resumed run carries on where it stopped)."""
    return cls(
      [r["val_loss"] for r in records if not r["averaging"]],
      min((r["val_loss"] for r in records), default=math.inf),
    )


def _switch_now(config: ml_collections.ConfigDict, epoch: int, val_history: list[float]) -> bool:
  """Whether to switch averaging on after ``epoch``: when the NT-ASGD trigger fires on the validation
  losses so far (if ``nt_asgd``), and at the latest after ``averaging_start_epoch`` (if >= 0)."""
  if 0 <= config.averaging_start_epoch <= epoch:
    return True
  return config.nt_asgd and nonmonotone_trigger(val_history, config.nonmono)


def _switched_by(
  config: ml_collections.ConfigDict, switch_epoch: int | None, records: list[dict[str, Any]]
) -> str | None:
  """``"nt-asgd"`` if the trigger fired, ``"start_epoch"`` if ``averaging_start_epoch`` did."""
  if switch_epoch is None:
    return None
  history = [r["val_loss"] for r in records if r["epoch"] <= switch_epoch]
  if config.nt_asgd and nonmonotone_trigger(history, config.nonmono):
    return "nt-asgd"
  return "start_epoch"


# Every numeric field with its valid range; checked before anything is loaded or written.
CONFIG_RANGES = {
  "max_train_tokens": AT_LEAST_0,
  "max_eval_rows": AT_LEAST_0,
  "embed_dim": AT_LEAST_1,
  "hidden": AT_LEAST_1,
  "num_layers": AT_LEAST_1,
  "dropout": PROBABILITY,
  "dropouth": PROBABILITY,
  "dropouti": PROBABILITY,
  "dropoute": PROBABILITY,
  "wdrop": PROBABILITY,
  "learning_rate": POSITIVE,
  "clip": POSITIVE,
  "weight_decay": AT_LEAST_0,
  "ar": AT_LEAST_0,
  "tar": AT_LEAST_0,
  "batch_size": AT_LEAST_1,  # and at most half the training tokens: checked once they are read
  "eval_batch_size": AT_LEAST_1,
  "test_batch_size": AT_LEAST_1,
  "bptt": AT_LEAST_1,
  "bptt_bucket": AT_LEAST_1,
  "num_epochs": AT_LEAST_1,
  "nonmono": AT_LEAST_1,
  "averaging_start_epoch": config_checks.Range(-1),
  "rsgd_alpha": FRACTION,
  "topk_fraction": FRACTION,
}


def _batchify(tokens: np.ndarray, batch_size: int, field: str) -> np.ndarray:
  if len(tokens) // batch_size < 2:
    raise UserError(
      f"config.{field}={batch_size} is too large for the {len(tokens)} tokens of its split "
      f"(each column needs two tokens at least): use at most {len(tokens) // 2}."
    )
  return input_pipeline.batchify(tokens, batch_size)


def train_epoch(
  config: ml_collections.ConfigDict,
  model: models.AWDLSTM,
  optimizer: nnx.Optimizer,
  train_data: np.ndarray,
  epoch: int,
  mesh: Mesh,
) -> dict[str, Any]:
  """One pass over the training windows (updates ``model`` and ``optimizer`` in place).

  Each window's columns split over ``mesh`` (the model is whole on every device); XLA sums the
  gradient over the devices.
  """
  rng = np.random.default_rng([config.seed, epoch])
  base_key = jax.random.key(config.seed)
  columns = sharding.batch_sharding(mesh, batch_dim=1)
  carries = _carries_on(model.initial_carry(config.batch_size), mesh, config.batch_size)
  with progress.StepLosses(
    epoch,
    int(optimizer.step[...]),
    None,
    check_every=config.log_every_steps,
    progress_bar=config.progress_bar,
  ) as tracker:
    for window in input_pipeline.train_windows(
      train_data, bptt=config.bptt, rng=rng, bucket=config.bptt_bucket, max_len=config.bptt + 20
    ):
      learning_rate = jnp.float32(config.learning_rate * window.seq_len / config.bptt)
      raw, carries = train_step(
        model,
        optimizer,
        carries,
        *sharding.put_global(columns, window.inputs, window.targets, window.mask),
        learning_rate,
        jax.random.fold_in(base_key, tracker.step),
        ar=config.ar,
        tar=config.tar,
      )
      tracker.add(raw, weight=window.seq_len)  # the loss per token: windows weighted by length
    train_loss = tracker.finish()["loss"]
  return {
    "step": int(optimizer.step[...]),
    "train_loss": train_loss,
    "train_ppl": math.exp(train_loss),
  }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> skeleton.RunResults:
  """Trains, evaluates and checkpoints one run in ``workdir``; resumes from its last checkpoint.

  Returns each view's per-epoch records and, as its final results (also written to
  ``results.json`` in the view's folder), its best validation and test perplexity, the epoch of
  its best model and the epoch at which averaging started
  (:class:`~examples.common.skeleton.RunResults`).
  With several views (``sgd,rsgd-sign,...``) each keeps its own trigger (its validation losses),
  switch epoch, average and best model.
  """
  run = skeleton.start_run(
    config, workdir, CONFIG_RANGES, log_fields=("train_ppl", "val_ppl", "proximity")
  )
  mesh = sharding.create_mesh(config.num_devices, config.platform or None)
  sharding.check_batch_split(config.batch_size, mesh)
  corpus = input_pipeline.load_corpus(config.data_source, max_train_tokens=config.max_train_tokens)
  train_data = _batchify(corpus.train, config.batch_size, "batch_size")
  valid_data = _batchify(corpus.valid, config.eval_batch_size, "eval_batch_size")
  test_data = _batchify(corpus.test, config.test_batch_size, "test_batch_size")
  if config.max_eval_rows > 0:
    valid_data = valid_data[: config.max_eval_rows]
    test_data = test_data[: config.max_eval_rows]

  # This family passes nnx objects through ``nnx.jit`` rather than plain dicts of arrays (the
  # image and graph trainers): its step writes the per-batch learning rate into the optimizer's
  # injected hyperparameters in place, and its state is a handful of large LSTM matrices, so the
  # per-array host cost measured in docs/design_notes.md is small next to the step.
  model = build_model(config, corpus.vocab_size)
  optimizer = nnx.Optimizer(model, build_optimizer(config, run.views), wrt=nnx.Param)
  replicated = NamedSharding(mesh, P())
  nnx.update(model, jax.device_put(nnx.state(model), replicated))
  nnx.update(optimizer, jax.device_put(nnx.state(optimizer), replicated))
  best = {view.name: _snapshot(nnx.state(model, nnx.Param)) for view in run.views}

  def checkpoint_state() -> dict[str, Any]:
    return {"model": nnx.state(model), "optimizer": nnx.state(optimizer), "best": best}

  with run.open(checkpoint_state(), data=corpus):
    nnx.update(model, run.state["model"])
    nnx.update(optimizer, run.state["optimizer"])
    best = dict(run.state["best"])
    triggers = {view.name: Trigger.from_records(run.records[view.name]) for view in run.views}
    for epoch in range(run.start_epoch, config.num_epochs):
      started = time.time()
      fields = train_epoch(config, model, optimizer, train_data, epoch, mesh)
      records = {}
      for which, view in enumerate(run.views):
        params = nnx.state(model, nnx.Param)
        shipped = eval_params(optimizer.opt_state, params, which=which)
        averaging = bool(averaging_started(optimizer.opt_state, which=which))
        val_loss = evaluate(_with_params(model, shipped), valid_data, config, mesh)
        record = {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "averaging": averaging}
        if view.has_residual:
          inner = find_averaging_state(optimizer.opt_state, which=which).inner_state
          record["proximity"] = float(rsgd.proximity(inner, params))
        trigger = triggers[view.name]
        if val_loss < trigger.best_val:
          best[view.name], trigger.best_val = _snapshot(shipped), val_loss
        if not averaging:
          trigger.val_losses.append(val_loss)
          if _switch_now(config, epoch, trigger.val_losses):
            optimizer.opt_state = start_averaging(optimizer.opt_state, which=which)
            record["switched"] = True
            logger.info("Epoch %d: %s switches to averaging.", epoch, view.name)
        records[view.name] = record
      run.write(epoch, records, shared=fields, seconds=time.time() - started)
      run.save(epoch, checkpoint_state(), best)
  final = {
    view.name: _final_results(
      config,
      view,
      run.records[view.name],
      best[view.name],
      lambda params, data: evaluate(_with_params(model, params), data, config, mesh),
      valid_data,
      test_data,
      rundir.view_workdir(workdir, run.views, view),
    )
    for view in run.views
  }
  return skeleton.finish(run, final)


def _final_results(config, view, records, best_params, evaluate_at, valid_data, test_data, folder):
  """A view's results (also written to ``<folder>/results.json``), its best model on test."""
  best_epoch = min(records, key=lambda r: r["val_loss"])["epoch"] if records else None
  switch_epoch = next((r["epoch"] for r in records if r.get("switched")), None)
  test_loss = evaluate_at(best_params, test_data)
  best_val = evaluate_at(best_params, valid_data)
  results = {
    "optimizer": view.name,
    "name": TABLE_NAMES.get(view.name, view.name),
    "best_epoch": best_epoch,
    "switch_epoch": switch_epoch,
    "switched_by": _switched_by(config, switch_epoch, records),
    "val_loss": best_val,
    "val_ppl": math.exp(best_val),
    "test_loss": test_loss,
    "test_ppl": math.exp(test_loss),
    "epochs": config.num_epochs,
  }
  if jax.process_index() == 0:
    with open(os.path.join(folder, RESULTS_FILE), "w") as f:
      json.dump(results, f, indent=2)
  logger.info(
    "%s: validation ppl %.2f | test ppl %.2f", view.name, results["val_ppl"], results["test_ppl"]
  )
  return results
