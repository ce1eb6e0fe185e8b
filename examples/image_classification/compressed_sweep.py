"""Trains a sweep over ``config.sweep.grad_compressions`` and reports what compression does to training.

Each name in ``config.sweep.grad_compressions`` is an exchange: a ``config.grad_compression`` value
(``none``, ``sign``, ``sign-noef``, ``topk@0.01``), or a key of ``config.sweep.variants``, whose
entry sets its ``label``, the config fields it ``overrides`` (the exchange and its recipe:
``compression_exchange``, ``compression_exact_below``, ...) and, if not every seed, its ``seeds``.
Each is an ordinary sweep (:mod:`sweep`: ``config.sweep.optimizers`` x its seeds, views of one
trajectory in one training) in ``<workdir>/<name>``; seeds are the outer loop, so an interrupted
sweep has whole seeds of every exchange, and rerunning the command resumes it. The exact mean,
which the paired differences are taken against, is the name ``none``. Then:

* ``<workdir>/report/table.md``: per exchange and view, the best test accuracy in each third of the
  epochs (mean ± sample std over seeds, as the other tables), each exchange's paired difference to
  the exact mean (same seed: same initialization and data order), and the bytes each device sends
  per step, two ways: read from the compiled train step's HLO (every collective, ring algorithms:
  :func:`examples.common.hlo.collectives`), and the gradient exchange alone computed from the wire
  formats (:func:`gradient_bytes`);
* ``<workdir>/report/curves.png``: training loss and test accuracy per epoch of each exchange, at the
  base's params ``y`` and at the last view's point ``x``, and with error feedback the memory ratio
  (two panels to a row, for the docs' column; ``config.sweep.accuracy_axis_from``, in %, starts
  the accuracy axes there when a collapsed run would flatten the others).

The device count is fixed when JAX starts; on a CPU::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m \\
    examples.image_classification.compressed_sweep \\
    --config=examples/image_classification/configs/fashion_mnist_compressed.py \\
    --workdir=runs/compressed
"""

import copy
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from examples.common import compression, report, sharding
from examples.common.errors import UserError
from examples.common.hlo import collectives
from examples.image_classification import compare, compressed_train, input_pipeline, sweep, train
from examples.image_classification.report import find_runs

FLAGS = flags.FLAGS
MIB = 2**20
LABELS = {
  "none": "exact mean",
  "sign": "sign + EF",
  "sign-noef": "sign, no EF",
}


def exchange_label(value: str, config: ml_collections.ConfigDict | None = None) -> str:
  """``"topk@0.01"`` -> ``"top-1% + EF"``; the others from :data:`LABELS`, or a variant's label."""
  variants = config.sweep.get("variants") if config is not None else None
  if variants and value in variants:
    return str(variants[value].label)
  if value in LABELS:
    return LABELS[value]
  parsed = compression.parse(value)
  assert parsed is not None and parsed.fraction is not None
  return f"top-{parsed.fraction * 100:g}%" + (" + EF" if parsed.error_feedback else ", no EF")


def gradient_bytes(value: str, shapes: Sequence[tuple[int, ...]], devices: int) -> float:
  """Bytes one device sends per step to exchange the gradient, from the wire formats (ring).

  ``none``: an all-reduce of every float32 entry, ``2 (P - 1) / P * 4 N``. ``sign``: an all-gather
  of the packed bits (``ceil(N / 8)`` bytes) and one float32 scale per leaf, ``(P - 1)`` times
  that. ``topk@F``: an all-gather of ``max(1, round(F n))`` (int32 index, float32 value) pairs per
  leaf of ``n`` entries, ``(P - 1) * 8 k``.
  """
  sizes = [math.prod(s) for s in shapes]
  parsed = compression.parse(value)
  if parsed is None:
    return 2 * (devices - 1) / devices * 4 * sum(sizes)
  if parsed.scheme == "sign":
    return (devices - 1) * (math.ceil(sum(sizes) / 8) + 4 * len(sizes))
  pairs = sum(max(1, round(parsed.fraction * n)) for n in sizes)
  return (devices - 1) * 8 * pairs


