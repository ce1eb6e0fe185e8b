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

import numpy as np
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

MOMENTUM_RESIDUALS = ("sgdm", "rsgdm-scale", "rsgdm-sign", "rsgdm-topk")
MOMENTUM_BASELINES = ("sgdm", "signsgdm", "ef-signsgdm", "adam", "adagrad")
PLAIN_RESIDUALS = ("sgd", "rsgd-scale", "rsgd-sign", "rsgd-topk")
PLAIN_BASELINES = ("sgd", "signsgd", "ef-signsgd")
PER_SEED = "The paired gains per seed:"
POINTS = "x = y + r: the point each optimizer evaluates (x = y, the params, without a residual)"
LOSS_AT_X = "training loss at x"
ACCURACY_AT_X = "test accuracy at x (%)"


def curve_panels(groups: dict[str, list[report.Run]]) -> tuple[list[report.Panel], int]:
  """The figure's panels and how many to a row (two: the docs' column keeps them legible).

  With the SGD family (Table 1): per base, its residuals in one pair of panels and the baselines
  (SignSGD, EF, Adam, AdaGrad) in another, so that no panel holds more than five curves and the
  far-off EF curves do not squeeze the residuals' range. Otherwise (the views of one trajectory):
  loss and accuracy at x, accuracy at the shared params y, and the proximity of x to y.
  """
  if any(label in PLAIN_RESIDUALS + PLAIN_BASELINES for label in groups):
    panels = []
    for residuals, baselines, family in (
      (MOMENTUM_RESIDUALS, MOMENTUM_BASELINES, "SGDm"),
      (PLAIN_RESIDUALS, PLAIN_BASELINES, "SGD"),
    ):
      for labels, what in ((residuals, "residuals"), (baselines, "baselines")):
        title = f"{family} and its {what}"
        panels.append(report.Panel("train_loss", LOSS_AT_X, labels, title, log_scale=True))
        panels.append(report.Panel("test_accuracy", ACCURACY_AT_X, labels, title, scale=100))
    return panels, 2
  panels = [
    report.Panel("train_loss", LOSS_AT_X, log_scale=True),
    report.Panel("test_accuracy", ACCURACY_AT_X, scale=100),
    report.Panel(
      "reference_test_accuracy",
      "test accuracy at y, the params (%)",
      title="the shared trajectory y",
      scale=100,
      same_label="params: every view",
    ),
    report.Panel(
      "proximity", "proximity ||x - y|| / ||y||", title="how far x is from y", log_scale=True
    ),
  ]
  return panels, 2


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


def make_table(runs: Sequence[report.Run], num_epochs: int = 0) -> str:
  """The Markdown of ``table.md``: best test accuracy per epoch range, the paired gains, the
  machine."""
  groups = report.group_runs(runs, "optimizer")
  ranges = report.epoch_thirds(num_epochs or _num_epochs(runs))
  summary = report.summarize(groups, "test_accuracy", ranges)
  order = display_order(groups)
  table = report.markdown_table(summary, ranges, order=order)
  summary_gains, per_seed = report.gains_markdown(
    report.paired_gains(runs, "test_accuracy", ranges), ranges, order=order
  )
  if summary_gains:
    table += (
      "\nPaired gain of each residual view over its base (percentage points of best test "
      "accuracy in each range; the same seed, so the same trajectory), mean ± std over seeds:\n\n"
      + summary_gains
    )
  table += "\n" + report.machine_caption(runs) + "\n"
  if per_seed:
    table += f"\n{PER_SEED}\n\n" + per_seed
  return table


def _num_epochs(runs: Sequence[report.Run]) -> int:
  return max(int(r.config.get("num_epochs", 0)) for r in runs)


def write_report(
  roots: Sequence[str], output_dir: str, *, num_epochs: int = 0, title: str = ""
) -> str:
  """Writes ``table.md`` and ``curves.png`` to ``output_dir``; returns the Markdown table.

  With ``*-scale`` views of two or more alphas (``rsgdm-scale@0.25``) and their base, also
  ``alpha.png``: the paired gain over the base in each epoch range against alpha.
  """
  runs = [report.load_run(d) for d in find_runs(roots)]
  table = make_table(runs, num_epochs)
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "table.md"), "w") as f:
    f.write(table)
  groups = report.group_runs(runs, "optimizer")
  panels, columns = curve_panels(groups)
  report.plot_curves(
    groups,
    panels,
    os.path.join(output_dir, "curves.png"),
    order=display_order(groups),
    title=f"{title}\n{POINTS}" if title else POINTS,
    columns=columns,
  )
  ranges = report.epoch_thirds(num_epochs or _num_epochs(runs))
  gains = report.paired_gains(runs, "test_accuracy", ranges)
  by_alpha = alpha_gains(gains, scale_alphas(groups), len(ranges))
  if len(by_alpha) >= 2:
    plot_alpha_gains(
      by_alpha,
      ranges,
      os.path.join(output_dir, "alpha.png"),
      seeds=max(len(runs) for runs in groups.values()),
      title=title,
    )
  return table


