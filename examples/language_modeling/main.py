"""Trains AWD-LSTM on Penn Treebank: ``python -m examples.language_modeling.main
--config=examples/language_modeling/configs/small.py --workdir=/tmp/lm``."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from examples.common import cpu_runtime, runloop
from examples.language_modeling import train

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cpu_runtime.prefer_small_temporaries()
  logging.set_verbosity(logging.INFO)
  try:
    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except runloop.USER_ERRORS as e:
    sys.exit(f"error: {e}")
  by_view = results if "val_ppl" not in results else {results["optimizer"]: results}
  for name, result in by_view.items():
    logging.info(
      "%s: validation ppl %.2f | test ppl %.2f", name, result["val_ppl"], result["test_ppl"]
    )


if __name__ == "__main__":
  # Defined only when run as a script: the image example's main uses the same flag names.
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and results.json.")
  config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
