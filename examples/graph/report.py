"""Summarizes Cluster-GCN runs: mean +- std across seeds of the best micro-F1, per optimizer.

Every directory under ``--runs`` holding ``metrics.jsonl`` and ``config.json`` is a run (as
written by :func:`examples.graph.train.train_and_evaluate`); runs are grouped by
``config.optimizer`` (the views of one training, ``<training>/<name>/``, read the same way). The
Markdown table leads with the test micro-F1 at the epoch of best validation micro-F1 (the model one
selects on validation, as the public Cluster-GCN code reports it), then the best validation
micro-F1, each as mean +- sample std over seeds; then the best validation micro-F1 in each third of
training (the paper's Table 1 form). The largest test score over the epochs is not reported: it is
a selection made on the test set. ``curves.png``
plots the training loss and validation/test micro-F1 (mean across seeds, std shaded).

  python -m examples.graph.report --runs=/tmp/graph_runs --out_dir=/tmp/graph_report
"""

import glob
import math
import os
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from examples.common import report

ORDER = ("adam", "adam-scale", "adam-sign", "adam-topk", "sgdm", "rsgdm-scale")
PANELS = (
  # The mean loss of the epoch's minibatches, at the params y: one curve per trajectory.
  report.Panel("train_loss", "training loss at y (minibatch mean)", log_scale=True),
  report.Panel("val_micro_f1", "validation micro-F1 at x (%)", scale=100),
  report.Panel("test_micro_f1", "test micro-F1 at x (%)", scale=100),
)
POINTS = "x = y + r: the point each optimizer evaluates (x = y, the params, without a residual)"


def find_runs(root: str) -> list[report.Run]:
  """Every run directory below ``root`` (one holding ``metrics.jsonl``), sorted by path."""
  paths = sorted(glob.glob(os.path.join(root, "**", "metrics.jsonl"), recursive=True))
  runs = [report.load_run(os.path.dirname(p)) for p in paths]
  return [run for run in runs if run.records]


def selected_test_f1(records: Sequence[dict]) -> float:
  """Test micro-F1 at the (first) epoch of highest validation micro-F1; NaN if never evaluated."""
  scored = [r for r in records if r.get("val_micro_f1") is not None and "test_micro_f1" in r]
  if not scored:
    return math.nan
  best = max(scored, key=lambda r: r["val_micro_f1"])
  return float(best["test_micro_f1"])


def _cell(values: Sequence[float]) -> report.Cell:
  finite = np.array([v for v in values if math.isfinite(v)])
  std = float(np.std(finite, ddof=1)) if finite.size > 1 else 0.0
  return report.Cell(float(finite.mean()) if finite.size else math.nan, std, int(finite.size))


def summary_table(groups: dict[str, list[report.Run]]) -> str:
  """Per optimizer: test micro-F1 at best validation, best validation (%, mean ± std, seeds)."""
  everything = [(0, 10**9)]
  lines = [
    "| optimizer | seeds | test micro-F1 at best val | best val micro-F1 |",
    "|---|---|---|---|",
  ]
  labels = [label for label in ORDER if label in groups] + sorted(set(groups) - set(ORDER))
  for label in labels:
    runs = groups[label]
    best_val = [report.best_in_ranges(r.records, "val_micro_f1", everything)[0] for r in runs]
    selected = [selected_test_f1(r.records) for r in runs]
    cells = " | ".join(_cell(v).format(100.0) for v in (selected, best_val))
    lines.append(f"| {label} | {len(runs)} | {cells} |")
  return "\n".join(lines) + "\n"


def write_report(runs_root: str, out_dir: str, *, title: str | None = None) -> str:
  """Writes ``results.md`` and ``curves.png`` into ``out_dir``; returns the Markdown."""
  runs = find_runs(runs_root)
  if not runs:
    raise FileNotFoundError(f"No run (a directory with metrics.jsonl) under {runs_root}.")
  groups = report.group_runs(runs, key="optimizer")
  num_epochs = 1 + max(r["epoch"] for run in runs for r in run.records)
  text = summary_table(groups)
  if num_epochs >= 3:
    ranges = report.epoch_thirds(num_epochs)
    thirds = report.summarize(groups, "val_micro_f1", ranges)
    text += "\nBest validation micro-F1 (%) in each third of training:\n\n"
    text += report.markdown_table(thirds, ranges, order=ORDER)
  text += "\n" + report.machine_caption(runs) + "\n"
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(text)
  report.plot_curves(
    groups,
    PANELS,
    os.path.join(out_dir, "curves.png"),
    order=ORDER,
    title=f"{title}\n{POINTS}" if title else POINTS,
  )
  return text


def main(argv: Sequence[str]) -> None:
  del argv
  options = flags.FLAGS
  print(write_report(options.runs, options.out_dir or options.runs, title=options.title))


if __name__ == "__main__":
  # Flags are defined only when run as a script, so importing this module defines none.
  flags.DEFINE_string("runs", None, "Directory holding the run directories.", required=True)
  flags.DEFINE_string("out_dir", None, "Where to write results.md and curves.png.")
  flags.DEFINE_string("title", None, "Figure title.")
  app.run(main)
