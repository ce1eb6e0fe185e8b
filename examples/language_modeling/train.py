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

Everything a resumed run needs is in the Orbax checkpoint of the last finished epoch (model,
optimizer state with the averaging switches, best models so far) and in ``metrics.jsonl`` (the
validation losses the triggers look at).
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

import rsgd_optax as rsgd
from examples.common import optimizers, runloop, views
from examples.language_modeling import input_pipeline, models
from rsgd_optax import (
  averaging_started,
  eval_params,
  find_averaging_state,
  iterate_averaging,
  nonmonotone_trigger,
  start_averaging,
)

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
  config: ml_collections.ConfigDict, view_list: list[views.View] | None = None
) -> optax.GradientTransformation:
  """The optimizer of the views in ``config.optimizer``, learning rate injected so that each batch
  can scale it by ``seq_len / bptt``; averaging is off until a trigger fires.

  One view: ``clip -> weight decay -> SGD [-> residual]`` wrapped in iterate averaging. Several:
  ``clip -> weight decay -> SGD``, then one iterate averaging per view in list order, around the
  view's residual (or ``optax.identity()`` for the base), so ``which=i`` names view ``i``.
  """
  view_list = views.parse_views(config.optimizer) if view_list is None else view_list
  settings = {"alpha": config.rsgd_alpha, "topk_fraction": config.topk_fraction}

  def make(learning_rate: float) -> optax.GradientTransformation:
    clip = optax.clip_by_global_norm(config.clip)
    if len(view_list) == 1:
      base = views.make_optimizer(
        view_list, learning_rate, weight_decay=config.weight_decay, **settings
      )
      return iterate_averaging(optax.chain(clip, base))
    base = optimizers.make_optimizer(
      views.trajectory(view_list[0].optimizer), learning_rate, weight_decay=config.weight_decay
    )
    averaged = [
      iterate_averaging(
        rsgd.residual(views.scheme(view, **settings)) if view.has_residual else optax.identity()
      )
      for view in view_list
    ]
    return optax.chain(clip, base, *averaged)

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


def evaluate(model: models.AWDLSTM, data: np.ndarray, config: ml_collections.ConfigDict) -> float:
  """Mean cross-entropy per token over batchified ``data`` (every target counted once)."""
  carries = model.initial_carry(data.shape[1])
  total, tokens = 0.0, 0.0
  for window in input_pipeline.eval_windows(data, bptt=config.bptt, bucket=config.bptt_bucket):
    loss_sum, count, carries = eval_step(model, carries, window.inputs, window.targets, window.mask)
    total += float(loss_sum)
    tokens += float(count)
  return total / tokens


def _with_params(model: models.AWDLSTM, params: nnx.State) -> models.AWDLSTM:
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  return nnx.merge(graphdef, params, rest)


def _snapshot(tree: Any) -> Any:
  """A copy that later in-place updates of the model or optimizer do not reach."""
  return jax.tree.map(jnp.copy, tree)


def _history(records: list[dict[str, Any]]) -> tuple[list[float], float, int | None]:
  """From earlier epochs' records: the validation losses measured before averaging started (the
  trigger's input), the best validation loss and its epoch."""
  before_switch = [r["val_loss"] for r in records if not r["averaging"]]
  best = min(records, key=lambda r: r["val_loss"], default=None)
  if best is None:
    return before_switch, math.inf, None
  return before_switch, best["val_loss"], best["epoch"]


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


