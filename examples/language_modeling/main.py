"""Trains AWD-LSTM on Penn Treebank.

  python -m examples.language_modeling.main \\
    --config=examples/language_modeling/configs/small.py --workdir=/tmp/lm

Rerunning the same command resumes from the last checkpoint in ``--workdir``; a workdir resumes
only with the config it was trained with (more epochs are fine; train in a new workdir to change
anything else).
"""

from examples.common import entry
from examples.language_modeling import train

if __name__ == "__main__":
  entry.run(__doc__, train.train_and_evaluate, "examples.language_modeling.configs.default")
