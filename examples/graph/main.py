"""Cluster-GCN with Adam/SGDm and residuals.

  python -m examples.graph.main --config=examples/graph/configs/wordnet.py --workdir=/tmp/run

Rerunning the same command resumes from the last checkpoint in ``--workdir``; a workdir resumes
only with the config it was trained with (more epochs are fine; train in a new workdir to change
anything else).
"""

from examples.common import entry
from examples.graph import train

if __name__ == "__main__":
  entry.run(__doc__, train.train_and_evaluate, "examples.graph.configs.ppi")
