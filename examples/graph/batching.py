"""Cluster-GCN mini-batches: random groups of clusters, normalized and padded to fixed shapes.

One batch is the subgraph induced by the union of ``clusters_per_batch`` clusters, so the edges
between the chosen clusters come back (the paper's "stochastic multiple partitions"). Its adjacency
is normalized with the diagonal enhancement of Cluster-GCN (Chiang et al., 2019, eq. 11):

.. math::

  \\tilde A = (D + I)^{-1} (A + I), \\qquad \\hat A = \\tilde A + \\lambda \\operatorname{diag}(\\tilde A)

where ``D`` counts each node's neighbours inside the batch. ``\\hat A h`` is computed as a segment
sum over edges (``jax.ops.segment_sum``) plus a per-node self term. Every batch is padded to the
same number of nodes and edges (bounds from the largest clusters), so the jitted step compiles once.
"""

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp


class GraphBatch(NamedTuple):
  """A padded subgraph; padding nodes have zero features and mask, padding edges zero weight.

  Attributes:
    features: float32 ``[max_nodes, F]`` input features of the batch's nodes.
    senders: int32 ``[max_edges]``: the neighbour ``j`` of each normalized entry ``A_ij``.
    receivers: int32 ``[max_edges]``: the row ``i`` that entry adds into.
    edge_weights: float32 ``[max_edges]``: ``\\hat A_ij`` (0 on padding).
    self_weights: float32 ``[max_nodes]``: ``\\hat A_ii`` (0 on padding).
    labels: float32 ``[max_nodes, C]`` multi-hot or one-hot labels.
    label_mask: float32 ``[max_nodes]``: 1 for nodes whose loss and metrics count.
    node_ids: int32 ``[max_nodes]``: each row's node index in the whole graph (-1 on padding).
  """

  features: np.ndarray
  senders: np.ndarray
  receivers: np.ndarray
  edge_weights: np.ndarray
  self_weights: np.ndarray
  labels: np.ndarray
  label_mask: np.ndarray
  node_ids: np.ndarray


def _check_lambda(diag_lambda: float) -> None:
  if diag_lambda < 0:
    raise ValueError(f"diag_lambda must be >= 0 (0: no enhancement), got {diag_lambda}.")


def normalized_adjacency(adj: sp.spmatrix, diag_lambda: float) -> sp.csr_matrix:
  """``\\hat A = \\tilde A + \\lambda diag(\\tilde A)``, ``\\tilde A = (D+I)^{-1}(A+I)`` (CSR)."""
  _check_lambda(diag_lambda)
  adj = sp.csr_matrix(adj, dtype=np.float32)
  n = adj.shape[0]
  with_self = adj + sp.eye(n, dtype=np.float32, format="csr")
  inv_degree = 1.0 / np.asarray(with_self.sum(axis=1)).ravel()
  normalized = sp.diags(inv_degree) @ with_self
  return sp.csr_matrix(normalized + diag_lambda * sp.diags(normalized.diagonal()))


PRECALC_ADJACENCIES = ("raw", "normalized")


def precompute_first_layer(
  adj: sp.spmatrix, features: np.ndarray, diag_lambda: float, *, adjacency: str = "normalized"
) -> np.ndarray:
  """``[M X, X]``: the first layer's aggregation done once on the whole graph.

  The public Cluster-GCN code's ``precalc`` option. ``adjacency="raw"`` multiplies by the raw
  adjacency ``M = A`` (no self-loops, no normalization), as the public code (``utils.preprocess``,
  run by ``run_ppi.sh``) does; ``"normalized"`` by ``M = \\hat A``, the diagonally enhanced
  normalized adjacency, so the input scale does not grow with the degree.
  """
  if adjacency not in PRECALC_ADJACENCIES:
    raise ValueError(f"adjacency must be one of {PRECALC_ADJACENCIES}, got {adjacency!r}.")
  matrix = sp.csr_matrix(adj) if adjacency == "raw" else normalized_adjacency(adj, diag_lambda)
  aggregated = matrix @ features
  return np.concatenate([aggregated, features], axis=1).astype(np.float32)


# Above this many message entries (edges x width), edges are aggregated in chunks: evaluating the
# paper's model on all of PPI at once would otherwise hold 1.6M edges x 2048 floats (13 GB).
MAX_MESSAGE_ELEMENTS = 2**27


