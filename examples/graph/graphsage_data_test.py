"""Tests of the GraphSAGE-format loader on small files written in PPI's layout."""

import json
import os
import re

import numpy as np
import pytest

from examples.graph.conftest import write_ppi_like
from examples.graph.graphsage_data import GraphDataError, load_graphsage, write_graphsage


def test_loads_ppi_layout(tiny_ppi):
  directory, arrays = tiny_ppi
  data = load_graphsage(directory, "ppi")
  rows = arrays["rows"]
  assert data.multilabel and data.num_classes == 121 and data.num_nodes == 60
  # Labels land on the feature row id_map names, not on the node id.
  np.testing.assert_array_equal(data.labels[rows], arrays["labels"])
  # Splits (in row space).
  split = arrays["split"]
  np.testing.assert_array_equal(data.val_nodes, np.sort(rows[split == 1]))
  np.testing.assert_array_equal(data.test_nodes, np.sort(rows[split == 2]))
  np.testing.assert_array_equal(data.train_nodes, np.sort(rows[split == 0]))
  # Features standardized with the training nodes' mean and std (NumPy reference).
  raw = arrays["features"]
  train = split == 0
  expected = (raw - raw[train].mean(0)) / raw[train].std(0)
  np.testing.assert_allclose(data.features[rows], expected, rtol=1e-5, atol=1e-5)
  # Edges: each undirected pair once, smaller row first, mapped through id_map.
  expected_edges = {tuple(sorted((rows[s], rows[t]))) for s, t in arrays["edges"]}
  assert {tuple(e) for e in data.edges.tolist()} == expected_edges
  assert (data.edges[:, 0] < data.edges[:, 1]).all()


def test_multiclass_class_map(tmp_path):
  arrays = write_ppi_like(str(tmp_path), "toy", multilabel=False)
  data = load_graphsage(str(tmp_path), "toy")
  assert not data.multilabel and data.num_classes == 3
  np.testing.assert_array_equal(data.labels[arrays["rows"]].argmax(1), arrays["labels"])
  np.testing.assert_array_equal(data.labels.sum(1), 1)


def test_nodes_without_split_flags_are_dropped(tmp_path):
  arrays = write_ppi_like(str(tmp_path))
  path = tmp_path / "ppi-G.json"
  graph = json.loads(path.read_text())
  del graph["nodes"][3]["val"]  # node 3 is a training node; GraphSAGE drops such nodes
  path.write_text(json.dumps(graph))
  data = load_graphsage(str(tmp_path), "ppi")
  dropped_row = arrays["rows"][3]
  assert dropped_row not in data.train_nodes
  assert not np.isin(dropped_row, data.edges).any()
  assert data.train_nodes.size == (arrays["split"] == 0).sum() - 1


def test_write_then_load_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  features = rng.normal(size=(10, 4)).astype(np.float32)
  edges = np.array([[0, 1], [1, 2], [2, 0], [3, 4], [4, 3], [5, 5]])
  labels = rng.integers(0, 2, size=(10, 5))
  split = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
  write_graphsage(str(tmp_path), "rt", features=features, edges=edges, labels=labels, split=split)
  data = load_graphsage(str(tmp_path), "rt")
  np.testing.assert_array_equal(data.labels, labels)
  # Duplicates in either direction collapse, self-loops go.
  assert data.edges.tolist() == [[0, 1], [0, 2], [1, 2], [3, 4]]
  np.testing.assert_array_equal(data.val_nodes, [6, 7])


@pytest.mark.parametrize("missing", ["G.json", "feats.npy", "id_map.json", "class_map.json"])
def test_missing_file_is_named(tmp_path, missing):
  write_ppi_like(str(tmp_path))
  os.remove(tmp_path / f"ppi-{missing}")
  with pytest.raises(GraphDataError, match=re.escape(f"ppi-{missing}")):
    load_graphsage(str(tmp_path), "ppi")


def test_truncated_json_is_named(tmp_path):
  write_ppi_like(str(tmp_path))
  path = tmp_path / "ppi-class_map.json"
  path.write_text(path.read_text()[:50])
  with pytest.raises(GraphDataError, match=r"ppi-class_map\.json.*not valid JSON.*good copy"):
    load_graphsage(str(tmp_path), "ppi")


def test_truncated_features_are_named_with_how_to_get_a_good_copy(tmp_path):
  write_ppi_like(str(tmp_path))
  path = tmp_path / "ppi-feats.npy"
  path.write_bytes(path.read_bytes()[:-7])
  with pytest.raises(GraphDataError, match=r"ppi-feats\.npy .*corrupt or truncated.*good copy"):
    load_graphsage(str(tmp_path), "ppi")


def test_pickled_features_are_refused(tmp_path):
  write_ppi_like(str(tmp_path))
  objects = np.empty((60, 2), dtype=object)
  objects[:] = "x"
  np.save(tmp_path / "ppi-feats.npy", objects, allow_pickle=True)
  with pytest.raises(GraphDataError, match=r"ppi-feats\.npy"):
    load_graphsage(str(tmp_path), "ppi")


def test_features_of_wrong_shape(tmp_path):
  write_ppi_like(str(tmp_path))
  np.save(tmp_path / "ppi-feats.npy", np.zeros(60, np.float32))
  with pytest.raises(GraphDataError, match="2-D"):
    load_graphsage(str(tmp_path), "ppi")


def test_id_map_beyond_feature_rows(tmp_path):
  write_ppi_like(str(tmp_path))
  np.save(tmp_path / "ppi-feats.npy", np.zeros((30, 8), np.float32))
  with pytest.raises(GraphDataError, match="different datasets"):
    load_graphsage(str(tmp_path), "ppi")


def test_bad_class_map_values(tmp_path):
  write_ppi_like(str(tmp_path))
  path = tmp_path / "ppi-class_map.json"
  class_map = json.loads(path.read_text())
  class_map["0"] = [2] * 121
  path.write_text(json.dumps(class_map))
  with pytest.raises(GraphDataError, match="only 0 and 1"):
    load_graphsage(str(tmp_path), "ppi")


def test_graph_without_links(tmp_path):
  write_ppi_like(str(tmp_path))
  path = tmp_path / "ppi-G.json"
  graph = json.loads(path.read_text())
  del graph["links"]
  path.write_text(json.dumps(graph))
  with pytest.raises(GraphDataError, match=r"ppi-G\.json.*'links'"):
    load_graphsage(str(tmp_path), "ppi")
