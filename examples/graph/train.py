"""Cluster-GCN training with Adam/SGDm, with or without residuals (paper, section 7.1).

``train_and_evaluate(config, workdir)`` loads a GraphSAGE-format graph, partitions its training
subgraph into clusters, trains a :class:`~examples.graph.models.ClusterGCN` on random groups of
clusters, and after every ``eval_every`` epochs scores the RSGD point ``x = y + r``
(``rsgd.eval_params``) on the validation and test nodes of the whole graph. It writes
``config.json``, ``metrics.jsonl`` (one line per epoch) and TensorBoard scalars into ``workdir``,
and an Orbax checkpoint per ``checkpoint_every`` epochs, from which a rerun resumes.
:func:`train_and_evaluate` holds the epoch loop; the run directory (config lock, resume, records,
checkpoints) is :class:`examples.common.rundir.RunDirectory`, opened by
:func:`examples.common.skeleton.start_run`. ``config.optimizer`` may list views of one trajectory
(``adam,adam-scale,adam-sign,adam-topk``): one training, each view evaluated at its own point, with
its own ``<workdir>/<name>/metrics.jsonl``. It trains on one device: the README says why its padded
cluster batches do not split over devices as the other families' batches do.

The setting is inductive, as in the Cluster-GCN and GraphSAGE PPI experiments: training sees only
the graph induced by the training nodes; evaluation runs on the whole graph.
"""

import collections
import dataclasses
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import rsgd_optax as rsgd
from examples.common import config_checks, optimizers, progress, skeleton
from examples.common.config_checks import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, PROBABILITY
from examples.graph import batching, partition, scores
from examples.graph.graphsage_data import GraphData, load_graphsage
from examples.graph.models import ClusterGCN

logger = logging.getLogger(__name__)

# How many times each jitted function was traced (= compiled). Padding keeps it at one per function.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


@dataclasses.dataclass
class PreparedGraph:
  """A loaded graph with its training batcher and one evaluation batcher per held-out split."""

  data: GraphData
  train: batching.ClusterBatcher
  evaluation: dict[str, batching.ClusterBatcher]
  in_features: int


# Every numeric field with its valid range; checked before anything is loaded or written.
CONFIG_RANGES = {
  "learning_rate": POSITIVE,
  "momentum": PROBABILITY,
  "weight_decay": AT_LEAST_0,
  "alpha": FRACTION,
  "topk_fraction": FRACTION,
  "num_layers": AT_LEAST_1,
  "hidden": AT_LEAST_1,
  "dropout": PROBABILITY,
  "diag_lambda": AT_LEAST_0,
  "num_clusters": AT_LEAST_1,
  "clusters_per_batch": AT_LEAST_1,
  "num_clusters_val": AT_LEAST_1,
  "num_clusters_test": AT_LEAST_1,
  "num_epochs": AT_LEAST_1,
  "eval_every": AT_LEAST_1,
  "checkpoint_every": AT_LEAST_1,
  "log_every_steps": AT_LEAST_1,
}
CONFIG_CHOICES = {
  "partition_method": partition.PARTITION_METHODS,
  "precalc_adjacency": batching.PRECALC_ADJACENCIES,
}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Every field in its range; ``clusters_per_batch`` at most ``num_clusters`` (the batch size).

  :func:`train_and_evaluate` checks the ranges in :func:`examples.common.skeleton.start_run`.
  """
  config_checks.check(config, CONFIG_RANGES, CONFIG_CHOICES)
  check_batch_size(config)


def check_batch_size(config: ml_collections.ConfigDict) -> None:
  """``clusters_per_batch`` at most ``num_clusters``: a batch is that many clusters."""
  config_checks.check_batch_size(
    config.clusters_per_batch, config.num_clusters, field="clusters_per_batch", of="clusters"
  )


def prepare_graph(config: ml_collections.ConfigDict) -> PreparedGraph:
  """Loads the dataset, partitions it and builds the padded batchers."""
  data = load_graphsage(config.data_dir, config.dataset)
  # More clusters than training nodes would leave clusters empty (batches of padding).
  config_checks.check_batch_size(
    config.num_clusters, data.train_nodes.size, field="num_clusters", of="training nodes"
  )
  full_adj = partition.adjacency(data.num_nodes, data.edges)
  train_nodes = data.train_nodes
  train_adj = full_adj[train_nodes][:, train_nodes]
  if config.precalc:
    adjacency = config.precalc_adjacency
    train_inputs = batching.precompute_first_layer(
      train_adj, data.features[train_nodes], config.diag_lambda, adjacency=adjacency
    )
    full_inputs = batching.precompute_first_layer(
      full_adj, data.features, config.diag_lambda, adjacency=adjacency
    )
  else:
    train_inputs, full_inputs = data.features[train_nodes], data.features
  train_clusters = partition.partition(
    train_adj, config.num_clusters, method=config.partition_method, seed=config.partition_seed
  )
  train = batching.ClusterBatcher(
    train_adj,
    train_clusters,
    train_inputs,
    data.labels[train_nodes],
    np.ones(train_nodes.size, bool),
    node_ids=train_nodes,
    clusters_per_batch=config.clusters_per_batch,
    diag_lambda=config.diag_lambda,
  )
  evaluation = {}
  for split, nodes, num_clusters in (
    ("val", data.val_nodes, config.num_clusters_val),
    ("test", data.test_nodes, config.num_clusters_test),
  ):
    if nodes.size == 0:
      continue
    clusters = partition.partition(
      full_adj, num_clusters, method=config.partition_method, seed=config.partition_seed
    )
    mask = np.zeros(data.num_nodes, bool)
    mask[nodes] = True
    evaluation[split] = batching.ClusterBatcher(
      full_adj, clusters, full_inputs, data.labels, mask, diag_lambda=config.diag_lambda
    )
  # One padded shape for every evaluation batch, so evaluation compiles once, not once per split.
  max_nodes = max((b.max_nodes for b in evaluation.values()), default=1)
  max_edges = max((b.max_edges for b in evaluation.values()), default=1)
  for batcher in evaluation.values():
    batcher.pad_at_least(max_nodes, max_edges)
  return PreparedGraph(data, train, evaluation, in_features=train_inputs.shape[1])


def build_model(config: ml_collections.ConfigDict, graph: PreparedGraph) -> ClusterGCN:
  return ClusterGCN(
    graph.in_features,
    config.hidden,
    graph.data.num_classes,
    num_layers=config.num_layers,
    precalc=config.precalc,
    layer_norm=config.layer_norm,
    dropout=config.dropout,
    rngs=nnx.Rngs(params=config.seed, dropout=config.seed),
  )


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The one optimizer of ``config.optimizer``'s views (one name: that optimizer)."""
  return optimizers.make_optimizer(
    config.optimizer,
    config.learning_rate,
    momentum=config.momentum,
    weight_decay=config.weight_decay,
    alpha=config.alpha,
    topk_fraction=config.topk_fraction,
  )


