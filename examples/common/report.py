"""Turning finished runs into the paper's tables and figures.

A run is a workdir holding ``metrics.jsonl`` (see :mod:`examples.common.metrics`) and
``config.json`` (the run's flattened config, written by the trainer). Runs are grouped by a config
field (the optimizer, usually); each group's seeds are reduced to the best value of a metric in each
epoch range, then to mean +- standard deviation across seeds (the paper's Table 1 form).
"""

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from examples.common.errors import UserError
from examples.common.metrics import read_metrics
from examples.common.optimizers import has_residual, parse_views, trajectory

CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: where it lives, its config and its per-epoch records."""

  workdir: str
  config: dict[str, Any]
  records: list[dict[str, Any]]


def load_run(workdir: str) -> Run:
  """Reads a run's ``config.json`` (empty if absent) and ``metrics.jsonl``."""
  config_path = os.path.join(workdir, CONFIG_FILE)
  config: dict[str, Any] = {}
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return Run(workdir=workdir, config=config, records=read_metrics(workdir))


def group_runs(runs: Iterable[Run], key: str = "optimizer") -> dict[str, list[Run]]:
  """Groups runs by ``run.config[key]`` (runs without the key go under their workdir name)."""
  groups: dict[str, list[Run]] = {}
  for run in runs:
    label = str(run.config.get(key, os.path.basename(os.path.normpath(run.workdir))))
    groups.setdefault(label, []).append(run)
  return groups


def epoch_thirds(num_epochs: int) -> list[tuple[int, int]]:
  """The paper's three epoch ranges (0-based, inclusive).

  300 epochs give (0, 99), (100, 199), (200, 299).
  """
  if num_epochs < 3:
    raise ValueError(f"Need at least 3 epochs to split into thirds, got {num_epochs}.")
  cuts = [round(i * num_epochs / 3) for i in range(4)]
  return [(cuts[i], cuts[i + 1] - 1) for i in range(3)]


def best_in_ranges(
  records: Sequence[Mapping[str, Any]],
  metric: str,
  ranges: Sequence[tuple[int, int]],
  *,
  mode: str = "max",
) -> list[float]:
  """Best (``max`` or ``min``) finite ``metric`` among records with epoch in each inclusive range.

  A range with no finite value (the run stopped before it, or diverged) gives NaN.
  """
  pick = {"max": max, "min": min}[mode]
  out = []
  for lo, hi in ranges:
    values = [
      float(r[metric])
      for r in records
      if lo <= r["epoch"] <= hi and r.get(metric) is not None and math.isfinite(float(r[metric]))
    ]
    out.append(pick(values) if values else math.nan)
  return out


@dataclasses.dataclass(frozen=True)
class Cell:
  """Mean and sample standard deviation (ddof=1; 0 for a single run) over ``n`` runs."""

  mean: float
  std: float
  n: int

  def format(self, scale: float = 1.0, digits: int = 2) -> str:
    if self.n == 0:
      return "n/a"
    return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def summarize(
  groups: Mapping[str, Sequence[Run]],
  metric: str,
  ranges: Sequence[tuple[int, int]],
  *,
  mode: str = "max",
) -> dict[str, list[Cell]]:
  """Per group and range: the best-in-range value of each run, reduced to mean +- std."""
  summary = {}
  for label, runs in groups.items():
    per_run = np.array([best_in_ranges(r.records, metric, ranges, mode=mode) for r in runs])
    cells = []
    for column in per_run.reshape(len(runs), len(ranges)).T:
      finite = column[np.isfinite(column)]
      std = float(np.std(finite, ddof=1)) if finite.size > 1 else 0.0
      mean = float(np.mean(finite)) if finite.size else math.nan
      cells.append(Cell(mean=mean, std=std, n=int(finite.size)))
    summary[label] = cells
  return summary


def range_label(lo: int, hi: int) -> str:
  """``epoch 0-99`` for a range of epochs, ``epoch 3`` for a range of one."""
  return f"epoch {lo}" if lo == hi else f"epoch {lo}-{hi}"