def _check_config(config: ml_collections.ConfigDict) -> list[views.View]:
  names = [name.strip().partition("@")[0] for name in str(config.optimizer).split(",")]
  for name in names:
    if name and name not in optimizers.OPTIMIZER_NAMES:
      raise ValueError(
        f"Unknown optimizer {name!r}; this example runs {', '.join(TABLE_NAMES)} "
        f"(any of {', '.join(optimizers.OPTIMIZER_NAMES)} works)."
      )
  view_list = views.parse_views(config.optimizer)
  for name in ("batch_size", "eval_batch_size", "test_batch_size", "bptt", "num_epochs"):
    if int(config[name]) < 1:
      raise ValueError(f"config.{name} must be >= 1, got {config[name]}.")
  if config.learning_rate <= 0 or config.clip <= 0:
    raise ValueError("config.learning_rate and config.clip must be positive.")
  return view_list


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and checkpoints one run in ``workdir``; resumes from its last checkpoint.

  Returns the run's results (also written to ``results.json`` in the view's folder): best
  validation and test perplexity, the epoch of the best model and the epoch at which averaging
  started. With several views (``sgd,rsgd-sign,...``), a dict from each name to its results.

  The run skeleton is :func:`examples.common.runloop.run`; each view keeps its own trigger history
  (its records), switch epoch, average and best model.
  """
  view_list = _check_config(config)
  # With several views, ``which=i`` names view i's averaging; with one there is one to find.
  which = {view.name: (None if len(view_list) == 1 else i) for i, view in enumerate(view_list)}
  corpus = input_pipeline.load_corpus(config.data_source, max_train_tokens=config.max_train_tokens)
  train_data = input_pipeline.batchify(corpus.train, config.batch_size)
  valid_data = input_pipeline.batchify(corpus.valid, config.eval_batch_size)
  test_data = input_pipeline.batchify(corpus.test, config.test_batch_size)
  if config.max_eval_rows > 0:
    valid_data = valid_data[: config.max_eval_rows]
    test_data = test_data[: config.max_eval_rows]

  # This family passes nnx objects through ``nnx.jit`` rather than plain dicts of arrays (the
  # image and graph trainers): its step writes the per-batch learning rate into the optimizer's
  # injected hyperparameters in place, and its state is a handful of large LSTM matrices, so the
  # per-array host cost measured in benchmarks/BENCHMARKS.md is small next to the step. The loop
  # sees the objects' state as a pytree, synced in and out once per epoch.
  model = build_model(config, corpus.vocab_size)
  optimizer = nnx.Optimizer(model, build_optimizer(config, view_list), wrt=nnx.Param)

  def as_state(best_params: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint's ``state`` holds: model and optimizer (with the averaging switches) and
    each view's best evaluation point so far."""
    return {"model": nnx.state(model), "optimizer": nnx.state(optimizer), "best": best_params}

  def load(state: dict[str, Any]) -> None:
    nnx.update(model, state["model"])
    nnx.update(optimizer, state["optimizer"])

  base_key = jax.random.key(config.seed)
  max_len = config.bptt + 20

  def train_epoch(state: dict[str, Any], epoch: int):
    load(state)
    rng = np.random.default_rng([config.seed, epoch])
    carries = model.initial_carry(config.batch_size)
    first_step = int(optimizer.step[...])
    lengths = []
    with runloop.StepLosses(
      epoch, first_step, None, progress_bar=config.get("progress_bar", False)
    ) as tracker:
      for window in input_pipeline.train_windows(
        train_data, bptt=config.bptt, rng=rng, bucket=config.bptt_bucket, max_len=max_len
      ):
        step = first_step + len(lengths)
        learning_rate = jnp.float32(config.learning_rate * window.seq_len / config.bptt)
        raw, carries = train_step(
          model,
          optimizer,
          carries,
          window.inputs,
          window.targets,
          window.mask,
          learning_rate,
          jax.random.fold_in(base_key, step),
          ar=config.ar,
          tar=config.tar,
        )
        tracker.add(raw)
        lengths.append(window.seq_len)
      losses, _ = tracker.finish()
    train_loss = float(np.average(losses.astype(np.float64), weights=lengths))
    fields = {
      "step": int(optimizer.step[...]),
      "train_loss": train_loss,
      "train_ppl": math.exp(train_loss),
    }
    return as_state(state["best"]), fields

  def evaluate_view(view: views.View, epoch: int, records: list, best: Any) -> tuple[dict, Any]:
    """One view's record and best point; switches its averaging on when its trigger fires."""
    val_history, best_val, _ = _history(records)
    params = nnx.state(model, nnx.Param)
    shipped = eval_params(optimizer.opt_state, params, which=which[view.name])
    averaging = bool(averaging_started(optimizer.opt_state, which=which[view.name]))
    val_loss = evaluate(_with_params(model, shipped), valid_data, config)
    record = {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "averaging": averaging}
    if view.has_residual:
      inner = find_averaging_state(optimizer.opt_state, which=which[view.name]).inner_state
      record["proximity"] = float(rsgd.proximity(inner, params))
    if val_loss < best_val:
      best = _snapshot(shipped)
    if not averaging:
      val_history.append(val_loss)
      if _switch_now(config, epoch, val_history):
        optimizer.opt_state = start_averaging(optimizer.opt_state, which=which[view.name])
        record["switched"] = True
        logging.info("Epoch %d: %s switches to averaging.", epoch, view.name)
    return record, best

  def evaluate_epoch(state: dict[str, Any], epoch: int, history):
    load(state)
    best, results = dict(state["best"]), {}
    for view in view_list:
      record, best[view.name] = evaluate_view(view, epoch, history[view.name], best[view.name])
      results[view.name] = (record, best[view.name])
    return as_state(best), results

  result = runloop.run(
    config,
    workdir,
    views=view_list,
    state=as_state({v.name: _snapshot(nnx.state(model, nnx.Param)) for v in view_list}),
    train_epoch=train_epoch,
    evaluate=evaluate_epoch,
    num_epochs=config.num_epochs,
    log_fields=("train_ppl", "val_ppl", "proximity"),
  )
  load(result.state)
  results = {
    view.name: _final_results(
      config,
      view,
      result.records[view.name],
      result.state["best"][view.name],
      lambda params, data: evaluate(_with_params(model, params), data, config),
      valid_data,
      test_data,
      runloop.view_workdir(workdir, view_list, view),
    )
    for view in view_list
  }
  return results[view_list[0].name] if len(view_list) == 1 else results


def _final_results(config, view, records, best_params, evaluate_at, valid_data, test_data, folder):
  """A view's results (also written to ``<folder>/results.json``), its best model on test."""
  _, _, best_epoch = _history(records)
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
  return results
