"""Tests of Cluster-GCN batching against dense NumPy versions of the paper's equations."""

import jax.numpy as jnp
import numpy as np
import pytest

from examples.graph.batching import (
  ClusterBatcher,
  normalized_adjacency,
  precompute_first_layer,
  propagate,
  to_device,
)
from examples.graph.partition import adjacency, partition


def _dense_enhanced(adj: np.ndarray, diag_lambda: float) -> np.ndarray:
  """Cluster-GCN eq. (11) in dense NumPy: (D+I)^-1 (A+I) + lambda diag(that)."""
  a = adj + np.eye(adj.shape[0])
  tilde = a / a.sum(axis=1, keepdims=True)
  return tilde + diag_lambda * np.diag(np.diag(tilde))


@pytest.fixture(scope="module")
def graph():
  rng = np.random.default_rng(0)
  n = 48
  edges = np.array([(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.12])
  adj = adjacency(n, edges)
  features = rng.normal(size=(n, 5)).astype(np.float32)
  labels = (rng.random((n, 3)) < 0.5).astype(np.float32)
  mask = rng.random(n) < 0.7
  # Uneven cluster sizes so that batches differ in true size.
  order = rng.permutation(n)
  clusters = [np.sort(c) for c in np.split(order, [5, 17, 24, 40])]
  return adj, features, labels, mask, clusters


@pytest.mark.parametrize("diag_lambda", [0.0, 1.0, 2.5])
def test_normalized_adjacency_matches_dense(graph, diag_lambda):
  adj = graph[0]
  np.testing.assert_allclose(
    normalized_adjacency(adj, diag_lambda).toarray(),
    _dense_enhanced(adj.toarray(), diag_lambda),
    rtol=1e-6,
  )


def test_precompute_first_layer(graph):
  adj, features = graph[0], graph[1]
  out = precompute_first_layer(adj, features, 1.0)
  expected = np.concatenate([_dense_enhanced(adj.toarray(), 1.0) @ features, features], axis=1)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("group", [[0], [3], [1, 2], [0, 4], [4, 3]])
def test_batch_propagation_is_the_enhanced_adjacency_of_the_induced_subgraph(graph, group):
  adj, features, labels, mask, clusters = graph
  batcher = ClusterBatcher(
    adj, clusters, features, labels, mask, clusters_per_batch=2, diag_lambda=1.5
  )
  batch = batcher.batch(group)
  nodes = np.concatenate([clusters[i] for i in group])
  k = nodes.size
  # The induced subgraph keeps the edges between the group's clusters.
  sub = adj.toarray()[np.ix_(nodes, nodes)]
  expected = _dense_enhanced(sub, 1.5) @ features[nodes]
  out = np.asarray(propagate(jnp.asarray(batch.features), to_device(batch)))
  np.testing.assert_allclose(out[:k], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out[k:], 0.0)
  np.testing.assert_array_equal(batch.labels[:k], labels[nodes])
  np.testing.assert_array_equal(batch.label_mask[:k], mask[nodes])
  np.testing.assert_array_equal(batch.label_mask[k:], 0.0)
  np.testing.assert_array_equal(batch.node_ids[:k], nodes)
  np.testing.assert_array_equal(batch.node_ids[k:], -1)


def test_every_batch_has_the_same_padded_shapes(graph):
  adj, features, labels, mask, clusters = graph
  batcher = ClusterBatcher(adj, clusters, features, labels, mask, clusters_per_batch=2)
  # The bound is the two largest clusters (16 + 12 nodes).
  assert batcher.max_nodes == 28
  shapes, true_sizes, seen = set(), set(), []
  rng = np.random.default_rng(0)
  for _ in range(5):
    for batch in batcher.epoch(rng):
      shapes.add(tuple(x.shape for x in batch))
      true_sizes.add(int((batch.node_ids >= 0).sum()))
      seen.append(np.sort(batch.node_ids[batch.node_ids >= 0]))
  assert len(shapes) == 1 and len(true_sizes) > 1
  # One epoch visits every node once.
  epoch_nodes = np.concatenate(seen[: batcher.num_batches])
  np.testing.assert_array_equal(np.sort(epoch_nodes), np.arange(48))


@pytest.mark.parametrize("max_message_elements", [5, 64, 10**6])
def test_chunked_propagation_matches_dense(graph, max_message_elements):
  adj, features, labels, mask, clusters = graph
  batch = ClusterBatcher(adj, clusters, features, labels, mask, clusters_per_batch=5).batch(
    range(5)
  )
  expected = (
    _dense_enhanced(adj.toarray()[np.ix_(*[batch.node_ids] * 2)], 1.0) @ features[batch.node_ids]
  )
  out = propagate(
    jnp.asarray(batch.features), to_device(batch), max_message_elements=max_message_elements
  )
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def test_raised_padding_keeps_results(graph):
  adj, features, labels, mask, clusters = graph
  batcher = ClusterBatcher(adj, clusters, features, labels, mask)
  small = batcher.batch([1])
  batcher.pad_at_least(100, 1000)
  big = batcher.batch([1])
  assert big.features.shape[0] == 100 and big.senders.shape[0] == 1000
  out_small = np.asarray(propagate(jnp.asarray(small.features), to_device(small)))
  out_big = np.asarray(propagate(jnp.asarray(big.features), to_device(big)))
  np.testing.assert_allclose(out_big[: out_small.shape[0]], out_small, rtol=1e-6)


def test_metis_batches_on_a_real_partition(graph):
  adj, features, labels, mask, _ = graph
  clusters = partition(adj, 6, method="metis", seed=1)
  batcher = ClusterBatcher(adj, clusters, features, labels, mask, clusters_per_batch=3)
  batch = next(batcher.in_order())
  nodes = np.concatenate(clusters[:3])
  sub = adj.toarray()[np.ix_(nodes, nodes)]
  out = np.asarray(propagate(jnp.asarray(batch.features), to_device(batch)))
  np.testing.assert_allclose(
    out[: nodes.size], _dense_enhanced(sub, 1.0) @ features[nodes], rtol=1e-5, atol=1e-6
  )


def test_bad_arguments(graph):
  adj, features, labels, mask, clusters = graph
  with pytest.raises(ValueError, match="clusters_per_batch"):
    ClusterBatcher(adj, clusters, features, labels, mask, clusters_per_batch=6)
  with pytest.raises(ValueError, match="diag_lambda"):
    ClusterBatcher(adj, clusters, features, labels, mask, diag_lambda=-1.0)


def test_precompute_first_layer_with_the_raw_adjacency_as_run_ppi_sh(graph):
  adj, features = graph[0], graph[1]
  out = precompute_first_layer(adj, features, 1.0, adjacency="raw")
  expected = np.concatenate([adj.toarray() @ features, features], axis=1)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="adjacency must be one of"):
    precompute_first_layer(adj, features, 1.0, adjacency="sym")
