"""Markdown from the benchmark records: the goals table, then the measurements behind it.

Nothing here measures or judges: the records come from :mod:`benchmarks.run` and
:mod:`benchmarks.fsdp` and :mod:`benchmarks.wire_bytes`, the goals' verdicts from :mod:`benchmarks.goals`.
"""

from __future__ import annotations

from typing import Any

from benchmarks import wire_bytes


def markdown(results: dict[str, Any], with_goals: bool = True) -> str:
  """The goals table (unless ``with_goals`` is false), then the raw timings."""
  lines: list[str] = []
  if with_goals:
    lines += ["| what | goal | measured | met |", "|---|---|---|---|"]
    for row in results["goals"]:
      value = "skipped" if row["value"] is None else f"{row['value']:.3g}"
      lines.append(f"| {row['what']} | {row['goal']} | {value} | {row['met']} |")
    lines.append("")
  tree = results["resnet50_tree"]
  lines += [
    f"ResNet-50-shaped tree: {tree['leaves']} leaves, {tree['entries']:,} float32 entries. "
    f"Copy bandwidth: {results['bandwidth']['bytes_per_second'] / 1e9:.2f} GB/s.",
    "",
    "Step ms: one step per call, waited for. Looped: "
    f"{tree['looped_steps']} steps inside one call (a `fori_loop`), per step, which leaves out "
    "the host's per-call cost.",
    "",
    "| optimizer | step ms | x sgdm | share of bandwidth | looped step ms | x sgdm | "
    "share of bandwidth | compile s | state MB | temp MB |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, row in tree["optimizers"].items():
    mem = row["memory"]
    cells = [name]
    if "step_seconds" in row:
      cells += [
        f"{row['step_seconds'] * 1e3:.1f}",
        f"{row['step_ratio']:.2f}",
        f"{row['fraction_of_bandwidth']:.2f}",
        f"{row['looped_step_seconds'] * 1e3:.2f}",
        f"{row['looped_step_ratio']:.2f}",
        f"{row['looped_fraction_of_bandwidth']:.2f}",
        f"{row['compile_seconds']:.2f}",
      ]
    else:
      cells += ["-"] * 7
    cells += [f"{mem['state_bytes'] / 1e6:.1f}", f"{mem['temp_bytes'] / 1e6:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  topk = results["top_k"]
  lines += [
    "",
    f"Top-k of {topk['entries']:,} float32 entries, k = {topk['k']:,} "
    f"(ours equals lax.top_k's set: {topk['exact_match_with_lax']}):",
    "",
    "| selection | ms |",
    "|---|---|",
  ]
  for name in ("ours_keep_top_k", "lax_top_k", "lax_top_k_keep", "torch_topk", "torch_topk_keep"):
    if f"{name}_seconds" in topk:
      lines.append(f"| {name} | {topk[f'{name}_seconds'] * 1e3:.2f} |")
  if topk["note"]:
    lines.append(f"\n{topk['note']}")
  cnn = results["cnn_step"]
  lines += [
    "",
    f"Training step of {cnn['model']} ({cnn['source']}), batch {cnn['batch']}, "
    f"{cnn['pipelined_steps']} steps dispatched back to back: "
    f"sgdm {cnn['sgdm_seconds'] * 1e3:.1f} ms, RSGDm (residual_scale) "
    f"{cnn['rsgdm_seconds'] * 1e3:.1f} ms a step. Each step waited for on its own: sgdm "
    f"{cnn['blocked_sgdm_seconds'] * 1e3:.1f} ms, RSGDm {cnn['blocked_rsgdm_seconds'] * 1e3:.1f} ms "
    f"({cnn['blocked_step_ratio']:.3f}x; state arrays {cnn['state_arrays']['sgdm']} against "
    f"{cnn['state_arrays']['rsgdm']}). SGDm compiled twice: {cnn['control_ratio']:.3f}x.",
  ]
  if "schemes" in cnn:  # records from before the whole step was timed with each residual lack it
    lines += [
      "",
      "The same whole step with each residual (pipelined; temporaries and compile time of the "
      f"whole step; SGDm compiled twice compiles in {cnn['control_compile_ratio']:.2f}x):",
      "",
      "| whole step | ms a step | x sgdm | compile s | x sgdm | temp MB |",
      "|---|---|---|---|---|---|",
      *(
        f"| {name} | {row['seconds'] * 1e3:.1f} | {row['step_ratio']:.3f} | "
        f"{row['compile_seconds']:.1f} | {row['compile_ratio']:.2f} | "
        f"{row['temp_bytes'] / 1e6:.1f} |"
        for name, row in cnn["schemes"].items()
      ),
    ]
  # Records from before the FSDP and wire-bytes rows were measured lack them.
  if "fsdp" in results:
    lines += ["", *fsdp_lines(results["fsdp"])]
  if "wire_bytes" in results:
    lines += ["", *wire_bytes.markdown(results["wire_bytes"])]
    if "scaling" in results["wire_bytes"]:  # with --scaling-devices: a row per device count
      lines += ["", *wire_bytes.scaling_markdown(results["wire_bytes"]["scaling"])]
  lines += [
    "",
    f"Machine: {machine_line(results)}; medians of {results['rounds']} interleaved rounds.",
  ]
  settings = results["machine"].get("settings")
  if settings:
    lines.append("Measured with " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".")
  return "\n".join(lines)


def machine_line(results: dict[str, Any]) -> str:
  """The machine a record of :mod:`benchmarks.run` was measured on, as the record says it."""
  machine = results["machine"]
  if machine["backend"] == "cpu":
    model = (
      f"{machine['cpu']} ({machine['cpu_id']})" if machine.get("cpu") else "model not recorded"
    )
    where = f"{machine['processor']} CPU, {machine['cpu_count']} cores, {model}"
  else:
    where = f"{machine['device_kind']} ({machine['cpu_count']} host CPUs)"
  return f"{where}, jax {machine['jax']}"


def fsdp_lines(result: dict[str, Any]) -> list[str]:
  """The FSDP table (benchmarks/fsdp.py's records)."""
  mib = 1 << 20
  lines = [
    f"FSDP over {result['devices']} CPU devices (each leaf split on its largest dimension that "
    f"{result['devices']} divides; {result['replicated_leaves']} of {result['leaves']} leaves "
    f"replicated): {result['params_bytes'] / mib:.1f} MiB of params.",
    "",
    "| fsdp step | ms | x sgdm | compile s | x sgdm | all-gathered MiB | all-reduced KiB | "
    "state MiB / device | temp MiB / device |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, row in result["optimizers"].items():
    comm = row["collective_bytes"]
    lines.append(
      f"| {name} | {row['step_seconds'] * 1e3:.1f} | {row['step_ratio']:.2f} | "
      f"{row['compile_seconds']:.1f} | {row['compile_ratio']:.2f} | "
      f"{comm['all-gather'] / mib:.3f} | {comm['all-reduce'] / 1024:.1f} | "
      f"{row['state_bytes_per_device'] / mib:.2f} | {row['temp_bytes_per_device'] / mib:.2f} |"
    )
  return lines
