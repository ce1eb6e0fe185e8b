"""Trains a sweep of optimizers and seeds, then prints the Table 1 style table and draws curves.

Optimizers that share a trajectory are one training per seed (see :mod:`sweep`).

The README's main job (2 trainings, about 6 minutes on 2 shared CPU cores)::

  python -m examples.image_classification.compare \
    --config=examples/image_classification/configs/fashion_mnist_compare.py --workdir=runs/compare

Writes ``<workdir>/report/table.md`` and ``<workdir>/report/curves.png``. Rerunning resumes.
"""

import os
import time

from absl import app, flags
from ml_collections import config_flags

from examples.common import cpu_runtime, entry
from examples.image_classification import report, sweep

FLAGS = flags.FLAGS


def start(argv: list[str]) -> float:
  """What a sweep script does first (this one and ``compressed_sweep``): refuses stray arguments,
  sets the CPU runtime flag and the examples' one logging set-up; the start time."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cpu_runtime.prefer_small_temporaries()
  entry.setup_logging()
  return time.time()


def main(argv: list[str]) -> None:
  started = start(argv)
  trainings = len(sweep.trainings(FLAGS.config)) * len(FLAGS.config.sweep.seeds)
  runs = sweep.run_sweep(FLAGS.config, FLAGS.workdir)
  if not runs:
    raise SystemExit("No run produced metrics.")
  output_dir = os.path.join(FLAGS.workdir, "report")
  table = report.write_report(
    [FLAGS.workdir], output_dir, num_epochs=FLAGS.config.num_epochs, title=FLAGS.config.sweep.title
  )
  print(table)
  print(
    f"{len(runs)} runs from {trainings} trainings, {time.time() - started:.0f}s. Table: {output_dir}/table.md, figure: "
    f"{output_dir}/curves.png"
  )


if __name__ == "__main__":
  # Defined only when run as a script (the trainer's main uses the same flag names).
  flags.DEFINE_string("workdir", None, "Root directory of the sweep's runs.")
  config_flags.DEFINE_config_file(
    "config", None, "A config with a `sweep` field.", lock_config=True
  )
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
