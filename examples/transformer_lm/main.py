"""Trains a decoder-only transformer on Penn Treebank words with AdamW and its residual views.

  python -m examples.transformer_lm.main \\
    --config=examples/transformer_lm/configs/small.py --workdir=/tmp/transformer_lm

Rerunning the same command resumes from the last checkpoint in ``--workdir``; a workdir resumes
only with the config it was trained with (more epochs are fine; train in a new workdir to change
anything else). At the end it prints each view's perplexity.
"""

from examples.common import entry
from examples.transformer_lm import train

if __name__ == "__main__":
  entry.run(__doc__, train.train_and_evaluate, "examples.transformer_lm.configs.default")
