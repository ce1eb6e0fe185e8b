"""Tests of the METIS (pymetis) and random partitioners."""

import numpy as np
import pytest

from examples.graph.partition import adjacency, partition


def _cliques(num_cliques: int, size: int) -> np.ndarray:
  edges = []
  for c in range(num_cliques):
    base = c * size
    edges += [(base + i, base + j) for i in range(size) for j in range(i + 1, size)]
    edges.append((base, ((c + 1) % num_cliques) * size))  # one bridge to the next clique
  return np.array(edges)


def test_adjacency_is_symmetric_binary_without_self_loops():
  adj = adjacency(4, np.array([[0, 1], [1, 0], [2, 2], [2, 3]])).toarray()
  expected = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
  np.testing.assert_array_equal(adj, expected)


def test_metis_separates_weakly_linked_cliques():
  adj = adjacency(40, _cliques(4, 10))
  parts = partition(adj, 4, method="metis", seed=0)
  assert sorted(tuple(np.unique(p // 10).tolist()) for p in parts) == [(0,), (1,), (2,), (3,)]
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(40))


@pytest.mark.parametrize("method", ["metis", "random"])
@pytest.mark.parametrize("num_parts", [1, 3, 7])
def test_every_node_exactly_once(method, num_parts):
  adj = adjacency(50, _cliques(5, 10))
  parts = partition(adj, num_parts, method=method, seed=3)
  assert len(parts) == num_parts
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(50))
  assert all(p.dtype == np.int32 and np.all(np.diff(p) > 0) for p in parts if p.size > 1)


def test_random_partition_is_balanced_and_seeded():
  adj = adjacency(30, _cliques(3, 10))
  first = partition(adj, 3, method="random", seed=5)
  again = partition(adj, 3, method="random", seed=5)
  assert [p.size for p in first] == [10, 10, 10]
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a, b)


def test_bad_arguments():
  adj = adjacency(4, np.array([[0, 1]]))
  with pytest.raises(ValueError, match="Unknown partition method"):
    partition(adj, 2, method="kmeans")
  with pytest.raises(ValueError, match="num_parts"):
    partition(adj, 0)
