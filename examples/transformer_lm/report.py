"""The transformer's table and figure: validation perplexity of AdamW and each residual view.

  python -m examples.transformer_lm.report --output_dir=examples/transformer_lm/results \\
    /tmp/transformer_lm/seed_0 /tmp/transformer_lm/seed_1 /tmp/transformer_lm/seed_2

Each argument is one training's workdir (one seed, every view in a folder of its own). Writes
``table.md`` (each view's validation perplexity early, mid and late, mean ± sample std over seeds;
the paired change of each view against AdamW on the same seed; the unigram model's perplexity on the
same tokens as the floor to beat) and ``curves.png`` (validation perplexity against steps, and the
paired change).

"Early", "mid" and "late" are the thirds of the evaluations; in each, a view's value is its best
(lowest) validation perplexity there, and its paired change the view's value minus AdamW's on the
same seed: negative is better.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from examples.common import report
from examples.language_modeling.input_pipeline import load_corpus

BASE = "adamw"
RANGE_NAMES = ("early", "mid", "late")


def find_views(trainings: Sequence[str]) -> list[report.Run]:
  """The runs of every view folder (``<training>/<view>/metrics.jsonl``) of the trainings given."""
  runs = []
  for training in trainings:
    for name in sorted(os.listdir(training)):
      folder = os.path.join(training, name)
      if os.path.isfile(os.path.join(folder, "metrics.jsonl")):
        runs.append(report.load_run(folder))
  if not runs:
    raise app.UsageError(f"No view folders with metrics.jsonl under {list(trainings)}.")
  return runs


def unigram_perplexity(data_source: str, max_eval_tokens: int) -> float:
  """Perplexity on the validation tokens the runs were scored on, of word frequencies counted on
  the training text (add-one smoothing): the model that ignores context, the floor to beat."""
  corpus = load_corpus(data_source)
  counts = np.bincount(corpus.train, minlength=corpus.vocab_size).astype(np.float64) + 1.0
  log_prob = np.log(counts / counts.sum())
  valid = corpus.valid[:max_eval_tokens] if max_eval_tokens > 0 else corpus.valid
  return math.exp(-float(np.mean(log_prob[valid[1:]])))


def view_order(runs: Sequence[report.Run], groups: dict[str, list[report.Run]]) -> list[str]:
  """AdamW first, then the views as the training's config lists them (then any other)."""
  listed = [name for name in runs[0].config.get("views", []) if name in groups and name != BASE]
  return [BASE, *listed, *sorted(set(groups) - {BASE, *listed})]


def _steps_of(runs: Sequence[report.Run], ranges: Sequence[tuple[int, int]]) -> list[str]:
  steps = {r["epoch"]: r["step"] for r in runs[0].records}
  return [f"{RANGE_NAMES[i]} (steps {steps[lo]}-{steps[hi]})" for i, (lo, hi) in enumerate(ranges)]


def make_tables(runs: Sequence[report.Run], unigram: float | None) -> str:
  """``table.md``: perplexities, paired changes against AdamW, per seed, and the machine."""
  groups = report.group_runs(runs)
  if BASE not in groups:
    raise app.UsageError(f"The runs hold no {BASE!r} view to compare the others with.")
  order = view_order(runs, groups)
  evaluations = min(len(run.records) for run in runs)
  ranges = report.epoch_thirds(evaluations)
  labels = _steps_of(groups[BASE], ranges)
  seeds = sorted({run.config.get("seed") for run in runs})

  lines = [
    f"Validation perplexity (best in each third of the {evaluations} evaluations), mean ± "
    f"sample std over {len(seeds)} seeds ({', '.join(map(str, seeds))}):",
    "",
    "| view | " + " | ".join(labels) + " |",
    "|---|" + "---|" * len(labels),
  ]
  summary = report.summarize(groups, "val_ppl", ranges, mode="min")
  for name in order:
    lines.append(f"| {name} | " + " | ".join(c.format(1.0, 1) for c in summary[name]) + " |")
  if unigram is not None:
    lines += ["", f"Unigram model on the same validation tokens: {unigram:.1f}."]

  gains = [g for g in report.paired_gains(runs, "val_ppl", ranges, mode="min") if g.base == BASE]
  lines += [
    "",
    "Paired change against AdamW (view minus AdamW on the same seed; negative: the view is "
    "better), mean ± sample std, and how many seeds it is negative on:",
    "",
    "| view - adamw | " + " | ".join(labels) + " |",
    "|---|" + "---|" * len(labels),
  ]
  for name in order[1:]:
    values = np.array([g.gains for g in gains if g.view == name], dtype=float)
    if not values.size:
      continue
    std = report.sample_std(values)
    cells = [
      f"{mean:+.1f} ± {s:.1f} ({int(np.sum(column < 0))}/{len(column)})"
      for mean, s, column in zip(values.mean(axis=0), std, values.T, strict=True)
    ]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  _, per_seed = report.gains_markdown(gains, ranges, scale=1.0, order=order[1:])
  lines += ["", "Per seed:", "", per_seed.replace("epoch ", "evaluations ")]
  last = summary[BASE][-1]
  lines += [
    "",
    f"AdamW's last-third validation perplexity: {last.mean:.1f} ± {last.std:.1f}. "
    + report.machine_caption(runs),
  ]
  return "\n".join(lines) + "\n"


