"""A CPU-sized Cluster-GCN on PPI-format data: 3 layers of 256, 50 epochs.

Run:

  python -m examples.graph.main --config=examples/graph/configs/ppi_small.py \\
    --config.data_dir=/path/to/ppi --workdir=/tmp/ppi_small

Expected: a smoke-level run (minutes on a few CPU cores for PPI); validation micro-F1 rises
steadily but stays well below the full model's (~0.99), which needs 2048 units and 400 epochs.
"""

import ml_collections

from examples.graph.configs import ppi


def get_config() -> ml_collections.ConfigDict:
  config = ppi.get_config()
  config.num_layers = 3
  config.hidden = 256
  config.learning_rate = 0.005
  config.num_epochs = 50
  config.eval_every = 5
  return config
