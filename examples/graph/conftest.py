"""Fixtures for the graph example's tests: tiny graphs written in PPI's exact GraphSAGE file layout."""

import json
import os

import numpy as np
import pytest


def write_ppi_like(
  directory: str,
  prefix: str = "ppi",
  *,
  num_nodes: int = 60,
  num_features: int = 8,
  num_labels: int = 121,
  multilabel: bool = True,
  seed: int = 0,
) -> dict:
  """Writes a small graph the way the GraphSAGE PPI files are laid out, and returns its arrays.

  Like ``ppi-G.json`` it holds node-link JSON whose nodes carry ``id``, ``val``, ``test`` (plus the
  ``feature``/``label`` copies PPI has) and whose links carry ``train_removed``/``test_removed``;
  ``ppi-id_map.json`` maps string ids to feature rows (here rows are shuffled, so a loader that
  assumes row == id fails); ``ppi-class_map.json`` maps string ids to 0/1 lists (or to ints).
  Nodes ``0..`` form three communities with dense inner and sparse outer links. The split: every
  fifth node val, every fifth (offset 1) test, the rest train.
  """
  rng = np.random.default_rng(seed)
  community = np.arange(num_nodes) % 3
  pairs = []
  for i in range(num_nodes):
    for j in range(i + 1, num_nodes):
      p = 0.3 if community[i] == community[j] else 0.02
      if rng.random() < p:
        pairs.append((i, j))
  features = rng.normal(size=(num_nodes, num_features)).astype(np.float32) * 3 + 1
  features[:, 0] += community  # a feature that predicts the community
  if multilabel:
    labels = (rng.random((num_nodes, num_labels)) < 0.3).astype(int)
    labels[:, 0] = community == 0
  else:
    labels = community.copy()
  split = np.zeros(num_nodes, int)
  split[np.arange(num_nodes) % 5 == 0] = 1
  split[np.arange(num_nodes) % 5 == 1] = 2
  rows = rng.permutation(num_nodes)  # node i's features live in row rows[i]
  feats_rows = np.zeros_like(features)
  feats_rows[rows] = features
  nodes = [
    {
      "test": bool(split[i] == 2),
      "id": i,
      "feature": features[i].tolist(),
      "val": bool(split[i] == 1),
      "label": labels[i].tolist() if multilabel else [int(labels[i])],
    }
    for i in range(num_nodes)
  ]
  links = [
    {"test_removed": False, "train_removed": bool(split[s] or split[t]), "target": t, "source": s}
    for s, t in pairs
  ]
  graph = {
    "directed": False,
    "graph": {"name": "disjoint_union( ,  )"},
    "nodes": nodes,
    "links": links,
    "multigraph": False,
  }
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, f"{prefix}-G.json"), "w") as f:
    json.dump(graph, f)
  with open(os.path.join(directory, f"{prefix}-id_map.json"), "w") as f:
    json.dump({str(i): int(rows[i]) for i in range(num_nodes)}, f)
  with open(os.path.join(directory, f"{prefix}-class_map.json"), "w") as f:
    if multilabel:
      json.dump({str(i): labels[i].tolist() for i in range(num_nodes)}, f)
    else:
      json.dump({str(i): int(labels[i]) for i in range(num_nodes)}, f)
  np.save(os.path.join(directory, f"{prefix}-feats.npy"), feats_rows)
  return {
    "features": features,
    "labels": labels,
    "split": split,
    "edges": np.array(pairs, dtype=np.int64).reshape(-1, 2),
    "rows": rows,
  }


@pytest.fixture
def tiny_ppi(tmp_path):
  """A multi-label (121 labels) PPI-format graph in ``tmp_path``; returns (dir, arrays)."""
  arrays = write_ppi_like(str(tmp_path))
  return str(tmp_path), arrays
