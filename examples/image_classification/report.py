"""Turns image-classification runs into the paper's Table 1 (Markdown) and Figure 3/5 (PNG).

  python -m examples.image_classification.report runs/d121 --output_dir=runs/d121/report

Every folder under the given ones that holds a ``metrics.jsonl`` is one run; runs are grouped by
optimizer. The table gives, per optimizer, the best top-1 test accuracy (at ``eval_params``) in each
third of the epochs, mean ± std over seeds, as the paper's Table 1 does. Both layouts are read:
one run per folder (``<optimizer>/seed<s>``) and the views of one training
(``views-<base>/seed<s>/<name>``). Then, for each residual view whose base was run with the same
seed, the paired gain (view minus base, per seed, then mean ± std), which is far less noisy than a
difference of two means over seeds: both share one trajectory.
"""

import os
from collections.abc import Sequence

from absl import app, flags

from examples.common import report
from examples.common.errors import UserError
from examples.common.metrics import METRICS_FILE
from examples.common.optimizers import OPTIMIZER_NAMES, lookup, split_setting

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "output_dir", None, "Where to write table.md and curves.png (default: first dir)."
)
flags.DEFINE_integer("num_epochs", 0, "Epochs of the runs (0: from their config.json).")
flags.DEFINE_string("title", "", "Figure title.")

MOMENTUM_FAMILY = ("sgdm", "rsgdm-scale", "rsgdm-sign", "rsgdm-topk", "signsgdm", "ef-signsgdm")
PLAIN_FAMILY = ("sgd", "rsgd-scale", "rsgd-sign", "rsgd-topk", "signsgd", "ef-signsgd")
ADAPTIVE = ("adam", "adagrad")


def find_runs(roots: Sequence[str]) -> list[str]:
  """Every directory under ``roots`` (included) that holds a ``metrics.jsonl``."""
  found = []
  for root in roots:
    if not os.path.isdir(root):
      raise FileNotFoundError(f"No such run directory: {root!r}.")
    for directory, _, files in os.walk(root):
      if METRICS_FILE in files:
        found.append(directory)
  if not found:
    raise FileNotFoundError(f"No {METRICS_FILE} under {list(roots)}: nothing to report.")
  return sorted(found)


def write_report(
  roots: Sequence[str], output_dir: str, *, num_epochs: int = 0, title: str = ""
) -> str:
  """Writes ``table.md`` and ``curves.png`` to ``output_dir``; returns the Markdown table.

  With ``*-scale`` runs of two or more alphas (``rsgdm-scale@0.25`` views), also ``alpha.png``:
  best test accuracy per epoch range against alpha.
  """
  runs = [report.load_run(d) for d in find_runs(roots)]
  groups = report.group_runs(runs, "optimizer")
  if not num_epochs:
    num_epochs = max(int(r.config.get("num_epochs", 0)) for r in runs)
  ranges = report.epoch_thirds(num_epochs)
  summary = report.summarize(groups, "test_accuracy", ranges)
  table = report.markdown_table(summary, ranges, order=OPTIMIZER_NAMES)
  gains = report.gains_markdown(
    report.paired_gains(runs, "test_accuracy", ranges), ranges, order=OPTIMIZER_NAMES
  )
  if gains:
    table += (
      "\nPaired gain of each residual view over its base (percentage points of best test "
      "accuracy in each range; the same seed, so the same trajectory), per seed, then mean ± "
      "std:\n\n" + gains
    )
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "table.md"), "w") as f:
    f.write(table)
  with_momentum = MOMENTUM_FAMILY + ADAPTIVE
  panels = [
    report.Panel("train_loss", "training loss", with_momentum, "SGDm family, Adam, AdaGrad", True),
    report.Panel("test_accuracy", "test accuracy", with_momentum, "SGDm family, Adam, AdaGrad"),
    report.Panel("train_loss", "training loss", PLAIN_FAMILY, "SGD family", True),
    report.Panel("test_accuracy", "test accuracy", PLAIN_FAMILY, "SGD family"),
  ]
  if not any(label in PLAIN_FAMILY for label in groups):
    panels = [
      report.Panel("train_loss", "training loss", None, log_scale=True),
      report.Panel("test_accuracy", "test accuracy", None),
      report.Panel(
        "reference_test_accuracy", "test accuracy at params", None, "reference trajectory"
      ),
      report.Panel("proximity", "proximity ||x - y|| / ||y||", None, log_scale=True),
    ]
  report.plot_curves(
    groups, panels, os.path.join(output_dir, "curves.png"), order=OPTIMIZER_NAMES, title=title
  )
  alphas = scale_alphas(groups)
  if len(alphas) >= 2:
    plot_alpha_sweep(summary, alphas, ranges, os.path.join(output_dir, "alpha.png"), title=title)
  return table


def scale_alphas(groups: dict[str, list[report.Run]]) -> dict[str, float]:
  """The alpha of every ``*-scale`` group: its ``@`` setting, else its runs' ``config.alpha``."""
  alphas = {}
  for label, runs in groups.items():
    try:
      optimizer, setting = split_setting(label)
    except UserError:  # a label that is not an optimizer name
      continue
    if lookup(optimizer).setting == "alpha":
      alpha = setting or runs[0].config.get("alpha")
      if alpha is not None:
        alphas[label] = float(alpha)
  return alphas


def plot_alpha_sweep(summary, alphas, ranges, path: str, *, title: str = "") -> None:
  """Best test accuracy per epoch range against the scaling scheme's alpha (log scale), the
  proximity trade-off of the paper's sections 4.2 and 6, from one training's views."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ordered = sorted(alphas, key=alphas.get)
  fig, ax = plt.subplots(figsize=(4.6, 3.6))
  for index, (lo, hi) in enumerate(ranges):
    xs = [alphas[label] for label in ordered]
    means = [100 * summary[label][index].mean for label in ordered]
    stds = [100 * summary[label][index].std for label in ordered]
    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=report.range_label(lo, hi))
  ax.set_xscale("log")
  ax.set_xlabel("alpha (scaling scheme)")
  ax.set_ylabel("best test accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str]) -> None:
  roots = argv[1:]
  if not roots:
    raise app.UsageError("Give one or more run directories.")
  output_dir = FLAGS.output_dir or os.path.join(roots[0], "report")
  table = write_report(roots, output_dir, num_epochs=FLAGS.num_epochs, title=FLAGS.title)
  print(table)
  print(f"Wrote {output_dir}/table.md and {output_dir}/curves.png")


if __name__ == "__main__":
  app.run(main)
