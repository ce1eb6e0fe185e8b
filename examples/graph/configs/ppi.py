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
  config.data_dir = "data/ppi"  # folder of <dataset>-G.json, -feats.npy, ...
  config.dataset = "ppi"  # the files' prefix
  # Optimizer: adam, adam-scale, adam-sign, adam-topk, sgdm, rsgdm-scale (examples.common.optimizers).
  config.optimizer = "adam"  # a name, or views: adam,adam-scale@0.25,... (see README)
  config.learning_rate = 0.02  # learning rate (> 0)
  config.momentum = 0.9  # sgdm / rsgdm-*
  config.weight_decay = 0.0  # L2 added to the gradient (>= 0)
  config.alpha = 1 / 16  # *-scale: the paper's alpha
  config.topk_fraction = 0.01  # *-topk: the paper's top 1%
  # Model.
  config.num_layers = 5  # graph convolution layers
  config.hidden = 2048  # hidden units per layer
  config.dropout = 0.2  # dropout rate, in [0, 1)
  config.layer_norm = True  # layer normalization after each hidden layer
  config.precalc = True  # precompute the first layer's aggregation
  # The precomputed first layer multiplies X by the raw adjacency, as the public run_ppi.sh does
  # (utils.preprocess); "normalized" uses the layers' normalized, diagonally enhanced adjacency.
  config.precalc_adjacency = "raw"  # "raw" or "normalized" (see the comment above)
  # Cluster-GCN batching.
  config.diag_lambda = 1.0  # diagonal enhancement lambda (>= 0)
  config.num_clusters = 50  # clusters of the training graph
  config.clusters_per_batch = 1  # clusters joined into one batch
  config.num_clusters_val = 2  # clusters of the whole graph for validation
  config.num_clusters_test = 1  # clusters of the whole graph for test
  config.partition_method = "metis"  # how the graph is cut into clusters
  config.partition_seed = 1  # seed of the partition
  # Schedule.
  config.num_epochs = 400  # epochs to train (may grow on resume)
  config.eval_every = 1  # epochs between evaluations (and after the last)
  config.checkpoint_every = 10  # epochs between checkpoints (and after the last)
  config.seed = 0  # initialization, dropout and batch order
  config.log_every_steps = 50  # steps between loss checks (non-finite stop, progress bar)
  config.progress_bar = False  # show a tqdm bar per epoch
  return config
