"""A decoder-only transformer on Penn Treebank with AdamW, and residual views of its trajectory.

The step is the usual one for transformers: cross-entropy of the next word, gradient clipped to a
global norm, AdamW with decoupled weight decay, a linear warm-up then a cosine decay. The views
(``config.optimizer=adamw,adamw-scale@0.1,...``) add one ``rsgd.residual`` each after AdamW in one
chain; they pass AdamW's updates through unchanged, so one training gives every view's point
``rsgd.eval_params(opt_state, params, which=i)``, evaluated on the validation and test streams.

The record unit is an *evaluation*, not an epoch: ``config.evals_per_epoch`` evaluations an epoch
(most of what a weight average does to a language model happens early). Evaluation ``e`` trains the
global steps ``[step_at(e), step_at(e + 1))``; global step ``s`` takes batch ``s % steps_per_epoch``
of epoch ``s // steps_per_epoch``, so the batches depend only on the step and a resumed run trains
exactly as an uninterrupted one. In ``metrics.jsonl`` the ``epoch`` field (the run directory's
unit) counts evaluations; ``train_epochs`` says how far through the data each one is.

Devices: the batch is split along the ``data`` mesh axis; parameters and optimizer state are
replicated or split FSDP-style (``config.sharding``), through :mod:`examples.common.sharding`. XLA
inserts the reductions, so the numbers do not depend on the device count up to float rounding.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

import rsgd_optax as rsgd
from examples.common import optimizers, progress, sharding, skeleton
from examples.common.config_checks import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, PROBABILITY
from examples.common.errors import UserError
from examples.language_modeling.input_pipeline import Corpus, load_corpus
from examples.transformer_lm import input_pipeline, models

logger = logging.getLogger(__name__)

TrainState = dict[str, Any]  # {"params", "opt_state", "step"}

# Every numeric field with its valid range; checked before anything is loaded or written.
CONFIG_RANGES = {
  "max_train_tokens": AT_LEAST_0,
  "max_eval_tokens": AT_LEAST_0,
  "context": AT_LEAST_1,
  "layers": AT_LEAST_1,
  "width": AT_LEAST_1,
  "heads": AT_LEAST_1,
  "mlp_ratio": AT_LEAST_1,
  "dropout": PROBABILITY,
  "learning_rate": POSITIVE,
  "warmup_steps": AT_LEAST_0,
  "final_lr_ratio": PROBABILITY,
  "weight_decay": AT_LEAST_0,
  "clip_norm": AT_LEAST_0,
  "alpha": FRACTION,
  "topk_fraction": FRACTION,
  "batch_size": AT_LEAST_1,
  "eval_batch_size": AT_LEAST_1,
  "num_epochs": AT_LEAST_1,
  "evals_per_epoch": AT_LEAST_1,
  "num_devices": AT_LEAST_0,
  "log_every_steps": AT_LEAST_1,
}
CONFIG_CHOICES = {"positions": models.POSITIONS, "sharding": sharding.SHARDINGS}


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Where each evaluation falls: ``steps_per_epoch`` steps an epoch, ``evaluations`` in all."""

  steps_per_epoch: int
  evals_per_epoch: int
  num_epochs: int

  @property
  def evaluations(self) -> int:
    return self.num_epochs * self.evals_per_epoch

  @property
  def total_steps(self) -> int:
    return self.num_epochs * self.steps_per_epoch

  def step_at(self, evaluation: int) -> int:
    """The first global step of ``evaluation`` (``evaluation = evaluations``: the end)."""
    return evaluation * self.total_steps // self.evaluations


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> models.TransformerConfig:
  try:
    return models.TransformerConfig(
      vocab_size=vocab_size,
      context=config.context,
      layers=config.layers,
      width=config.width,
      heads=config.heads,
      mlp_ratio=config.mlp_ratio,
      dropout=float(config.dropout),
      positions=config.positions,
    )
  except ValueError as error:
    raise UserError(str(error)) from None


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak over ``warmup_steps``, then a cosine to the final ratio."""
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(total_steps, warmup + 1),
    end_value=config.learning_rate * config.final_lr_ratio,
  )


def build_optimizer(
  config: ml_collections.ConfigDict, views: list[optimizers.View], total_steps: int
) -> optax.GradientTransformation:
  """``clip -> AdamW -> residual per view``: the chain of :mod:`examples.common.optimizers`."""
  return optimizers.make_optimizer(
    views,
    learning_rate_schedule(config, total_steps),
    weight_decay=config.weight_decay,
    alpha=config.alpha,
    topk_fraction=config.topk_fraction,
    clip_norm=config.clip_norm,
  )


def init_state(
  config: ml_collections.ConfigDict,
  model_cfg: models.TransformerConfig,
  tx: optax.GradientTransformation,
  mesh: Mesh,
) -> tuple[nnx.GraphDef, TrainState]:
  """The model's graph and its training state, placed on ``mesh`` as ``config.sharding`` says."""
  model = models.TransformerLM(model_cfg, rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  # Plain dicts of arrays (as in the image trainer): the host cost per jitted call stays small.
  params = nnx.to_pure_dict(params)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  return graphdef, jax.device_put(state, sharding.shardings(state, mesh, config.sharding))


def _masked_cross_entropy(
  logits: jax.Array, batch: dict[str, jax.Array]
) -> tuple[jax.Array, jax.Array]:
  """The summed next-word cross-entropy over unmasked positions, and their count."""
  losses = optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), batch["targets"]
  )
  return jnp.sum(losses * batch["mask"]), jnp.sum(batch["mask"])


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, seed: int):
  """The jitted training step: ``(state, batch) -> (state, loss)``, the state donated."""
  base_key = jax.random.key(seed)

  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, jax.Array]:
    key = jax.random.fold_in(base_key, state["step"])  # dropout: a function of the step alone

    def loss_fn(params: Any) -> jax.Array:
      logits = nnx.merge(graphdef, params)(batch["inputs"], key)
      total, count = _masked_cross_entropy(logits, batch)
      return total / count

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
      "params": optax.apply_updates(state["params"], updates),
      "opt_state": opt_state,
      "step": state["step"] + 1,
    }
    return new_state, loss

  return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphdef: nnx.GraphDef):
  """The jitted evaluation step: summed cross-entropy and token count of a batch, no dropout."""

  @jax.jit
  def eval_step(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    return _masked_cross_entropy(nnx.merge(graphdef, params)(batch["inputs"]), batch)

  return eval_step


def _put(batch: input_pipeline.Batch, batch_sharding: NamedSharding) -> dict[str, jax.Array]:
  inputs, targets, mask = sharding.put_global(
    batch_sharding, batch.inputs, batch.targets, batch.mask
  )
  return {"inputs": inputs, "targets": targets, "mask": mask}


def batches_for_steps(
  tokens: np.ndarray, config: ml_collections.ConfigDict, schedule: Schedule, first: int, last: int
) -> Iterator[input_pipeline.Batch]:
  """The batches of global steps ``[first, last)``: step ``s`` is batch ``s % steps_per_epoch`` of
  epoch ``s // steps_per_epoch`` (each epoch's batches are a pure function of seed and epoch)."""
  step = first
  while step < last:
    epoch, index = divmod(step, schedule.steps_per_epoch)
    epoch_batches = input_pipeline.train_batches(
      tokens,
      context=config.context,
      batch_size=config.batch_size,
      seed=config.seed,
      epoch=epoch,
      start=index,
    )
    for batch in itertools.islice(epoch_batches, last - step):
      yield batch
      step += 1


def train_steps(
  train_step: Any,
  state: TrainState,
  batches: Iterator[input_pipeline.Batch],
  batch_sharding: NamedSharding,
  config: ml_collections.ConfigDict,
  evaluation: int,
) -> tuple[TrainState, dict[str, float]]:
  """Runs ``train_step`` over ``batches``; the state and the mean training loss."""
  first_step = int(state["step"])
  with progress.StepLosses(
    evaluation,
    first_step,
    None,
    check_every=config.log_every_steps,
    progress_bar=config.progress_bar,
  ) as tracker:
    for batch in batches:
      state, loss = train_step(state, _put(batch, batch_sharding))
      tracker.add(loss)
    means = tracker.finish()
  return state, {"train_loss": means["loss"], "train_ppl": math.exp(means["loss"])}


def evaluate(
  eval_step: Any,
  params: Any,
  tokens: np.ndarray,
  config: ml_collections.ConfigDict,
  batch_sharding: NamedSharding,
) -> float:
  """Mean cross-entropy per target of ``tokens`` (every target scored once)."""
  total, count = 0.0, 0.0
  for batch in input_pipeline.eval_batches(
    tokens, context=config.context, batch_size=config.eval_batch_size
  ):
    loss_sum, n = eval_step(params, _put(batch, batch_sharding))
    total, count = total + float(loss_sum), count + float(n)
  return total / count


def _eval_tokens(
  corpus: Corpus, config: ml_collections.ConfigDict
) -> tuple[np.ndarray, np.ndarray]:
  if config.max_eval_tokens > 0:
    return corpus.valid[: config.max_eval_tokens], corpus.test[: config.max_eval_tokens]
  return corpus.valid, corpus.test


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> skeleton.RunResults:
  """Trains AdamW with its residual views in ``workdir``, resuming from its last checkpoint.

  Returns each view's records (one per evaluation: validation and test perplexity at the view's
  point) and, as its final results, its last record (:class:`~examples.common.skeleton.RunResults`).
  """
  run = skeleton.start_run(
    config,
    workdir,
    CONFIG_RANGES,
    CONFIG_CHOICES,
    log_fields=("train_ppl", "val_ppl", "test_ppl"),
  )
  mesh = sharding.create_mesh(config.num_devices, config.platform or None)
  sharding.check_batch_split(config.batch_size, mesh)
  sharding.check_batch_split(config.eval_batch_size, mesh, "eval_batch_size")
  corpus = load_corpus(config.data_source, max_train_tokens=config.max_train_tokens)
  valid_tokens, test_tokens = _eval_tokens(corpus, config)
  try:
    steps_per_epoch = input_pipeline.steps_per_epoch(
      len(corpus.train), config.context, config.batch_size
    )
  except input_pipeline.CorpusError as error:
    raise UserError(str(error)) from None
  schedule = Schedule(steps_per_epoch, config.evals_per_epoch, config.num_epochs)
  if schedule.evaluations > schedule.total_steps:
    raise UserError(
      f"config.evals_per_epoch={config.evals_per_epoch} asks for more evaluations than the "
      f"{steps_per_epoch} steps of an epoch: lower it."
    )

  model_cfg = model_config(config, corpus.vocab_size)
  tx = build_optimizer(config, run.views, schedule.total_steps)
  graphdef, state = init_state(config, model_cfg, tx, mesh)
  train_step, eval_step = make_train_step(graphdef, tx, config.seed), make_eval_step(graphdef)
  batch_sharding = sharding.batch_sharding(mesh)
  lr = learning_rate_schedule(config, schedule.total_steps)

  with run.open(state, data=corpus):
    state = run.state
    for evaluation in range(run.start_epoch, schedule.evaluations):
      started = time.time()
      first, last = schedule.step_at(evaluation), schedule.step_at(evaluation + 1)
      batches = batches_for_steps(corpus.train, config, schedule, first, last)
      state, fields = train_steps(train_step, state, batches, batch_sharding, config, evaluation)
      fields.update(step=last, train_epochs=last / steps_per_epoch, lr=float(lr(last - 1)))
      records, shipped = {}, {}
      for view in run.views:
        point = (
          rsgd.eval_params(state["opt_state"], state["params"], which=view.which)
          if view.has_residual
          else state["params"]
        )
        val_loss = evaluate(eval_step, point, valid_tokens, config, batch_sharding)
        test_loss = evaluate(eval_step, point, test_tokens, config, batch_sharding)
        records[view.name] = {
          "val_loss": val_loss,
          "val_ppl": math.exp(val_loss),
          "test_loss": test_loss,
          "test_ppl": math.exp(test_loss),
        }
        shipped[view.name] = point
      run.write(evaluation, records, shared=fields, seconds=time.time() - started)
      run.save(evaluation, state, shipped)
  logger.info(
    "Perplexity of each view (validation / test) at the last evaluation:\n%s",
    views_table(run.records),
  )
  return skeleton.finish(run)


def views_table(records: dict[str, list[dict[str, Any]]]) -> str:
  """A Markdown table: each view's validation / test perplexity at the first, middle and last
  evaluation, and its change from the first view (the base) at the last."""
  names = list(records)
  if not names or not records[names[0]]:
    return "(no evaluations)"
  count = len(records[names[0]])
  picks = sorted({0, count // 2, count - 1})
  steps = [records[names[0]][i]["step"] for i in picks]
  header = (
    "| view | " + " | ".join(f"step {s}: val / test ppl" for s in steps) + " | last val vs base |"
  )
  lines = [header, "|---" * (len(picks) + 2) + "|"]
  base_last = records[names[0]][-1]["val_ppl"]
  for name in names:
    cells = [
      f"{records[name][i]['val_ppl']:.1f} / {records[name][i]['test_ppl']:.1f}" for i in picks
    ]
    change = records[name][-1]["val_ppl"] - base_last
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {change:+.1f} |")
  return "\n".join(lines)
