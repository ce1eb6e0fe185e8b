"""Cluster-GCN with Adam/SGDm and residuals: command-line entry point.

python -m examples.graph.main --config=examples/graph/configs/wordnet.py --workdir=/tmp/run
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from examples.common import cpu_runtime, runloop
from examples.graph import train

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for metrics, checkpoints.", required=True
)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cpu_runtime.prefer_small_temporaries()
  logging.set_verbosity(logging.INFO)
  # Orbax logs every save step at INFO; keep its warnings, drop the chatter.
  logging.get_absl_handler().addFilter(
    lambda record: "orbax" not in record.pathname or record.levelno >= logging.WARNING
  )
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except runloop.USER_ERRORS as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
