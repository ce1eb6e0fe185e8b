"""Trains an image classifier with the configured optimizer.

  python -m examples.image_classification.main \\
    --config=examples/image_classification/configs/fashion_mnist_cnn.py --workdir=runs/fmnist

Rerunning the same command resumes from the last checkpoint in ``--workdir``; a workdir resumes
only with the config it was trained with (more epochs are fine; train in a new workdir to change
anything else).
"""

from examples.common import entry
from examples.image_classification import trainers

if __name__ == "__main__":
  entry.run(__doc__, trainers.train_and_evaluate, "examples.image_classification.configs.default")