TrainState = dict[str, Any]  # params, opt_state, step: plain dicts of arrays


@dataclasses.dataclass(frozen=True)
class Steps:
  """The jitted functions of one run.

  The state passes through ``jax.jit`` as plain dicts of arrays (``nnx.to_pure_dict``), as
  in the image trainer: an ``nnx.Optimizer`` would be flattened and rebuilt in Python on every call,
  a host cost per array that grows with every residual view (docs/design_notes.md).
  """

  train: Any
  predict: Any


def make_steps(
  train_graphdef: nnx.GraphDef,
  eval_graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  multilabel: bool,
) -> Steps:
  def train_step(state: TrainState, rest: dict, batch: batching.GraphBatch):
    """One optimizer step on one cluster batch; returns the new state, the dropout state, loss."""
    TRACE_COUNTS["train_step"] += 1

    def loss_fn(params):
      model = nnx.merge(train_graphdef, params, rest, copy=True)
      loss = scores.masked_loss(model(batch), batch.labels, batch.label_mask, multilabel=multilabel)
      return loss, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

    (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
      "params": optax.apply_updates(state["params"], updates),
      "opt_state": opt_state,
      "step": state["step"] + 1,
    }
    return new_state, new_rest, loss

  def predict(params, rest, batch: batching.GraphBatch) -> jax.Array:
    TRACE_COUNTS["predict"] += 1
    return nnx.merge(eval_graphdef, params, rest, copy=True)(batch)

  return Steps(train=jax.jit(train_step, donate_argnums=(0, 1)), predict=jax.jit(predict))


def view_params(state: TrainState, view: optimizers.View) -> dict:
  """The parameters to evaluate and ship: ``params`` for the base, ``eval_params`` for a residual."""
  if view.has_residual:
    return rsgd.eval_params(state["opt_state"], state["params"], which=view.which)
  return state["params"]


def evaluate(
  steps: Steps,
  params: dict,
  rest: dict,
  batcher: batching.ClusterBatcher,
  multilabel: bool,
) -> dict[str, float]:
  """Loss, micro-F1 and accuracy of the model at ``params`` on ``batcher``'s masked nodes."""
  logits, labels = [], []
  for batch in batcher.in_order():
    keep = batch.label_mask > 0
    if not keep.any():
      continue
    out = np.asarray(steps.predict(params, rest, batching.to_device(batch)))
    logits.append(out[keep])
    labels.append(batch.labels[keep])
  logits_all, labels_all = np.concatenate(logits), np.concatenate(labels)
  loss = scores.masked_loss(
    logits_all, labels_all, np.ones(len(labels_all), np.float32), multilabel=multilabel
  )
  return {
    "loss": float(loss),
    "micro_f1": scores.micro_f1(logits_all, labels_all, multilabel=multilabel),
    "accuracy": scores.accuracy(logits_all, labels_all, multilabel=multilabel),
  }