def markdown_table(
  summary: Mapping[str, Sequence[Cell]],
  ranges: Sequence[tuple[int, int]],
  *,
  name: str = "optimizer",
  scale: float = 100.0,
  order: Sequence[str] | None = None,
) -> str:
  """A Markdown table: one row per group, one column per epoch range, ``mean ± std`` cells.

  A column header ``epoch 0-99`` follows the paper. Groups whose cells average fewer runs than the
  largest group say how many (``(n=3)``), e.g. when some seeds diverged or did not finish.
  """
  labels = [label for label in (order or []) if label in summary]
  labels += [label for label in summary if label not in labels]
  most = max((c.n for cells in summary.values() for c in cells), default=0)
  header = f"| {name} | " + " | ".join(range_label(lo, hi) for lo, hi in ranges) + " |"
  lines = [header, "|" + "---|" * (len(ranges) + 1)]
  for label in labels:
    cells = []
    for cell in summary[label]:
      text = cell.format(scale)
      if 0 < cell.n < most:
        text += f" (n={cell.n})"
      cells.append(text)
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def mean_curve(runs: Sequence[Run], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Epochs, mean and std of ``metric`` across runs (epochs every run reached)."""
  series = [
    {r["epoch"]: r[metric] for r in run.records if r.get(metric) is not None} for run in runs
  ]
  epochs = sorted(set.intersection(*(set(s) for s in series))) if series else []
  values = np.array([[s[e] for e in epochs] for s in series], dtype=float)
  if not epochs:
    return np.array([]), np.array([]), np.array([])
  return np.array(epochs), values.mean(axis=0), values.std(axis=0)


@dataclasses.dataclass(frozen=True)
class Panel:
  """One plot: ``metric`` per epoch for the groups in ``labels`` (``None``: every group)."""

  metric: str
  ylabel: str
  labels: Sequence[str] | None = None
  title: str | None = None
  log_scale: bool = False


def plot_curves(
  groups: Mapping[str, Sequence[Run]],
  panels: Sequence[Panel],
  path: str,
  *,
  order: Sequence[str] | None = None,
  title: str | None = None,
) -> None:
  """Draws ``panels`` side by side (mean across seeds per group, std shaded) into a PNG."""
  import matplotlib

  matplotlib.use("Agg")  # files only, no display needed
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  ordered = [label for label in (order or []) if label in groups]
  ordered += [label for label in groups if label not in ordered]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
  for ax, panel in zip(axes[0], panels, strict=True):
    shown = [label for label in ordered if panel.labels is None or label in panel.labels]
    # Colours by position within the panel (panels of one family list the same groups), and a
    # dashed line after the tenth so that no two curves of a panel look alike.
    for index, label in enumerate(shown):
      epochs, mean, std = mean_curve(groups[label], panel.metric)
      if epochs.size == 0:
        continue
      color = f"C{index % 10}"
      style = "-" if index < 10 else "--"
      ax.plot(epochs, mean, style, label=label, linewidth=1.3, color=color)
      ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(panel.ylabel)
    if panel.title:
      ax.set_title(panel.title, fontsize=9)
    if panel.log_scale:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


@dataclasses.dataclass(frozen=True)
class PairedGain:
  """A residual view's best-in-range metric minus its base's, for one seed of one trajectory."""

  view: str
  base: str
  seed: Any
  gains: list[float]


def paired_gains(
  runs: Iterable[Run], metric: str, ranges: Sequence[tuple[int, int]], *, mode: str = "max"
) -> list[PairedGain]:
  """Each residual view's gain over its base view (``rsgdm-*`` over ``sgdm``, ...) per seed.

  A view is paired with the run of its base optimizer that has the same seed: the sibling view of
  the same training when there is one (``<training>/<base>/``), else a separate run of the base
  (which follows the same trajectory, Theorem 2). Views without such a base are left out.
  """
  runs = list(runs)

  def optimizer_of(run: Run) -> str | None:
    name = run.config.get("optimizer")
    try:
      return parse_views(str(name))[0].optimizer if name is not None else None
    except UserError:
      return None

  out = []
  for run in runs:
    optimizer = optimizer_of(run)
    if optimizer is None or not has_residual(optimizer):
      continue
    base = trajectory(optimizer)
    seed = run.config.get("seed")
    candidates = [
      r for r in runs if r.config.get("optimizer") == base and r.config.get("seed") == seed
    ]
    parent = os.path.dirname(os.path.normpath(run.workdir))
    siblings = [r for r in candidates if os.path.dirname(os.path.normpath(r.workdir)) == parent]
    chosen = (siblings or candidates)[:1]
    if not chosen:
      continue
    mine = best_in_ranges(run.records, metric, ranges, mode=mode)
    theirs = best_in_ranges(chosen[0].records, metric, ranges, mode=mode)
    out.append(
      PairedGain(
        str(run.config["optimizer"]), base, seed, [a - b for a, b in zip(mine, theirs, strict=True)]
      )
    )
  return out


def gains_markdown(
  gains: Sequence[PairedGain],
  ranges: Sequence[tuple[int, int]],
  *,
  scale: float = 100.0,
  order: Sequence[str] | None = None,
) -> str:
  """Two Markdown tables: the paired gains per seed, then their mean ± std (ddof=1) per view."""
  if not gains:
    return ""
  views = [v for v in (order or []) if any(g.view == v for g in gains)]
  views += sorted({g.view for g in gains} - set(views))
  columns = " | ".join(range_label(lo, hi) for lo, hi in ranges)
  per_seed = [f"| view - base | seed | {columns} |", "|" + "---|" * (len(ranges) + 2)]
  summary = [f"| view - base | seeds | {columns} |", "|" + "---|" * (len(ranges) + 2)]
  for view in views:
    rows = sorted((g for g in gains if g.view == view), key=lambda g: str(g.seed))
    for g in rows:
      cells = " | ".join(f"{value * scale:+.2f}" for value in g.gains)
      per_seed.append(f"| {view} - {g.base} | {g.seed} | {cells} |")
    values = np.array([g.gains for g in rows], dtype=float)
    cells = []
    for column in values.T:
      finite = column[np.isfinite(column)]
      std = float(np.std(finite, ddof=1)) if finite.size > 1 else 0.0
      mean = float(np.mean(finite)) if finite.size else math.nan
      cells.append(f"{mean * scale:+.2f} ± {std * scale:.2f}")
    summary.append(f"| {view} - {rows[0].base} | {len(rows)} | " + " | ".join(cells) + " |")
  return "\n".join(per_seed) + "\n\n" + "\n".join(summary) + "\n"
