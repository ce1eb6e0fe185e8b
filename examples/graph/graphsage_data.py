"""Reads (and writes) node-classification graphs in the GraphSAGE file format.

PPI, Reddit and the other GraphSAGE/Cluster-GCN datasets ship as four files sharing a prefix:

* ``<prefix>-G.json``: the graph in networkx's node-link JSON: ``{"nodes": [{"id": ..., "val": bool,
  "test": bool, ...}], "links": [{"source": ..., "target": ...}], ...}``. A node flagged ``val`` or
  ``test`` belongs to that split; every other node is a training node.
* ``<prefix>-feats.npy``: the node features, a 2-D NumPy array (row ``id_map[id]`` is node ``id``).
* ``<prefix>-id_map.json``: ``{"<node id>": row}``.
* ``<prefix>-class_map.json``: ``{"<node id>": [0, 1, ...]}`` (multi-label, PPI's 121 labels) or
  ``{"<node id>": class}`` (multi-class, Reddit's 41 classes).

Links are read as pairs of node ids (networkx >= 2). PPI's files were written by networkx 1.x, whose
links hold node *positions*; PPI's ids are ``0..N-1`` in node order, so both readings agree there.

Preprocessing follows the public Cluster-GCN code: nodes without both ``val`` and ``test`` flags are
dropped (GraphSAGE's own loader does the same: a networkx-versioning artefact in the PPI files), the
graph is made undirected without self-loops, and the features are standardized with the mean and
standard deviation of the training nodes (a model must not see statistics of held-out nodes).
"""

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from examples.common.errors import DataError


class GraphDataError(DataError):
  """A GraphSAGE file is missing or malformed; the message names the file and what to do."""


@dataclasses.dataclass(frozen=True)
class GraphData:
  """A node-classification graph, nodes numbered ``0..num_nodes-1`` (the feature rows).

  Attributes:
    features: float32 ``[num_nodes, num_features]``, standardized with training-node statistics.
    labels: float32 ``[num_nodes, num_classes]``: multi-hot (multi-label) or one-hot (multi-class).
    multilabel: whether a node may carry several labels (sigmoid loss) or exactly one (softmax).
    edges: int32 ``[num_edges, 2]``, each undirected edge once with ``edges[:, 0] < edges[:, 1]``.
    train_nodes, val_nodes, test_nodes: sorted int32 node indices of each split.
  """

  features: np.ndarray
  labels: np.ndarray
  multilabel: bool
  edges: np.ndarray
  train_nodes: np.ndarray
  val_nodes: np.ndarray
  test_nodes: np.ndarray

  @property
  def num_nodes(self) -> int:
    return self.features.shape[0]

  @property
  def num_classes(self) -> int:
    return self.labels.shape[1]


def file_paths(data_dir: str, prefix: str) -> dict[str, str]:
  """The four file paths of dataset ``prefix`` in ``data_dir`` (e.g. ``ppi`` -> ``ppi-G.json``)."""
  return {
    kind: os.path.join(data_dir, f"{prefix}-{kind}")
    for kind in ("G.json", "feats.npy", "id_map.json", "class_map.json")
  }


# Said with every corrupt or truncated file: the files carry no checksum, so a good copy is the fix.
GET_A_GOOD_COPY = (
  "Replace it with a good copy: extract the dataset's archive again (PPI: ppi.zip of the GraphSAGE "
  "data), or rerun the converter that wrote it (python -m examples.graph.wordnet)."
)


def _read_json(path: str) -> Any:
  if not os.path.exists(path):
    raise GraphDataError(
      f"Missing file {path}. A GraphSAGE dataset needs <prefix>-G.json, -feats.npy, -id_map.json"
      " and -class_map.json in one directory; check config.data_dir and config.dataset."
    )
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise GraphDataError(
      f"{path} is not valid JSON ({e}); the file is corrupt or truncated. {GET_A_GOOD_COPY}"
    ) from e


def _parse_key(key: str, numeric: bool) -> Any:
  return int(key) if numeric else key