def plot(runs: Sequence[report.Run], path: str) -> None:
  """Two panels against steps: validation perplexity (log), and each view's paired change."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

  groups = report.group_runs(runs)
  order = view_order(runs, groups)
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
  base_curves: dict[Any, dict[int, float]] = {
    run.config.get("seed"): {r["step"]: r["val_ppl"] for r in run.records} for run in groups[BASE]
  }
  for index, name in enumerate(order):
    # AdamW in black, drawn over the views: most of them lie on it.
    colour = "black" if name == BASE else f"C{index % 10}"
    steps, values = _curves(groups[name])
    mean, std = values.mean(axis=0), report.sample_std(values)
    on_top = {"linestyle": "--", "linewidth": 1.6, "zorder": 5} if name == BASE else {}
    left.plot(steps, mean, color=colour, label=name, **{"linewidth": 1.4, **on_top})
    left.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    if name == BASE:
      continue
    changes = np.array(
      [
        [r["val_ppl"] - base_curves[run.config.get("seed")][r["step"]] for r in run.records]
        for run in groups[name]
      ]
    )
    mean, std = changes.mean(axis=0), report.sample_std(changes)
    right.plot(steps, mean, color=colour, label=f"{name} - {BASE}", linewidth=1.4)
    right.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
  left.set_yscale("log")
  left.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
  left.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
  left.yaxis.set_minor_formatter(NullFormatter())
  left.set_title("Validation perplexity at each view's point (mean ± std over seeds)", fontsize=10)
  right.axhline(0.0, color="black", linewidth=0.8)
  right.set_yscale("symlog", linthresh=10)
  right.set_title("Paired change against AdamW (negative: better)", fontsize=10)
  for ax in (left, right):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
  left.set_ylabel("validation perplexity")
  right.set_ylabel("view minus AdamW")
  fig.text(0.01, 0.01, report.machine_caption(runs), fontsize=7)
  fig.tight_layout(rect=(0, 0.03, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _curves(runs: Sequence[report.Run]) -> tuple[np.ndarray, np.ndarray]:
  """Steps every run reached and its validation perplexity there, one row per run."""
  series = [{r["step"]: r["val_ppl"] for r in run.records} for run in runs]
  steps = sorted(set.intersection(*(set(s) for s in series)))
  return np.array(steps), np.array([[s[t] for t in steps] for s in series], dtype=float)


def write_report(trainings: Sequence[str], output_dir: str, *, unigram: bool = True) -> str:
  """Writes ``table.md`` and ``curves.png`` into ``output_dir``; returns the table."""
  runs = find_views(trainings)
  config = runs[0].config
  floor = (
    unigram_perplexity(config["data_source"], int(config.get("max_eval_tokens", 0)))
    if unigram
    else None
  )
  table = make_tables(runs, floor)
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "table.md"), "w") as f:
    f.write(table)
  plot(runs, os.path.join(output_dir, "curves.png"))
  return table


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) < 2:
    raise app.UsageError("Give one or more training workdirs (one per seed).")
  print(write_report(argv[1:], FLAGS.output_dir))


if __name__ == "__main__":
  # Defined here, not at import: the families' reports share a test process.
  flags.DEFINE_string("output_dir", "transformer_report", "Where table.md and curves.png go.")
  app.run(main)
