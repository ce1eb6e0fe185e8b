"""The paper's Table 2 (validation / test perplexity of AWD-LSTM on PTB) and Figure 6 (left) curves
from finished runs.

  python -m examples.language_modeling.report --output_dir=/tmp/awd_report /tmp/awd_lstm/*

Each argument is a run's workdir (``config.json``, ``metrics.jsonl``, ``results.json``, as written by
``train.py``). Runs of the same optimizer (several seeds) are averaged, ``mean ± std``. Writes
``table2.md`` (measured next to the paper's numbers) and ``curves.png`` (training and validation
perplexity per epoch, a dotted line where each optimizer switched to averaging).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from examples.common import report
from examples.language_modeling import train

# Table 2 of the paper: validation / test perplexity after 500 epochs of the full AWD-LSTM.
PAPER_TABLE2 = {
  "sgd": (61.41, 58.89),
  "rsgd-sign": (60.21, 57.85),
  "rsgd-topk": (61.01, 58.64),
  "rsgd-scale": (60.39, 58.26),
}
ORDER = tuple(PAPER_TABLE2)
# The paper's model and training: AWD-LSTM's PTB setting (configs/default.py).
PAPER_MODEL = {"embed_dim": 400, "hidden": 1150, "num_layers": 3, "num_epochs": 500}
PTB_VOCABULARY = 10_000
PTB_TRAIN_TOKENS = 929_589


def awd_lstm_parameters(embed_dim: int, hidden: int, num_layers: int, vocab: int) -> int:
  """Trainable parameters of AWD-LSTM: the embedding (tied with the decoder, which adds its
  bias) and LSTM layers of width ``hidden``, the last one ``embed_dim`` wide."""
  total = vocab * embed_dim + vocab
  for layer in range(num_layers):
    inputs = embed_dim if layer == 0 else hidden
    width = embed_dim if layer == num_layers - 1 else hidden
    total += 4 * width * (inputs + width) + 2 * 4 * width  # kernels, then two biases
  return total


def scale_note(config: dict[str, Any]) -> str:
  """Why the measured perplexity is far from the paper's: the model's size and the epochs.

  Empty for a config without the model's sizes (nothing to compare).
  """
  if any(key not in config for key in ("embed_dim", "hidden", "num_layers", "num_epochs")):
    return ""
  ours = awd_lstm_parameters(
    config["embed_dim"], config["hidden"], config["num_layers"], PTB_VOCABULARY
  )
  paper = awd_lstm_parameters(
    PAPER_MODEL["embed_dim"], PAPER_MODEL["hidden"], PAPER_MODEL["num_layers"], PTB_VOCABULARY
  )
  tokens = config.get("max_train_tokens") or PTB_TRAIN_TOKENS
  return (
    f"Why the measured perplexity is far above the paper's: this model has {ours / 1e6:.2f}M "
    f"parameters ({config['num_layers']} LSTM layers of {config['hidden']} on "
    f"{config['embed_dim']}-dimensional embeddings) against the paper's {paper / 1e6:.1f}M "
    f"({PAPER_MODEL['num_layers']} of {PAPER_MODEL['hidden']} on {PAPER_MODEL['embed_dim']}), "
    f"and trained {config['num_epochs']} epochs of {tokens:,} tokens against "
    f"{PAPER_MODEL['num_epochs']} epochs of all {PTB_TRAIN_TOKENS:,}. Compare the rows with "
    "each other, not with the paper's numbers.\n"
  )


def load_results(workdir: str) -> dict[str, Any]:
  """A run's ``results.json``; a clear error if the run has not finished."""
  path = os.path.join(workdir, train.RESULTS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} is missing: the run in {workdir} has not finished (train.py writes it at the end)."
    )
  with open(path) as f:
    return json.load(f)


