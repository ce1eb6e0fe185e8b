"""Cluster-GCN on the WordNet noun graph: the real-data check run on this CPU machine (NOT PPI).

PPI does not install offline here; WordNet 3.0 does (Debian ``wordnet-base``). Its 82,115 noun
synsets, joined by their noun-to-noun pointers, are labelled with their lexicographer file (26
classes, multi-class) and described by a 500-word bag of words of their glosses; 80/10/10 random
node split. See ``examples/graph/wordnet.py``.

Run:

  apt-get install wordnet-base
  python -m examples.graph.wordnet --out_dir=/tmp/wordnet_graph
  python -m examples.graph.main --config=examples/graph/configs/wordnet.py \\
    --config.optimizer=adam-scale --config.seed=0 --workdir=/tmp/graph_runs/adam-scale/0

Expected: test accuracy (= micro-F1) around 0.8 after 30 epochs (about 5-10 s per epoch on two
CPU cores); see examples/graph/README.md for the measured table across optimizers and seeds.
"""

import ml_collections

from examples.graph.configs import ppi


def get_config() -> ml_collections.ConfigDict:
  config = ppi.get_config()
  # The README's WordNet results were measured with the normalized adjacency in the precalc.
  config.precalc_adjacency = "normalized"
  config.data_dir = "/tmp/wordnet_graph"
  config.dataset = "wordnet-noun"
  config.num_layers = 3
  config.hidden = 128
  config.dropout = 0.2
  config.learning_rate = 0.005
  config.num_clusters = 200
  config.clusters_per_batch = 5
  config.num_clusters_val = 4
  config.num_clusters_test = 4
  config.num_epochs = 30
  config.eval_every = 1
  config.checkpoint_every = 10
  return config