def propagate(
  h: jax.Array, batch: GraphBatch, *, max_message_elements: int = MAX_MESSAGE_ELEMENTS
) -> jax.Array:
  """``\\hat A h`` for the batch's padded graph: a segment sum over edges plus the self term.

  The messages ``w_e h[sender_e]`` of at most ``max_message_elements // width`` edges exist at a
  time; larger graphs are summed chunk by chunk in a ``lax.scan`` (same result, bounded memory).
  """
  num_nodes, width = h.shape
  senders, receivers = batch.senders, batch.receivers
  weights = batch.edge_weights.astype(h.dtype)

  def aggregate(senders: jax.Array, receivers: jax.Array, weights: jax.Array) -> jax.Array:
    messages = h[senders] * weights[:, None]
    return jax.ops.segment_sum(messages, receivers, num_segments=num_nodes)

  chunk = max(1, max_message_elements // width)
  num_edges = senders.shape[0]
  if num_edges <= chunk:
    aggregated = aggregate(senders, receivers, weights)
  else:
    num_chunks = -(-num_edges // chunk)
    pad = num_chunks * chunk - num_edges  # zero-weight edges into node 0 change nothing

    def chunks(x: jax.Array) -> jax.Array:
      return jnp.pad(x, (0, pad)).reshape(num_chunks, chunk)

    def body(total: jax.Array, edges: tuple[jax.Array, ...]) -> tuple[jax.Array, None]:
      return total + aggregate(*edges), None

    aggregated, _ = jax.lax.scan(
      body, jnp.zeros_like(h), (chunks(senders), chunks(receivers), chunks(weights))
    )
  return aggregated + batch.self_weights[:, None].astype(h.dtype) * h


class ClusterBatcher:
  """Builds padded :class:`GraphBatch` es from groups of clusters of one graph.

  Args:
    adj: symmetric 0/1 adjacency (CSR) of the graph the clusters partition.
    clusters: node-index arrays from :func:`examples.graph.partition.partition`.
    features: ``[N, F]`` per-node inputs (e.g. :func:`precompute_first_layer` output).
    labels: ``[N, C]`` labels.
    label_mask: ``[N]`` bool: the nodes whose loss/metrics count (training or held-out nodes).
    node_ids: ``[N]`` each node's index in the whole graph (default: ``arange(N)``).
    clusters_per_batch: how many clusters make one batch.
    diag_lambda: the diagonal enhancement ``lambda`` (``>= 0``).
  """

  def __init__(
    self,
    adj: sp.csr_matrix,
    clusters: Sequence[np.ndarray],
    features: np.ndarray,
    labels: np.ndarray,
    label_mask: np.ndarray,
    *,
    node_ids: np.ndarray | None = None,
    clusters_per_batch: int = 1,
    diag_lambda: float = 1.0,
  ):
    _check_lambda(diag_lambda)
    if not 1 <= clusters_per_batch <= len(clusters):
      raise ValueError(
        f"clusters_per_batch must be in [1, {len(clusters)}] (the number of clusters), got"
        f" {clusters_per_batch}."
      )
    self.adj = sp.csr_matrix(adj)
    self.clusters = [np.asarray(c, dtype=np.int64) for c in clusters]
    self.features = np.asarray(features, np.float32)
    self.labels = np.asarray(labels, np.float32)
    self.label_mask = np.asarray(label_mask, bool)
    n = self.adj.shape[0]
    self.node_ids = np.arange(n, dtype=np.int32) if node_ids is None else np.asarray(node_ids)
    self.clusters_per_batch = clusters_per_batch
    self.diag_lambda = diag_lambda
    # Padding bounds: a batch is at most the k largest clusters, and its (directed) edges are at
    # most the sum of its nodes' degrees in the whole graph.
    degree = np.diff(self.adj.indptr)
    sizes = sorted((c.size for c in self.clusters), reverse=True)
    volumes = sorted((int(degree[c].sum()) for c in self.clusters), reverse=True)
    self.max_nodes = max(1, sum(sizes[:clusters_per_batch]))
    self.max_edges = max(1, sum(volumes[:clusters_per_batch]))

  def pad_at_least(self, max_nodes: int, max_edges: int) -> None:
    """Raises the padding bounds (never lowers them): batchers sharing bounds share one compile."""
    self.max_nodes = max(self.max_nodes, max_nodes)
    self.max_edges = max(self.max_edges, max_edges)

  @property
  def num_batches(self) -> int:
    """Batches per pass over the clusters (the last group may hold fewer clusters)."""
    return -(-len(self.clusters) // self.clusters_per_batch)

  def batch(self, cluster_ids: Sequence[int]) -> GraphBatch:
    """The padded batch made of clusters ``cluster_ids``."""
    nodes = np.concatenate([self.clusters[i] for i in cluster_ids])
    if nodes.size > self.max_nodes:
      raise ValueError(f"{nodes.size} nodes exceed the padding bound {self.max_nodes}.")
    sub = self.adj[nodes][:, nodes].tocoo()
    keep = sub.row != sub.col
    rows, cols = sub.row[keep], sub.col[keep]
    inv_degree = 1.0 / (np.bincount(rows, minlength=nodes.size) + 1.0)
    if rows.size > self.max_edges:
      raise ValueError(f"{rows.size} edges exceed the padding bound {self.max_edges}.")

    def pad(array: np.ndarray, length: int, value: float = 0) -> np.ndarray:
      out = np.full((length, *array.shape[1:]), value, dtype=array.dtype)
      out[: array.shape[0]] = array
      return out

    return GraphBatch(
      features=pad(self.features[nodes], self.max_nodes),
      senders=pad(cols.astype(np.int32), self.max_edges),
      receivers=pad(rows.astype(np.int32), self.max_edges),
      edge_weights=pad(inv_degree[rows].astype(np.float32), self.max_edges),
      self_weights=pad(((1.0 + self.diag_lambda) * inv_degree).astype(np.float32), self.max_nodes),
      labels=pad(self.labels[nodes], self.max_nodes),
      label_mask=pad(self.label_mask[nodes].astype(np.float32), self.max_nodes),
      node_ids=pad(self.node_ids[nodes].astype(np.int32), self.max_nodes, -1),
    )

  def epoch(self, rng: np.random.Generator) -> Iterator[GraphBatch]:
    """One pass over all clusters in random groups of ``clusters_per_batch``."""
    order = rng.permutation(len(self.clusters))
    for start in range(0, len(order), self.clusters_per_batch):
      yield self.batch(order[start : start + self.clusters_per_batch])

  def in_order(self) -> Iterator[GraphBatch]:
    """One pass over the clusters in a fixed order (for evaluation)."""
    for start in range(0, len(self.clusters), self.clusters_per_batch):
      yield self.batch(range(start, min(start + self.clusters_per_batch, len(self.clusters))))


def to_device(batch: GraphBatch) -> GraphBatch:
  """The batch as JAX arrays (one transfer per field)."""
  return GraphBatch(*(jnp.asarray(x) for x in batch))