def _cell(values: Sequence[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def best_before_switch(records: Sequence[dict[str, Any]]) -> float:
  """The best validation perplexity measured while averaging was off (NaN if there is none)."""
  values = [r["val_ppl"] for r in records if not r.get("averaging") and r.get("val_ppl")]
  return min(values) if values else float("nan")


def table2(results: Sequence[dict[str, Any]], runs: Sequence[report.Run] | None = None) -> str:
  """Markdown: one row per optimizer, measured ``val / test`` PPL next to the paper's Table 2.

  With ``runs`` (in the order of ``results``), a column gives the best validation PPL before the
  switch to averaging (the SGD / RSGD phase).
  """
  groups: dict[str, list[dict[str, Any]]] = {}
  before: dict[str, list[float]] = {}
  for index, result in enumerate(results):
    groups.setdefault(result["optimizer"], []).append(result)
    if runs is not None:
      before.setdefault(result["optimizer"], []).append(best_before_switch(runs[index].records))
  names = [n for n in ORDER if n in groups] + sorted(n for n in groups if n not in ORDER)
  extra = " best val PPL before the switch |" if runs is not None else ""
  lines = [
    "| PTB | PPL val / test (measured) | switch epoch |"
    + extra
    + " PPL val / test (paper, Table 2) |",
    "|---|---|---|" + ("---|" if runs is not None else "") + "---|",
  ]
  for name in names:
    entries = groups[name]
    measured = (
      f"{_cell([r['val_ppl'] for r in entries])} / {_cell([r['test_ppl'] for r in entries])}"
    )
    switches = ", ".join(
      "none" if r["switch_epoch"] is None else f"{r['switch_epoch']} ({r.get('switched_by')})"
      for r in entries
    )
    paper = PAPER_TABLE2.get(name)
    paper_cell = f"{paper[0]:.2f} / {paper[1]:.2f}" if paper else "-"
    label = train.TABLE_NAMES.get(name, name)
    if len(entries) > 1:
      label += f" (n={len(entries)})"
    middle = f" {_cell(before[name])} |" if runs is not None else ""
    lines.append(f"| {label} | {measured} | {switches} |{middle} {paper_cell} |")
  return "\n".join(lines) + "\n"


def plot(runs: Sequence[report.Run], results: Sequence[dict[str, Any]], path: str) -> None:
  """Training and validation perplexity per epoch (log scale), mean over seeds, with the epoch
  after which each optimizer switched to averaging marked."""
  import matplotlib

  matplotlib.use("Agg")  # files only, no display needed
  import matplotlib.pyplot as plt

  named = {
    train.TABLE_NAMES.get(name, name): group
    for name, group in report.group_runs(runs, key="optimizer").items()
  }
  switches: dict[str, list[int]] = {}
  for result in results:
    if result["switch_epoch"] is not None:
      label = train.TABLE_NAMES.get(result["optimizer"], result["optimizer"])
      switches.setdefault(label, []).append(result["switch_epoch"])
  order = [train.TABLE_NAMES.get(n, n) for n in ORDER]
  ordered = [n for n in order if n in named] + sorted(n for n in named if n not in order)
  panels = (
    report.Panel(
      "train_ppl",
      "training perplexity at y (the params)",
      log_scale=True,
      same_label="every view (one trajectory y)",
    ),
    report.Panel("val_ppl", "validation perplexity at x (or its average)", log_scale=True),
  )
  # One above the other: the docs' column keeps the legends legible.
  fig, axes = plt.subplots(2, 1, figsize=(6.4, 8.4), layout="constrained")
  for ax, panel in zip(axes, panels, strict=True):
    colours = report.draw_panel(ax, named, panel, ordered)
  # The switches on the validation panel only: there each view has its own line and colour.
  for label, epochs in switches.items():
    for epoch in epochs:
      axes[1].axvline(epoch + 0.5, color=colours.get(label, "gray"), linestyle=":", linewidth=1)
  fig.suptitle(
    "AWD-LSTM on PTB (dotted: each view's switch to averaging)\n" + report.band_note(named),
    fontsize=11,
  )
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(workdirs: Sequence[str], output_dir: str) -> str:
  """Writes ``table2.md`` and ``curves.png`` into ``output_dir``; returns the table."""
  if not workdirs:
    raise ValueError("No run directories given: pass the workdirs of finished runs.")
  results = [load_results(w) for w in workdirs]
  runs = [report.load_run(w) for w in workdirs]
  table = table2(results, runs)
  note = scale_note(runs[0].config)
  table += "\n" + note if note else ""
  table += "\n" + report.machine_caption(runs) + "\n"
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "table2.md"), "w") as f:
    f.write(table)
  plot(runs, results, os.path.join(output_dir, "curves.png"))
  return table


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  print(write_report(argv[1:], FLAGS.output_dir))


if __name__ == "__main__":
  # Defined only when run as a script, so that importing this module (tests, other reports) does
  # not claim absl flag names that other examples' modules also use.
  flags.DEFINE_string("output_dir", "awd_lstm_report", "Where table2.md and curves.png go.")
  app.run(main)
