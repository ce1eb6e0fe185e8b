"""Graph partitioning into clusters for Cluster-GCN.

Cluster-GCN (Chiang et al., 2019) partitions the training graph with METIS so that most edges fall
inside a cluster, then trains on random groups of clusters. METIS comes here through ``pymetis``
(maintained Python bindings that bundle METIS; ``pip install pymetis``). ``method="random"`` is the
Cluster-GCN paper's own baseline (nodes assigned to clusters uniformly at random, so most edges are
cut): useful to see what the clustering buys, and a fallback where ``pymetis`` cannot be installed.
"""

import numpy as np
import scipy.sparse as sp

PARTITION_METHODS = ("metis", "random")


def adjacency(num_nodes: int, edges: np.ndarray) -> sp.csr_matrix:
  """The symmetric 0/1 adjacency (CSR, no self-loops) of undirected ``edges`` ``[E, 2]``."""
  edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
  edges = edges[edges[:, 0] != edges[:, 1]]
  rows = np.concatenate([edges[:, 0], edges[:, 1]])
  cols = np.concatenate([edges[:, 1], edges[:, 0]])
  adj = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(num_nodes, num_nodes))
  adj.sum_duplicates()
  adj.data[:] = 1.0  # repeated edges count once
  return adj


def partition(
  adj: sp.csr_matrix, num_parts: int, *, method: str = "metis", seed: int = 0
) -> list[np.ndarray]:
  """Splits the nodes of ``adj`` into ``num_parts`` clusters.

  Args:
    adj: symmetric adjacency (CSR) of the graph to partition.
    num_parts: number of clusters (``1`` keeps the whole graph together).
    method: ``"metis"`` (pymetis; minimizes the edges cut, balanced sizes) or ``"random"``.
    seed: seed of METIS's randomized coarsening, or of the random assignment.

  Returns:
    ``num_parts`` sorted int32 arrays of node indices; together they hold every node once. A
    cluster may be empty when the graph has fewer nodes than ``num_parts``.

  Raises:
    ValueError: for an unknown method or ``num_parts < 1``.
    ImportError: ``method="metis"`` without pymetis installed (the message says what to do).
  """
  if method not in PARTITION_METHODS:
    raise ValueError(f"Unknown partition method {method!r}; use one of {PARTITION_METHODS}.")
  if num_parts < 1:
    raise ValueError(f"num_parts must be >= 1, got {num_parts}.")
  num_nodes = adj.shape[0]
  if num_parts == 1:
    membership = np.zeros(num_nodes, np.int64)
  elif method == "random":
    membership = np.random.default_rng(seed).permutation(num_nodes) % num_parts
  else:
    membership = _metis(adj, num_parts, seed)
  order = np.argsort(membership, kind="stable")
  bounds = np.searchsorted(membership[order], np.arange(num_parts + 1))
  return [order[bounds[i] : bounds[i + 1]].astype(np.int32) for i in range(num_parts)]


def _metis(adj: sp.csr_matrix, num_parts: int, seed: int) -> np.ndarray:
  try:
    import pymetis
  except ImportError as e:
    raise ImportError(
      "METIS partitioning needs the pymetis package: `pip install pymetis`, or set"
      " config.partition_method = 'random'."
    ) from e
  adj = sp.csr_matrix(adj)
  adj.setdiag(0)  # METIS rejects self-loops
  adj.eliminate_zeros()
  adj.sort_indices()
  graph = pymetis.CSRAdjacency(adj_starts=adj.indptr.astype(np.int64), adjacent=adj.indices)
  _, membership = pymetis.part_graph(num_parts, graph, options=pymetis.Options(seed=seed))
  return np.asarray(membership, dtype=np.int64)