def load_graphsage(data_dir: str, prefix: str) -> GraphData:
  """Loads ``<data_dir>/<prefix>-{G.json,feats.npy,id_map.json,class_map.json}``.

  Args:
    data_dir: the directory holding the four files.
    prefix: the dataset name the files start with, e.g. ``"ppi"``.

  Returns:
    The graph as :class:`GraphData`.

  Raises:
    GraphDataError: a file is missing, is not valid JSON/NumPy, or disagrees with the others (the
      message names the file).
  """
  paths = file_paths(data_dir, prefix)
  graph = _read_json(paths["G.json"])
  if not isinstance(graph, Mapping) or not isinstance(graph.get("nodes"), list):
    raise GraphDataError(f"{paths['G.json']}: expected node-link JSON with a 'nodes' list.")
  links = graph.get("links", graph.get("edges"))
  if not isinstance(links, list):
    raise GraphDataError(f"{paths['G.json']}: expected node-link JSON with a 'links' list.")

  id_map_raw = _read_json(paths["id_map.json"])
  class_map_raw = _read_json(paths["class_map.json"])
  for name, value in (("id_map.json", id_map_raw), ("class_map.json", class_map_raw)):
    if not isinstance(value, Mapping) or not value:
      raise GraphDataError(f"{paths[name]}: expected a non-empty JSON object keyed by node id.")
  # JSON keys are strings; node ids are ints when every key looks like one (GraphSAGE's rule).
  numeric = all(str(k).lstrip("-").isdigit() for k in id_map_raw)
  try:
    id_map = {_parse_key(k, numeric): int(v) for k, v in id_map_raw.items()}
  except (TypeError, ValueError) as e:
    raise GraphDataError(
      f"{paths['id_map.json']}: every value must be an integer row ({e})."
    ) from e

  features = _load_features(paths["feats.npy"])
  num_rows = features.shape[0]
  rows = np.fromiter(id_map.values(), dtype=np.int64, count=len(id_map))
  if rows.min() < 0 or rows.max() >= num_rows:
    raise GraphDataError(
      f"{paths['id_map.json']} maps nodes to rows outside 0..{num_rows - 1}, the rows of"
      f" {paths['feats.npy']}: the files belong to different datasets."
    )
  if len(set(rows.tolist())) != len(rows):
    raise GraphDataError(f"{paths['id_map.json']}: two node ids map to the same feature row.")

  # Splits. Nodes without both flags, or without a feature row, are dropped as GraphSAGE does.
  split = np.full(num_rows, -1, dtype=np.int8)  # -1 absent, 0 train, 1 val, 2 test
  dropped = 0
  for node in graph["nodes"]:
    if not isinstance(node, Mapping) or "id" not in node:
      raise GraphDataError(f"{paths['G.json']}: every node needs an 'id' field, got {node!r}.")
    if "val" not in node or "test" not in node or node["id"] not in id_map:
      dropped += 1
      continue
    split[id_map[node["id"]]] = 1 if node["val"] else 2 if node["test"] else 0
  if dropped:
    logging.warning("%s: dropped %d nodes without val/test flags or id_map entry.", prefix, dropped)
  present = split >= 0
  if not present.any():
    raise GraphDataError(f"{paths['G.json']}: no node has 'val'/'test' flags and an id_map entry.")

  labels, multilabel = _labels(class_map_raw, id_map, numeric, num_rows, paths["class_map.json"])
  missing_labels = present & ~labels.any(axis=1) if not multilabel else np.zeros_like(present)
  if missing_labels.any():
    raise GraphDataError(
      f"{paths['class_map.json']} has no class for {int(missing_labels.sum())} nodes of the graph."
    )

  edges = _edges(links, id_map, present, paths["G.json"])
  train = np.flatnonzero(split == 0).astype(np.int32)
  if train.size == 0:
    raise GraphDataError(f"{paths['G.json']}: every node is flagged val or test; nothing to train.")
  features = _standardize(features, train)
  return GraphData(
    features=features,
    labels=labels,
    multilabel=multilabel,
    edges=edges,
    train_nodes=train,
    val_nodes=np.flatnonzero(split == 1).astype(np.int32),
    test_nodes=np.flatnonzero(split == 2).astype(np.int32),
  )


def _load_features(path: str) -> np.ndarray:
  if not os.path.exists(path):
    raise GraphDataError(f"Missing file {path} (the node features, a 2-D .npy array).")
  try:
    # allow_pickle=False: an .npy file from elsewhere must not be able to run code.
    features = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise GraphDataError(
      f"{path} is not a readable .npy array of numbers ({e}); the file is corrupt or truncated. "
      f"{GET_A_GOOD_COPY}"
    ) from e
  if features.ndim != 2 or not np.issubdtype(features.dtype, np.number):
    raise GraphDataError(
      f"{path}: expected a 2-D numeric array, got shape {features.shape}, dtype {features.dtype}."
    )
  features = features.astype(np.float32)
  if not np.isfinite(features).all():
    raise GraphDataError(f"{path} contains NaN or infinite features.")
  return features