def display_order(groups: dict[str, list[report.Run]]) -> list[str]:
  """Optimizers in the order of their names' list; views with an ``@`` setting right after their
  optimizer, largest setting first."""

  def key(label: str) -> tuple[int, bool, float]:
    optimizer, _, setting = label.partition("@")
    names = list(OPTIMIZER_NAMES)
    place = names.index(optimizer) if optimizer in names else len(names)
    return place, bool(setting), -float(setting) if setting else 0.0

  return sorted(groups, key=key)


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


def alpha_gains(
  gains: Sequence[report.PairedGain], alphas: dict[str, float], num_ranges: int
) -> dict[float, tuple[np.ndarray, np.ndarray]]:
  """Per alpha: the paired gain over the base in each epoch range, mean and sample std (ddof=1)
  over seeds, in percentage points."""
  out = {}
  for label, alpha in alphas.items():
    rows = np.array([g.gains for g in gains if g.view == label], dtype=float)
    if rows.size:
      rows = 100 * rows.reshape(-1, num_ranges)
      out[alpha] = (rows.mean(axis=0), report.sample_std(rows))
  return out


# Gains beyond this many points are drawn at the axis' edge with their value written beside, so
# that one far-off alpha does not flatten the differences between the others.
OFF_SCALE_POINTS = 5.0


def plot_alpha_gains(
  by_alpha: dict[float, tuple[np.ndarray, np.ndarray]],
  ranges: Sequence[tuple[int, int]],
  path: str,
  *,
  base: str = "sgdm",
  seeds: int = 0,
  title: str = "",
) -> None:
  """The paired gain of the scaling scheme over its base against alpha (log scale), one line per
  epoch range, error bars ± one sample std across seeds, a zero line: the proximity trade-off of
  the paper's sections 4.2 and 6, from one training's views per seed."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import FixedLocator, NullLocator

  alphas = sorted(by_alpha)
  means = np.array([by_alpha[a][0] for a in alphas])  # (alpha, range)
  stds = np.array([by_alpha[a][1] for a in alphas])
  inside = np.abs(means) <= OFF_SCALE_POINTS
  reach = np.abs(means[inside]) + stds[inside] if inside.any() else np.array([1.0])
  limit = max(1.0, float(reach.max())) * 1.15
  fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
  ax.axhline(0.0, color="black", linewidth=0.9)
  # Each range's points nudged sideways (x1.1 apart) so that their error bars do not overlap.
  nudges = 1.1 ** (np.arange(len(ranges)) - (len(ranges) - 1) / 2)
  for index, (lo, hi) in enumerate(ranges):
    xs = np.array(alphas) * nudges[index]
    ok = inside[:, index]
    colour = f"C{index}"
    ax.errorbar(
      xs[ok],
      means[ok, index],
      yerr=stds[ok, index],
      marker="o",
      capsize=3,
      color=colour,
      label=report.range_label(lo, hi),
    )
    for x, mean, std in zip(xs[~ok], means[~ok, index], stds[~ok, index], strict=True):
      edge = np.sign(mean) * limit * 0.97
      ax.plot([x], [edge], marker="v" if mean < 0 else "^", color=colour, markersize=8)
      # Stacked by range, away from the edge, so that the notes of one alpha do not overlap.
      shift = (10 + 22 * index) * (1 if mean < 0 else -1)
      ax.annotate(
        f"{report.range_label(lo, hi)}: {mean:+.1f} ± {std:.1f} (off scale)",
        (x, edge),
        xytext=(16, shift),
        textcoords="offset points",
        fontsize=7,
        color=colour,
        va="center",
      )
  ax.set_xscale("log", base=2)
  ax.xaxis.set_major_locator(FixedLocator(alphas))
  ax.xaxis.set_minor_locator(NullLocator())
  ax.set_xticklabels([f"1/{round(1 / a)}" if a < 1 else "1" for a in alphas])
  ax.set_ylim(-limit, limit)
  ax.set_xlabel("alpha of the scaling scheme R(v) = alpha v (log scale)")
  ax.set_ylabel(f"gain over {base} in best test accuracy at x\n(percentage points)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, title="epoch range", title_fontsize=8)
  note = f"Mean of the paired gains over {seeds} seeds; error bars: ± 1 sample std (ddof=1)."
  ax.set_title(f"{title}\n{note}" if title else note, fontsize=9)
  fig.savefig(path, dpi=110)
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
