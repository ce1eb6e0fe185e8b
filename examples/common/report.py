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

from examples.common.config_record import CONFIG_FILE
from examples.common.errors import UserError
from examples.common.machine import MACHINE_FILE, summary
from examples.common.metrics import read_metrics
from examples.common.optimizers import has_residual, parse_views, trajectory


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: where it lives, its config and its per-epoch records."""

  workdir: str
  config: dict[str, Any]
  records: list[dict[str, Any]]
  machine: dict[str, Any] = dataclasses.field(default_factory=dict)


# How far above a run's workdir its machine record may sit: the views of one training
# (``views-sgdm/seed0/<view>``) and the sweep's root share one.
MACHINE_LEVELS = 3


def find_machine(workdir: str) -> dict[str, Any]:
  """The ``machine.json`` of a run: in its workdir or up to ``MACHINE_LEVELS`` folders above."""
  directory = os.path.abspath(workdir)
  for _ in range(MACHINE_LEVELS + 1):
    path = os.path.join(directory, MACHINE_FILE)
    if os.path.exists(path):
      with open(path) as f:
        return _one_machine(json.load(f))
    directory = os.path.dirname(directory)
  return {}


def _one_machine(record: Any) -> dict[str, Any]:
  """A trainer's ``machine.json`` lists every start of the run (``{epoch_started, machine}``); a
  committed sweep's is one machine. A run resumed on another machine says so in its ``note``."""
  if not isinstance(record, list):
    return record
  machines = [entry["machine"] for entry in record]
  distinct = [m for i, m in enumerate(machines) if m not in machines[:i]]
  if not distinct:
    return {}
  machine = dict(distinct[-1])
  if len(distinct) > 1:
    earlier = "; ".join(summary(m) for m in distinct[:-1])
    machine["note"] = f"resumed on it; earlier epochs on {earlier}"
  return machine


def load_run(workdir: str) -> Run:
  """Reads a run's ``config.json`` (empty if absent), ``metrics.jsonl`` and machine record."""
  config_path = os.path.join(workdir, CONFIG_FILE)
  config: dict[str, Any] = {}
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return Run(
    workdir=workdir, config=config, records=read_metrics(workdir), machine=find_machine(workdir)
  )


def describe_machine(machine: Mapping[str, Any]) -> str:
  """One line: CPU, cores, jax / jaxlib; what a partial record lacks is said, not guessed."""
  if not machine:
    return "machine not recorded"
  if machine.get("jax") and machine.get("jaxlib"):
    text = summary(dict(machine))
  else:
    parts = [str(machine.get("cpu", "CPU not recorded"))]
    parts.append(f"{machine['cpu_cores']} cores" if machine.get("cpu_cores") else "cores?")
    parts.append("jax and jaxlib versions not recorded")
    text = ", ".join(parts)
  return f"{text} ({machine['note']})" if machine.get("note") else text


def machine_caption(runs: Iterable[Run]) -> str:
  """The line a report prints under its tables: every machine its runs were measured on."""
  lines = sorted({describe_machine(run.machine) for run in runs})
  return "Measured on: " + "; ".join(lines) + "."


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


def sample_std(values: np.ndarray, axis: int = 0) -> np.ndarray:
  """The sample standard deviation (ddof=1) along ``axis``, the tables' std; 0 for one value."""
  values = np.asarray(values, dtype=float)
  if values.shape[axis] < 2:
    return np.zeros(np.delete(values.shape, axis))
  return np.std(values, axis=axis, ddof=1)


def run_curves(runs: Sequence[Run], metric: str) -> tuple[np.ndarray, np.ndarray]:
  """Epochs every run reached, and ``metric`` there: one row per run."""
  series = [
    {r["epoch"]: r[metric] for r in run.records if r.get(metric) is not None} for run in runs
  ]
  epochs = sorted(set.intersection(*(set(s) for s in series))) if series else []
  values = np.array([[s[e] for e in epochs] for s in series], dtype=float)
  return np.array(epochs, dtype=int), values.reshape(len(series), len(epochs))


