"""Trains an image classifier with the configured optimizer.

  python -m examples.image_classification.main \
    --config=examples/image_classification/configs/fashion_mnist_cnn.py --workdir=runs/fmnist

Rerunning the same command resumes from the last checkpoint in ``--workdir``.
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from examples.common import cpu_runtime, distributed, runloop
from examples.image_classification import train

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cpu_runtime.prefer_small_temporaries()
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax's per-save INFO lines
  logging.getLogger("examples").setLevel(logging.INFO)
  try:
    distributed.initialize(FLAGS.config)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except runloop.USER_ERRORS as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  # Defined only when run as a script, so that importing an entry point never claims flag names
  # that the other examples' entry points use too.
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard.")
  config_flags.DEFINE_config_file("config", None, "Config file (a configs/*.py).", lock_config=True)
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
