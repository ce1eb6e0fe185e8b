"""Cluster-GCN training with Adam/SGDm, with or without residuals (paper, section 7.1).

``train_and_evaluate(config, workdir)`` loads a GraphSAGE-format graph, partitions its training
subgraph into clusters, trains a :class:`~examples.graph.models.ClusterGCN` on random groups of
clusters, and after every ``eval_every`` epochs scores the RSGD point ``x = y + r``
(``rsgd.eval_params``) on the validation and test nodes of the whole graph. It writes
``config.json``, ``metrics.jsonl`` (one line per epoch) and TensorBoard scalars into ``workdir``,
and an Orbax checkpoint per ``checkpoint_every`` epochs, from which a rerun resumes.

The setting is inductive, as in the Cluster-GCN and GraphSAGE PPI experiments: training sees only
the graph induced by the training nodes; evaluation runs on the whole graph.
"""

import collections
import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

import rsgd_optax as rsgd
from examples.common.checkpoint import Checkpointer, abstract_like
from examples.common.metrics import MetricsWriter
from examples.common.nonfinite import check_losses
from examples.common.optimizers import has_residual, make_optimizer
from examples.common.report import CONFIG_FILE
from examples.graph import batching, partition, scores
from examples.graph.graphsage_data import GraphData, load_graphsage
from examples.graph.models import ClusterGCN

# How many times each jitted function was traced (= compiled). Padding keeps it at one per function.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


@dataclasses.dataclass
class PreparedGraph:
  """A loaded graph with its training batcher and one evaluation batcher per held-out split."""

  data: GraphData
  train: batching.ClusterBatcher
  evaluation: dict[str, batching.ClusterBatcher]
  in_features: int


def _validate(config: ml_collections.ConfigDict) -> None:
  checks = {
    "num_layers": config.num_layers >= 1,
    "hidden": config.hidden >= 1,
    "num_epochs": config.num_epochs >= 1,
    "eval_every": config.eval_every >= 1,
    "checkpoint_every": config.checkpoint_every >= 1,
    "num_clusters": config.num_clusters >= 1,
    "num_clusters_val": config.num_clusters_val >= 1,
    "num_clusters_test": config.num_clusters_test >= 1,
    "clusters_per_batch": 1 <= config.clusters_per_batch <= config.num_clusters,
    "dropout": 0.0 <= config.dropout < 1.0,
    "diag_lambda": config.diag_lambda >= 0,
    "learning_rate": config.learning_rate > 0,
    "partition_method": config.partition_method in partition.PARTITION_METHODS,
  }
  bad = [name for name, ok in checks.items() if not ok]
  if bad:
    values = ", ".join(f"{name}={config[name]!r}" for name in bad)
    raise ValueError(f"Invalid config value(s): {values}. See examples/graph/configs/ppi.py.")


def prepare_graph(config: ml_collections.ConfigDict) -> PreparedGraph:
  """Loads the dataset, partitions it and builds the padded batchers."""
  data = load_graphsage(config.data_dir, config.dataset)
  full_adj = partition.adjacency(data.num_nodes, data.edges)
  train_nodes = data.train_nodes
  train_adj = full_adj[train_nodes][:, train_nodes]
  if config.precalc:
    train_inputs = batching.precompute_first_layer(
      train_adj, data.features[train_nodes], config.diag_lambda
    )
    full_inputs = batching.precompute_first_layer(full_adj, data.features, config.diag_lambda)
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
  return make_optimizer(
    config.optimizer,
    config.learning_rate,
    momentum=config.momentum,
    weight_decay=config.weight_decay,
    alpha=config.alpha,
    topk_fraction=config.topk_fraction,
  )


@nnx.jit(static_argnames="multilabel")
def train_step(
  model: ClusterGCN, optimizer: nnx.Optimizer, batch: batching.GraphBatch, multilabel: bool
) -> jax.Array:
  """One optimizer step on one cluster batch; returns the batch's training loss."""
  TRACE_COUNTS["train_step"] += 1

  def loss_fn(model: ClusterGCN) -> jax.Array:
    return scores.masked_loss(model(batch), batch.labels, batch.label_mask, multilabel=multilabel)

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


@jax.jit
def _predict(graphdef: nnx.GraphDef, state: nnx.State, batch: batching.GraphBatch) -> jax.Array:
  TRACE_COUNTS["predict"] += 1
  return nnx.merge(graphdef, state)(batch)