def mean_curve(runs: Sequence[Run], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Epochs, mean and sample std (ddof=1, as in the tables) of ``metric`` across runs.

  Only the epochs every run reached.
  """
  epochs, values = run_curves(runs, metric)
  if not epochs.size:
    return np.array([]), np.array([]), np.array([])
  return epochs, values.mean(axis=0), sample_std(values)


@dataclasses.dataclass(frozen=True)
class Panel:
  """One plot: ``metric`` per epoch for the groups in ``labels`` (``None``: every group).

  ``ylabel`` names the quantity and the point it is measured at (``x = y + r`` or ``y``).
  ``scale`` multiplies the values (100 shows a fraction in %). ``log_scale`` asks for a log axis,
  used only when the drawn values span more than a factor of ``LOG_SPAN`` (a narrower range reads
  better on a linear one); its ticks are plain numbers (0.3, 0.01), never 3x10^-1.
  Groups whose curves are equal in every run (views that report the same point, e.g. the test
  accuracy at the shared params) are drawn once, labelled ``same_label`` with ``{base}`` the
  trajectory's base optimizer.
  """

  metric: str
  ylabel: str
  labels: Sequence[str] | None = None
  title: str | None = None
  log_scale: bool = False
  scale: float = 1.0
  same_label: str = "{base}: every view"
  y_from: float | None = (
    None  # the linear y axis starts here (scaled units); lower values are off it
  )


LOG_SPAN = 3.0


def _trajectory_of(label: str) -> str:
  try:
    return trajectory(parse_views(label)[0].optimizer)
  except UserError:  # a label that is no optimizer name ("SGD + ASGD") is its own trajectory
    return label


def _merge_equal_curves(
  curves: Mapping[str, tuple[np.ndarray, np.ndarray]], same_label: str
) -> list[tuple[str, list[str]]]:
  """Groups labels whose per-run curves are equal; (legend label, members) in first-seen order."""
  merged: list[list[str]] = []
  for label, (epochs, values) in curves.items():
    for members in merged:
      other_epochs, other_values = curves[members[0]]
      if np.array_equal(epochs, other_epochs) and np.array_equal(values, other_values):
        members.append(label)
        break
    else:
      merged.append([label])
  out = []
  for members in merged:
    if len(members) == 1:
      out.append((members[0], members))
    else:
      bases = sorted({_trajectory_of(m) for m in members})
      out.append((same_label.format(base=", ".join(bases)), members))
  return out


def draw_panel(
  ax, groups: Mapping[str, Sequence[Run]], panel: Panel, ordered: Sequence[str]
) -> dict[str, str]:
  """Draws one panel's curves (mean, band of ± one sample std); returns each drawn label's colour.

  A group with no value to draw (no record of the metric, or none positive on a log axis) gets no
  line and no legend entry; equal curves are drawn and labelled once (see :class:`Panel`).
  """
  from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

  shown = [label for label in ordered if panel.labels is None or label in panel.labels]
  curves = {}
  for label in shown:
    epochs, values = run_curves(groups[label], panel.metric)
    values = values * panel.scale
    if epochs.size and np.isfinite(values).any() and (not panel.log_scale or (values > 0).any()):
      curves[label] = (epochs, values)
  drawn = [v[np.isfinite(v) & (v > 0)] for _, v in curves.values()]
  positive = np.concatenate(drawn) if drawn else np.array([])
  span = positive.max() / positive.min() if positive.size else 1.0
  colours: dict[str, str] = {}
  for legend, members in _merge_equal_curves(curves, panel.same_label):
    epochs, values = curves[members[0]]
    mean, std = values.mean(axis=0), sample_std(values)
    # A colour per position in the panel's list (drawn or not, so that a group keeps its colour
    # in every panel of that list); dashed after the tenth, so no two curves look alike.
    index = shown.index(members[0])
    colour, style = f"C{index % 10}", "-" if index < 10 else "--"
    marker = "o" if epochs.size == 1 else None  # a line of one point would not show
    ax.plot(epochs, mean, style, label=legend, linewidth=1.4, color=colour, marker=marker)
    if values.shape[0] > 1:
      ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    colours.update(dict.fromkeys(members, colour))
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel(panel.ylabel)
  if panel.title:
    ax.set_title(panel.title, fontsize=10)
  if panel.log_scale and span > LOG_SPAN:
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    if span < 10:  # less than a decade: label a few ticks between the powers of ten
      ax.yaxis.set_minor_locator(LogLocator(subs=(1.5, 2, 3, 4, 5, 7)))
      ax.yaxis.set_minor_formatter(plain)
    else:
      ax.yaxis.set_minor_formatter(NullFormatter())
  if panel.y_from is not None:
    ax.set_ylim(bottom=panel.y_from)
  ax.grid(alpha=0.3)
  if colours:
    # Two columns of short labels; long ones (a sweep's exchanges) one under the other.
    longest = max(len(text) for text in ax.get_legend_handles_labels()[1])
    ax.legend(
      loc="upper center",
      bbox_to_anchor=(0.5, -0.2),
      ncol=2 if longest <= 28 else 1,
      fontsize=8,
      frameon=False,
    )
  return colours


def band_note(groups: Mapping[str, Sequence[Run]]) -> str:
  """What the lines and bands of a figure are, for its caption."""
  seeds = sorted({len(runs) for runs in groups.values()})
  count = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}"
  if seeds[-1] < 2:
    return f"Lines: one run each ({count} seed)."
  return (
    f"Lines: mean over {count} seeds; bands: ± 1 sample standard deviation (ddof=1) across "
    "seeds, as in the tables."
  )


def plot_curves(
  groups: Mapping[str, Sequence[Run]],
  panels: Sequence[Panel],
  path: str,
  *,
  order: Sequence[str] | None = None,
  title: str | None = None,
  columns: int = 0,
) -> None:
  """Draws ``panels`` (``columns`` to a row; 0: one row) into a PNG, the band stated on it."""
  import matplotlib

  matplotlib.use("Agg")  # files only, no display needed
  import matplotlib.pyplot as plt

  ordered = [label for label in (order or []) if label in groups]
  ordered += [label for label in groups if label not in ordered]
  columns = columns or len(panels)
  rows = math.ceil(len(panels) / columns)
  fig, axes = plt.subplots(
    rows, columns, figsize=(4.3 * columns, 4.4 * rows), squeeze=False, layout="constrained"
  )
  for ax, panel in zip(axes.flat, panels, strict=False):
    draw_panel(ax, groups, panel, ordered)
  for ax in list(axes.flat)[len(panels) :]:
    ax.set_visible(False)
  note = band_note(groups)
  fig.suptitle(f"{title}\n{note}" if title else note, fontsize=11)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
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
) -> tuple[str, str]:
  """Two Markdown tables: per view, the paired gains' mean ± std (ddof=1) over seeds; then the
  gains per seed. Empty strings without gains."""
  if not gains:
    return "", ""
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
  return "\n".join(summary) + "\n", "\n".join(per_seed) + "\n"