def _labels(
  class_map: Mapping[str, Any], id_map: Mapping[Any, int], numeric: bool, num_rows: int, path: str
) -> tuple[np.ndarray, bool]:
  first = next(iter(class_map.values()))
  multilabel = isinstance(first, list)
  try:
    if multilabel:
      num_classes = len(first)
      labels = np.zeros((num_rows, num_classes), np.float32)
      for key, value in class_map.items():
        node = _parse_key(key, numeric)
        if node in id_map:
          labels[id_map[node]] = np.asarray(value, dtype=np.float32)
      if not np.isin(labels, (0.0, 1.0)).all():
        raise GraphDataError(f"{path}: multi-label vectors must hold only 0 and 1.")
    else:
      classes = {_parse_key(k, numeric): int(v) for k, v in class_map.items()}
      num_classes = max(classes.values()) + 1
      if min(classes.values()) < 0:
        raise GraphDataError(f"{path}: class indices must be >= 0.")
      labels = np.zeros((num_rows, num_classes), np.float32)
      for node, cls in classes.items():
        if node in id_map:
          labels[id_map[node], cls] = 1.0
  except (TypeError, ValueError) as e:
    if isinstance(e, GraphDataError):
      raise
    raise GraphDataError(
      f"{path}: every value must be one integer class or a list of 0/1 of the same length ({e})."
    ) from e
  return labels, multilabel


def _edges(
  links: Sequence[Any], id_map: Mapping[Any, int], present: np.ndarray, path: str
) -> np.ndarray:
  pairs = []
  for link in links:
    try:
      source, target = link["source"], link["target"]
    except (TypeError, KeyError) as e:
      raise GraphDataError(f"{path}: every link needs 'source' and 'target', got {link!r}.") from e
    if source in id_map and target in id_map:
      pairs.append((id_map[source], id_map[target]))
  if not pairs:
    return np.zeros((0, 2), np.int32)
  edges = np.asarray(pairs, dtype=np.int64)
  edges = edges[present[edges[:, 0]] & present[edges[:, 1]] & (edges[:, 0] != edges[:, 1])]
  edges = np.sort(edges, axis=1)  # undirected: each pair once, smaller index first
  return np.unique(edges, axis=0).astype(np.int32)


def _standardize(features: np.ndarray, train: np.ndarray) -> np.ndarray:
  mean = features[train].mean(axis=0)
  std = features[train].std(axis=0)
  std[std == 0] = 1.0  # a constant feature stays 0 rather than becoming NaN
  return ((features - mean) / std).astype(np.float32)


def write_graphsage(
  data_dir: str,
  prefix: str,
  *,
  features: np.ndarray,
  edges: np.ndarray,
  labels: np.ndarray,
  split: np.ndarray,
) -> dict[str, str]:
  """Writes a graph as the four GraphSAGE files (PPI's layout: node ids ``0..N-1``).

  Args:
    data_dir: output directory (created if needed).
    prefix: file-name prefix, e.g. ``"ppi"``.
    features: ``[N, F]`` node features.
    edges: ``[E, 2]`` node-index pairs (one direction is enough).
    labels: ``[N]`` integer classes (multi-class) or ``[N, C]`` 0/1 (multi-label).
    split: ``[N]`` with 0 = train, 1 = val, 2 = test.

  Returns:
    The four paths written.
  """
  os.makedirs(data_dir, exist_ok=True)
  paths = file_paths(data_dir, prefix)
  n = features.shape[0]
  nodes = [{"id": i, "val": bool(split[i] == 1), "test": bool(split[i] == 2)} for i in range(n)]
  links = [{"source": int(s), "target": int(t)} for s, t in np.asarray(edges)]
  graph = {"directed": False, "multigraph": False, "graph": {}, "nodes": nodes, "links": links}
  if labels.ndim == 1:
    class_map = {str(i): int(labels[i]) for i in range(n)}
  else:
    class_map = {str(i): [int(v) for v in labels[i]] for i in range(n)}
  for kind, obj in (
    ("G.json", graph),
    ("id_map.json", {str(i): i for i in range(n)}),
    ("class_map.json", class_map),
  ):
    with open(paths[kind], "w") as f:
      json.dump(obj, f)
  np.save(paths["feats.npy"], np.asarray(features, dtype=np.float32), allow_pickle=False)
  return paths
