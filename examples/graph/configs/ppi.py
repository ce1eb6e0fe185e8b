"""Cluster-GCN on PPI, the paper's setting (section 7.1): 5 layers, 2048 hidden units, 400 epochs.

The other hyperparameters mirror the public Cluster-GCN ``run_ppi.sh`` (50 METIS clusters, one
cluster per batch, layer normalization, precomputed first layer, dropout 0.2, no weight decay,
diagonal enhancement lambda = 1, 2 validation and 1 test cluster, first layer precomputed with
the raw adjacency). The learning rate is the paper's
0.02 (the public script keeps its default of 0.01).

Needs the GraphSAGE PPI files (``ppi-G.json``, ``ppi-feats.npy``, ``ppi-id_map.json``,
``ppi-class_map.json``) in ``data_dir``; they cannot be downloaded by this code.

Run (a GPU; one run per optimizer and seed):

  python -m examples.graph.main --config=examples/graph/configs/ppi.py \\
    --config.data_dir=/path/to/ppi --config.optimizer=adam-scale --workdir=/tmp/ppi/adam-scale/0

Expected: Cluster-GCN reports a test micro-F1 of about 99.3% for this model with Adam; the paper's
Figure 6 (middle) shows Adam with residuals at or above Adam over the 400 epochs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Data: <data_dir>/<dataset>-{G.json,feats.npy,id_map.json,class_map.json}.
  config.data_dir = "data/ppi"
  config.dataset = "ppi"
  # Optimizer: adam, adam-scale, adam-sign, adam-topk, sgdm, rsgdm-scale (examples.common.optimizers).
  config.optimizer = "adam"
  config.learning_rate = 0.02
  config.momentum = 0.9  # sgdm / rsgdm-*
  config.weight_decay = 0.0
  config.alpha = 1 / 16  # *-scale: the paper's alpha
  config.topk_fraction = 0.01  # *-topk: the paper's top 1%
  # Model.
  config.num_layers = 5
  config.hidden = 2048
  config.dropout = 0.2
  config.layer_norm = True
  config.precalc = True
  # The precomputed first layer multiplies X by the raw adjacency, as the public run_ppi.sh does
  # (utils.preprocess); "normalized" uses the layers' normalized, diagonally enhanced adjacency.
  config.precalc_adjacency = "raw"
  # Cluster-GCN batching.
  config.diag_lambda = 1.0
  config.num_clusters = 50
  config.clusters_per_batch = 1
  config.num_clusters_val = 2
  config.num_clusters_test = 1
  config.partition_method = "metis"
  config.partition_seed = 1
  # Schedule.
  config.num_epochs = 400
  config.eval_every = 1
  config.checkpoint_every = 10
  config.seed = 0
  return config