def eval_params(model: ClusterGCN, optimizer: nnx.Optimizer, name: str) -> nnx.State:
  """The parameters to evaluate and ship: the RSGD point ``x = y + r`` (``y`` without residual)."""
  params = nnx.state(model, nnx.Param)
  if has_residual(name):
    params = rsgd.eval_params(optimizer.opt_state, params)
  return params


def eval_state(model: ClusterGCN, optimizer: nnx.Optimizer, name: str) -> nnx.State:
  """The model's whole state with its parameters replaced by :func:`eval_params`."""
  rest = nnx.state(model, nnx.Not(nnx.Param))
  return nnx.merge_state(rest, eval_params(model, optimizer, name))


def evaluate(
  model: ClusterGCN,
  state: nnx.State,
  batcher: batching.ClusterBatcher,
  multilabel: bool,
) -> dict[str, float]:
  """Loss, micro-F1 and accuracy of ``state``'s model on ``batcher``'s masked nodes."""
  eval_model = nnx.clone(model)
  eval_model.eval()  # no dropout
  graphdef, _ = nnx.split(eval_model)
  logits, labels = [], []
  for batch in batcher.in_order():
    keep = batch.label_mask > 0
    if not keep.any():
      continue
    out = np.asarray(_predict(graphdef, state, batching.to_device(batch)))
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


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates per ``config``; resumes from ``workdir``'s latest checkpoint.

  Returns:
    The last epoch's metrics record (what ``metrics.jsonl`` ends with).
  """
  _validate(config)
  build_optimizer(config)  # fails fast on an unknown optimizer name or a bad hyperparameter
  graph = prepare_graph(config)  # data errors surface before anything is written to workdir
  logging.info(
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
  optimizer = nnx.Optimizer(model, build_optimizer(config), wrt=nnx.Param)
  multilabel = graph.data.multilabel

  os.makedirs(workdir, exist_ok=True)
  _write_config(config, workdir)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  start_epoch = 0
  latest = checkpointer.latest_epoch()
  if latest is not None:
    template = _checkpoint_state(model, optimizer, config.optimizer)
    restored = checkpointer.restore(abstract_like(template))
    nnx.update(model, restored["params"])
    nnx.update(optimizer, restored["optimizer"])
    start_epoch = latest + 1
    logging.info("Resumed from the checkpoint of epoch %d.", latest)

  with checkpointer, MetricsWriter(workdir, resume_epoch=latest) as writer:
    record: dict[str, Any] = writer.records[-1] if writer.records else {}
    for epoch in range(start_epoch, config.num_epochs):
      # Per-epoch randomness derives from (seed, epoch), so a resumed run repeats it exactly.
      rng = np.random.default_rng([config.seed, epoch])
      nnx.reseed(model, dropout=int(rng.integers(2**31)))
      model.train()
      started = time.perf_counter()
      losses = [
        train_step(model, optimizer, batching.to_device(batch), multilabel)
        for batch in graph.train.epoch(rng)
      ]
      losses_np = np.asarray(jax.device_get(losses))
      check_losses(losses_np, epoch=epoch, first_step=epoch * graph.train.num_batches)
      record = {
        "epoch": epoch,
        "step": (epoch + 1) * graph.train.num_batches,
        "train_loss": float(losses_np.mean()),
        "epoch_time_s": time.perf_counter() - started,
      }
      if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.num_epochs:
        state = eval_state(model, optimizer, config.optimizer)
        for split, batcher in graph.evaluation.items():
          for key, value in evaluate(model, state, batcher, multilabel).items():
            record[f"{split}_{key}"] = value
        if has_residual(config.optimizer):
          record["proximity"] = float(
            rsgd.proximity(optimizer.opt_state, nnx.state(model, nnx.Param))
          )
      writer.write(record)
      logging.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in record.items()})
      if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.num_epochs:
        checkpointer.save(epoch, _checkpoint_state(model, optimizer, config.optimizer))
  return record


def _checkpoint_state(model: ClusterGCN, optimizer: nnx.Optimizer, name: str) -> dict[str, Any]:
  """What a checkpoint holds: ``y`` and the optimizer state (to resume) and ``x`` (to ship)."""
  return {
    "params": nnx.state(model, nnx.Param),
    "optimizer": nnx.state(optimizer),
    "eval_params": eval_params(model, optimizer, name),
  }