def train_epoch(
  config: ml_collections.ConfigDict,
  steps: Steps,
  state: TrainState,
  model: ClusterGCN,
  graph: PreparedGraph,
  epoch: int,
) -> tuple[TrainState, dict[str, Any]]:
  """One pass over the cluster batches; stops on a non-finite loss."""
  # Per-epoch randomness derives from (seed, epoch), so a resumed run repeats it exactly.
  rng = np.random.default_rng([config.seed, epoch])
  nnx.reseed(model, dropout=int(rng.integers(2**31)))
  rest = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
  num_batches = graph.train.num_batches
  with progress.StepLosses(
    epoch,
    epoch * num_batches,
    num_batches,
    check_every=config.log_every_steps,
    progress_bar=config.progress_bar,
  ) as tracker:
    for batch in graph.train.epoch(rng):
      state, rest, loss = steps.train(state, rest, batching.to_device(batch))
      tracker.add(loss)
    train_loss = tracker.finish()["loss"]
  return state, {"step": (epoch + 1) * num_batches, "train_loss": train_loss}


def evaluate_views(
  steps: Steps,
  state: TrainState,
  eval_rest: dict,
  graph: PreparedGraph,
  view_list: list[optimizers.View],
) -> dict[str, tuple[dict[str, float], dict]]:
  """Each view's metrics on every held-out split at its own point, and the parameters it ships."""
  results = {}
  for view in view_list:
    params = view_params(state, view)
    metrics = {}
    for split, batcher in graph.evaluation.items():
      for key, value in evaluate(steps, params, eval_rest, batcher, graph.data.multilabel).items():
        metrics[f"{split}_{key}"] = value
    if view.has_residual:
      metrics["proximity"] = float(
        rsgd.proximity(state["opt_state"], state["params"], which=view.which)
      )
    results[view.name] = (metrics, params)
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> skeleton.RunResults:
  """Trains and evaluates per ``config``; resumes from ``workdir``'s newest readable checkpoint.

  ``config.optimizer`` is one name or a list of views of one trajectory (``adam,adam-scale,
  adam-sign,adam-topk``: one training, ``<workdir>/<name>/metrics.jsonl`` per view).

  Returns:
    Each view's per-epoch records and, as its final results, its last record (what its
    ``metrics.jsonl`` ends with): :class:`~examples.common.skeleton.RunResults`.
  """
  log_fields = ("train_loss", "val_micro_f1", "test_micro_f1", "proximity")
  run = skeleton.start_run(config, workdir, CONFIG_RANGES, CONFIG_CHOICES, log_fields=log_fields)
  check_batch_size(config)
  tx = build_optimizer(config)
  graph = prepare_graph(config)  # data errors surface before anything is written to workdir
  logger.info(
    "Graph: %d nodes, %d edges, %d classes (%s); %d train clusters, batch pad %d nodes/%d edges.",
    graph.data.num_nodes,
    len(graph.data.edges),
    graph.data.num_classes,
    "multi-label" if graph.data.multilabel else "multi-class",
    len(graph.train.clusters),
    graph.train.max_nodes,
    graph.train.max_edges,
  )
  model = build_model(config, graph)
  model.train()
  train_graphdef, params, _ = nnx.split(model, nnx.Param, ...)
  model.eval()  # no dropout
  eval_graphdef, _, eval_rest = nnx.split(model, nnx.Param, ...)
  eval_rest = nnx.to_pure_dict(eval_rest)
  params = nnx.to_pure_dict(params)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  steps = make_steps(train_graphdef, eval_graphdef, tx, graph.data.multilabel)
  with run.open(state, data=graph.data):
    state = run.state
    for epoch in range(run.start_epoch, config.num_epochs):
      started = time.time()
      state, fields = train_epoch(config, steps, state, model, graph, epoch)
      last = epoch + 1 == config.num_epochs
      if (epoch + 1) % config.eval_every == 0 or last:
        results = evaluate_views(steps, state, eval_rest, graph, run.views)
      else:
        results = {view.name: ({}, None) for view in run.views}
      run.write(
        epoch,
        {name: metrics for name, (metrics, _) in results.items()},
        shared=fields,
        seconds=time.time() - started,
      )
      if (epoch + 1) % config.checkpoint_every == 0 or last:
        run.save(epoch, state, {name: shipped for name, (_, shipped) in results.items()})
  return skeleton.finish(run)