def _without_options(config: ml_collections.ConfigDict) -> bool:
  return config.get("compression_exchange", "all_gather") == "all_gather" and not any(
    config.get(f"compression_{field}", 0) for field in ("exact_below", "exact_steps", "block_size")
  )


def step_bytes(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The bytes each device sends in one compiled train step of ``config``, read from its HLO."""
  data = input_pipeline.create_input(config)
  mesh = sharding.create_mesh(config.num_devices, config.platform or None)
  mean, std = train._floats(data.mean), train._floats(data.std)
  if compression.parse(config.grad_compression) is None:
    spec = train.OptimizerSpec.from_config(config, data.steps_per_epoch)
    tx, _ = spec.build()
    graphdef, state = train.init_state(config, data.num_classes, data.image_shape, tx, mesh)
    steps = train.make_steps(graphdef, spec, mean, std, mesh, config.sharding)
  else:
    cspec = compressed_train.CompressedSpec.from_config(config, data.steps_per_epoch)
    tx, _ = cspec.build()
    graphdef, state = compressed_train.init_state(
      config, data.num_classes, data.image_shape, tx, mesh, cspec.axis
    )
    steps = compressed_train.make_steps(graphdef, cspec, mean, std, mesh)
  batch = NamedSharding(mesh, P("data"))
  images = jax.ShapeDtypeStruct((config.batch_size, *data.image_shape), np.uint8, sharding=batch)
  labels = jax.ShapeDtypeStruct((config.batch_size,), np.int32, sharding=batch)
  hlo = steps.train.lower(state, images, labels).compile().as_text()
  found = collectives(hlo)
  shapes = [tuple(p.shape) for p in jax.tree.leaves(state["params"])]
  return {
    "hlo_bytes": sum(c["bytes_sent"] for c in found),
    "hlo_ops": sorted({c["op"] for c in found}),
    # The formats' count covers the all-gather exchange without the recipe's options.
    "gradient_bytes": gradient_bytes(config.grad_compression, shapes, mesh.size)
    if _without_options(config)
    else None,
    "entries": sum(math.prod(s) for s in shapes),
    "leaves": len(shapes),
    "devices": mesh.size,
  }


def overrides(config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
  """The config fields exchange ``name`` sets: its variant's, or ``grad_compression=name``."""
  variants = config.sweep.get("variants")
  if variants and name in variants:
    return dict(variants[name].overrides)
  return {"grad_compression": name}


def seeds_of(config: ml_collections.ConfigDict, name: str) -> tuple[int, ...]:
  """The seeds exchange ``name`` trains: its variant's ``seeds``, or every seed of the sweep."""
  variants = config.sweep.get("variants")
  if variants and name in variants and variants[name].get("seeds"):
    return tuple(variants[name].seeds)
  return tuple(config.sweep.seeds)


def run_config(config: ml_collections.ConfigDict, value: str) -> ml_collections.ConfigDict:
  """``config`` with exchange ``value``'s fields (:func:`overrides`)."""
  run = copy.deepcopy(config)
  with run.unlocked():
    run.update(overrides(config, value))
  return run


def run_all(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Every (seed, exchange) training; seeds outer, so partial sweeps have whole seeds."""
  for seed in config.sweep.seeds:
    for value in config.sweep.grad_compressions:
      if seed not in seeds_of(config, value):
        continue
      one = run_config(config, value)
      with one.unlocked():
        one.sweep.seeds = (seed,)
      logging.getLogger(__name__).info("seed %d, exchange %s", seed, value)
      sweep.run_sweep(one, os.path.join(workdir, value))


def _runs_by_label(config: ml_collections.ConfigDict, workdir: str) -> dict[str, list[report.Run]]:
  """``"<exchange label>: <view>"`` -> its runs (one per seed)."""
  groups: dict[str, list[report.Run]] = {}
  for value in config.sweep.grad_compressions:
    root = os.path.join(workdir, value)
    if not os.path.isdir(root):
      continue
    for run in (report.load_run(d) for d in find_runs([root])):
      label = f"{exchange_label(value, config)}: {run.config['optimizer']}"
      groups.setdefault(label, []).append(run)
  return groups


def make_table(
  config: ml_collections.ConfigDict,
  groups: Mapping[str, list[report.Run]],
  wire: Mapping[str, Mapping[str, Any]],
) -> str:
  """The Markdown of ``table.md``."""
  ranges = report.epoch_thirds(config.num_epochs)
  columns = " | ".join(report.range_label(lo, hi) for lo, hi in ranges)
  lines = [
    f"| exchange | view | seeds | {columns} | memory ratio, last epoch | MiB sent / device / step "
    "(HLO) | gradient MiB (formats) | x fewer (HLO) |",
    "|---|---|---|" + "---|" * len(ranges) + "---|---|---|---|",
  ]
  exact_bytes = wire["none"]["hlo_bytes"] if "none" in wire else math.nan
  # label -> {seed: best in each range}
  best: dict[str, dict[int, np.ndarray]] = {}
  for value in config.sweep.grad_compressions:
    for view in config.sweep.optimizers:
      label = f"{exchange_label(value, config)}: {view}"
      runs = sorted(groups.get(label, []), key=lambda r: r.config.get("seed", 0))
      if not runs:
        continue
      values = np.array(
        [report.best_in_ranges(r.records, "test_accuracy", ranges) for r in runs], float
      )
      best[label] = {int(r.config.get("seed", 0)): v for r, v in zip(runs, values, strict=True)}
      std = report.sample_std(values)
      cells = " | ".join(
        f"{m * 100:.2f} ± {s * 100:.2f}" for m, s in zip(values.mean(0), std, strict=True)
      )
      ratios = [r.records[-1].get("memory_ratio") for r in runs]
      ratio = "-" if None in ratios else f"{np.mean(ratios):.2f}"
      w = wire[value]
      formats = f"{w['gradient_bytes'] / MIB:.4f}" if w.get("gradient_bytes") is not None else "-"
      lines.append(
        f"| {exchange_label(value, config)} | {view} | {len(runs)} | {cells} | {ratio} "
        f"| {w['hlo_bytes'] / MIB:.4f} | {formats} | {exact_bytes / w['hlo_bytes']:.1f} |"
      )
  # Each exchange against the exact mean, seed by seed (the same initialization and data order).
  diffs = [
    f"| exchange - exact mean | view | seeds | {columns} |",
    "|---|---|---|" + "---|" * len(ranges),
  ]
  for value in config.sweep.grad_compressions:
    if value == "none":
      continue
    for view in config.sweep.optimizers:
      label = f"{exchange_label(value, config)}: {view}"
      exact = f"{exchange_label('none', config)}: {view}"
      if label not in best or exact not in best:
        continue
      seeds = sorted(best[label].keys() & best[exact].keys())
      if not seeds:
        continue
      gains = np.array([best[label][s] - best[exact][s] for s in seeds]) * 100
      std = report.sample_std(gains)
      cells = " | ".join(f"{m:+.2f} ± {s:.2f}" for m, s in zip(gains.mean(0), std, strict=True))
      diffs.append(f"| {exchange_label(value, config)} | {view} | {len(gains)} | {cells} |")
  entries = next(iter(wire.values()))
  runs = [run for rs in groups.values() for run in rs]
  return (
    "Best test accuracy (%) in each range, mean ± sample std over seeds; the memory ratio "
    "(rsgd.memory_ratio, max over devices of ||e_i|| / ||g_i + e_i||) as the last epoch's mean "
    "over its steps; bytes each device sends "
    f"per train step on {entries['devices']} devices ({entries['entries']:,} parameters in "
    f"{entries['leaves']} leaves).\n\n"
    + "\n".join(lines)
    + "\n\nPaired difference to the exact mean (percentage points of best test accuracy in each "
    "range; the same seed, so the same initialization and data order), mean ± std over seeds:\n\n"
    + "\n".join(diffs)
    + "\n\nMiB sent (HLO): every collective of the compiled train step (the gradient exchange, "
    "batch norm's per-channel moments of the global batch, the loss and accuracy), ring "
    "algorithms (examples/common/hlo.py). Gradient MiB (formats): the gradient exchange alone "
    "from its wire format (float32 all-reduce; packed sign bits and a float32 scale per leaf; "
    "int32 index + float32 value pairs), for the all-gather exchange without options.\n\n"
    + report.machine_caption(runs)
    + "\n"
  )


def plot(
  config: ml_collections.ConfigDict, groups: Mapping[str, list[report.Run]], path: str
) -> None:
  base, view = config.sweep.optimizers[0], config.sweep.optimizers[-1]
  at_y = [f"{exchange_label(v, config)}: {base}" for v in config.sweep.grad_compressions]
  at_x = [f"{exchange_label(v, config)}: {view}" for v in config.sweep.grad_compressions]
  # One colour per exchange in every panel: each panel lists only its view's labels, in order.
  # ``sweep.accuracy_axis_from`` (%) starts the accuracy axes there, so that a collapsed run at
  # chance does not flatten the others' differences.
  floor = config.sweep.get("accuracy_axis_from")
  from_text = f" (axis from {floor:g}%)" if floor is not None else ""
  panels = [
    report.Panel(
      "train_loss", "training loss at y, the params", at_y, f"{base}: training loss", log_scale=True
    ),
    report.Panel(
      "test_accuracy",
      "test accuracy at y, the params (%)",
      at_y,
      f"{base}: test accuracy{from_text}",
      scale=100,
      y_from=floor,
    ),
    report.Panel(
      "train_loss",
      "training loss at x = y + r",
      at_x,
      f"{view} view: training loss",
      log_scale=True,
    ),
    report.Panel(
      "test_accuracy",
      "test accuracy at x = y + r (%)",
      at_x,
      f"{view} view: test accuracy{from_text}",
      scale=100,
      y_from=floor,
    ),
  ]
  if any(r.records and "memory_ratio" in r.records[-1] for rs in groups.values() for r in rs):
    panels.append(
      report.Panel(
        "memory_ratio",
        "memory ratio ||e|| / ||g + e||, epoch mean",
        at_y,
        "error feedback: the memory against what it is added to",
        log_scale=True,
      )
    )
  report.plot_curves(groups, panels, path, order=at_y + at_x, title=config.sweep.title, columns=2)


def write_report(config: ml_collections.ConfigDict, workdir: str, output_dir: str = "") -> str:
  """Writes ``table.md`` and ``curves.png`` to ``output_dir`` (default ``<workdir>/report``)."""
  groups = _runs_by_label(config, workdir)
  if not groups:
    raise UserError(f"No run of the sweep under {workdir}: nothing to report.")
  wire = {}
  for value in config.sweep.grad_compressions:
    one = run_config(config, value)
    with one.unlocked():
      one.optimizer = ",".join(config.sweep.optimizers)
    wire[value] = step_bytes(one)
  output_dir = output_dir or os.path.join(workdir, "report")
  os.makedirs(output_dir, exist_ok=True)
  table = make_table(config, groups, wire)
  with open(os.path.join(output_dir, "table.md"), "w") as f:
    f.write(table)
  plot(config, groups, os.path.join(output_dir, "curves.png"))
  return table


def main(argv: list[str]) -> None:
  started = compare.start(argv)
  if not FLAGS.report_only:
    run_all(FLAGS.config, FLAGS.workdir)
  print(write_report(FLAGS.config, FLAGS.workdir, FLAGS.output_dir))
  report_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir, "report")
  print(
    f"{time.time() - started:.0f}s. Table: {report_dir}/table.md, figure: {report_dir}/curves.png"
  )


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Root directory of the sweep's runs.")
  flags.DEFINE_bool("report_only", False, "Only write the report of the runs already there.")
  # --output_dir (where table.md and curves.png go; empty: <workdir>/report) is the flag the
  # imported examples.image_classification.report defines.
  config_flags.DEFINE_config_file(
    "config", None, "A config with sweep.grad_compressions.", lock_config=True
  )
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
