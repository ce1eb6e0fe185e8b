"""One source for the cost figures: the benchmark records in ``benchmarks/results/*.json``.

The README's cost figures, the tables of ``benchmarks/BENCHMARKS.md`` and the docs' cost tables are
made from the records that ``python -m benchmarks.run`` and ``python -m benchmarks.wire_bytes``
wrote; nothing quotes a measured ratio by hand. Two forms, checked by ``docs/cost_figures_test.py``:

- **Generated blocks.** Text between ``<!-- cost-block:NAME -->`` and ``<!-- /cost-block -->`` in
  a Markdown file is ``BLOCKS[NAME]()``. Rewrite them after a re-measure::

    python docs/cost_figures.py          # rewrites the blocks in README.md, BENCHMARKS.md, docs/
    python docs/cost_figures.py --check  # exits 1, naming the block, if one is stale

- **Marked numbers in prose.** ``2.29x<!-- cost:cpu:resnet50_tree.optimizers.residual_sign.looped_step_ratio -->``
  says that the number before the marker is that value of ``benchmarks/results/cpu.json``, as
  printed (rounded to the digits shown). Any Markdown file may use it (BENCHMARKS.md's prose too).

The docs build renders the cost tables of ``docs/how_it_works.md`` with :func:`cost_table`.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the benchmarks package renders their records
  sys.path.insert(0, str(ROOT))

from benchmarks import render, wire_bytes  # noqa: E402

BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
# The Markdown files whose blocks and marked numbers are checked.
CHECKED_FILES = (
  "README.md",
  "benchmarks/BENCHMARKS.md",
  *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
)
# Results that predate later changes to what they measure: said wherever they are quoted.
# Remove an entry when its file is re-measured.
PREDATES = {
  "gpu-h100": "measured on 2026-11-24, before the top-k changes (16-bit indices, grouped "
  "suffix sums); not re-measured since",
  **{
    key: "measured on 2026-11-24 with the two-engine top-k that the one engine replaced; "
    "not re-measured since"
    for key in (
      "cpu-allocator-glibc",
      "cpu-allocator-tcmalloc",
      "cpu-allocator-hugetlb",
      "cpu-sequential-schedule",
    )
  },
}
BLOCK = re.compile(r"(<!-- cost-block:([\w-]+) -->\n)(.*?)(<!-- /cost-block -->)", re.S)
MARKED = re.compile(r"([-+]?\d[\d,]*(?:\.\d+)?)\s*(?:x|%|ms|MB)?\s*<!-- cost:([\w-]+):([\w.]+) -->")


def load(key: str) -> dict[str, Any]:
  """``benchmarks/results/<key>.json``."""
  return json.loads((RESULTS / f"{key}.json").read_text())


def lookup(results: dict[str, Any], path: str) -> Any:
  """The value at a dotted path (``resnet50_tree.optimizers.residual_sign.step_ratio``)."""
  value: Any = results
  for part in path.split("."):
    value = value[part]
  return value


machine_line = render.machine_line


def cost_table(key: str) -> str:
  """The cost of each residual against SGDm from one results file (the docs' tables)."""
  results = load(key)
  tree = results["resnet50_tree"]
  lines = [
    "| optimizer | step time, x SGDm | looped step time, x SGDm | compile time, x SGDm "
    "| optimizer memory beyond SGDm, x params |",
    "|---|---|---|---|---|",
  ]
  for name, row in tree["optimizers"].items():
    memory = f"{row['memory']['state_beyond_sgdm_per_params_bytes']:.2f}"
    if "step_ratio" in row:
      times = [f"{row[k]:.2f}" for k in ("step_ratio", "looped_step_ratio", "compile_ratio")]
    else:
      times = ["-", "-", "-"]
    lines.append(f"| `{name}` | " + " | ".join([*times, memory]) + " |")
  cnn = results["cnn_step"]
  lines += [
    "",
    f"ResNet-50-shaped tree of {tree['entries']:,} float32 entries in {tree['leaves']} leaves; "
    f"looped: {tree['looped_steps']} steps inside one call. Whole training step of "
    f"{cnn['model']} at batch {cnn['batch']}: RSGDm (`residual_scale`) takes "
    f"{cnn['step_ratio']:.2f}x SGDm's time. Machine: {machine_line(results)}; medians of "
    f"{results['rounds']} interleaved rounds (`benchmarks/results/{key}.json`).",
  ]
  if key in PREDATES:
    lines += ["", f"**Stale:** {PREDATES[key]}."]
  return "\n".join(lines) + "\n"


SCHEMES = (("scale", "residual_scale"), ("sign", "residual_sign"), ("top-k", "residual_topk"))


def readme_costs() -> str:
  """The README's device-time figures: per scheme, per call and looped, CPU and H100."""
  cpu, gpu = load("cpu"), load("gpu-h100")
  cnn_cpu, cnn_gpu = cpu["cnn_step"], gpu["cnn_step"]
  lines = [
    f"| residual | CPU: step | CPU: {cpu['resnet50_tree']['looped_steps']} steps in one call "
    f"| CPU: whole {cnn_cpu['model']} step (batch {cnn_cpu['batch']}) | H100: step "
    f"| H100: {gpu['resnet50_tree']['looped_steps']} steps in one call "
    f"| H100: whole step (batch {cnn_gpu['batch']}) |",
    "|---|---|---|---|---|---|---|",
  ]
  for label, name in SCHEMES:
    cells = []
    for results in (cpu, gpu):
      row = results["resnet50_tree"]["optimizers"][name]
      cells += [f"{row['step_ratio']:.2f}x", f"{row['looped_step_ratio']:.2f}x"]
      schemes = results["cnn_step"].get("schemes", {})
      if name in schemes:
        whole = schemes[name]
        cells.append(f"{whole['step_ratio']:.2f}x (compile {whole['compile_ratio']:.2f}x)")
      elif name == "residual_scale":
        cells.append(f"{results['cnn_step']['step_ratio']:.2f}x")
      else:
        cells.append("-")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  lines += [
    "",
    f"Times against SGDm's on a ResNet-50-shaped tree ({cpu['resnet50_tree']['entries']:,} "
    f"float32 entries), medians of interleaved rounds. CPU: {machine_line(cpu)} "
    f"(`benchmarks/results/cpu.json`). H100: {machine_line(gpu)} "
    f"(`benchmarks/results/gpu-h100.json`), {PREDATES.get('gpu-h100', 'current')}.",
  ]
  return "\n".join(lines) + "\n"


def _allocator(key: str) -> tuple[float, float]:
  """What a top-k call costs beyond a step inside a loop (ms), and its temporaries (MB)."""
  row = load(key)["resnet50_tree"]["optimizers"]["residual_topk"]
  extra = 1000 * (row["step_seconds"] - row["looped_step_seconds"])
  return extra, row["memory"]["temp_bytes"] / 1e6


def readme_allocator() -> str:
  """The README's top-k-on-a-CPU advice, with its measured numbers."""
  glibc, glibc_mb = _allocator("cpu-allocator-glibc")
  tcmalloc, _ = _allocator("cpu-allocator-tcmalloc")
  hugetlb, _ = _allocator("cpu-allocator-hugetlb")
  sequential = load("cpu-sequential-schedule")["resnet50_tree"]["optimizers"]["residual_topk"]
  return (
    f"- **Top-k on a CPU:** glibc maps top-k's temporaries ({glibc_mb:.0f} MB for that tree) "
    "afresh on every call.\n"
    "  These settings of your process, made before JAX starts, help:\n"
    "  - an allocator that keeps freed memory: `LD_PRELOAD=libtcmalloc_minimal.so.4` (Debian:\n"
    "    `libtcmalloc-minimal4`), or `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`. They cut what a "
    f"top-k call\n    costs beyond a step inside a loop from {glibc:.1f} ms to {tcmalloc:.1f} "
    f"and {hugetlb:.1f} ms\n"
    "    (`benchmarks/results/cpu-allocator-{glibc,tcmalloc,hugetlb}.json`);\n"
    "  - `XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`, which cut the "
    f"temporaries\n    to {sequential['memory']['temp_bytes'] / 1e6:.0f} MB; the top-k step "
    f"then took {sequential['step_ratio']:.2f}x SGDm's\n"
    "    (`benchmarks/results/cpu-sequential-schedule.json`).\n"
  )


def benchmarks_run(key: str) -> str:
  """BENCHMARKS.md's tables of one ``benchmarks.run`` record, as the command prints them.

  A stale record's tables come without its goal verdicts, and with the note of what it predates.
  """
  text = render.markdown(load(key), with_goals=key not in PREDATES)
  text += f"\nRecord: `benchmarks/results/{key}.json`.\n"
  if key in PREDATES:
    text += f"\n**Stale:** {PREDATES[key]}.\n"
  return text


# The records of one machine that differ by a setting of the process (BENCHMARKS.md's table).
PROCESS_SETTINGS = (
  ("glibc malloc (default)", "cpu-allocator-glibc"),
  ("`LD_PRELOAD=libtcmalloc_minimal.so.4`", "cpu-allocator-tcmalloc"),
  ("`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`", "cpu-allocator-hugetlb"),
  ("`XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`", "cpu-sequential-schedule"),
)


def benchmarks_settings() -> str:
  """The top-k step under each process setting: per call, looped, and what a call adds."""
  lines = [
    "| process setting | top-k step, ms a call | looped, ms a step | call minus looped, ms "
    "| sgdm: call / looped, ms | top-k / sgdm per call | top-k temp MB |",
    "|---|---|---|---|---|---|---|",
  ]
  machines = set()
  for label, key in PROCESS_SETTINGS:
    results = load(key)
    machines.add(machine_line(results))
    tree = results["resnet50_tree"]["optimizers"]
    topk, sgdm = tree["residual_topk"], tree["sgdm"]
    call, looped = 1e3 * topk["step_seconds"], 1e3 * topk["looped_step_seconds"]
    cells = [
      f"{call:.1f}",
      f"{looped:.1f}",
      f"{call - looped:.1f}",
      f"{1e3 * sgdm['step_seconds']:.1f} / {1e3 * sgdm['looped_step_seconds']:.1f}",
      f"{topk['step_ratio']:.2f}x",
      f"{topk['memory']['temp_bytes'] / 1e6:.0f}",
    ]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  keys = ", ".join(f"`{key}.json`" for _, key in PROCESS_SETTINGS)
  lines += [
    "",
    f"Machine: {'; '.join(sorted(machines))}. Records: {keys} in `benchmarks/results/`.",
  ]
  stale = {PREDATES[key] for _, key in PROCESS_SETTINGS if key in PREDATES}
  lines += [f"\n**Stale:** {note}." for note in sorted(stale)]
  return "\n".join(lines) + "\n"


def benchmarks_wire_bytes() -> str:
  """BENCHMARKS.md's wire-bytes table, as ``benchmarks.wire_bytes`` printed it, and its machine."""
  results = load("wire-bytes-cpu")
  machine = results["machine"]
  return (
    "\n".join(wire_bytes.markdown(results))
    + f"\n\nMachine: {machine['cpu']}, {machine['cpu_cores']} cores, {machine['devices']} "
    f"devices, jax {machine['jax']} / jaxlib {machine['jaxlib']}. Record: "
    "`benchmarks/results/wire-bytes-cpu.json`.\n"
  )


SCALING_EXCHANGES = (
  "sign_all_gather",
  "sign_two_phase",
  "topk1pct_all_gather",
  "topk1pct_two_phase",
)


def scaling_cell(exchange: dict) -> str:
  """One exchange at one device count: MiB a device sends, x fewer than float32, temporaries."""
  return (
    f"{exchange['bytes_sent_per_device'] / (1 << 20):.3f} MiB, {exchange['bytes_ratio']:.1f}x, "
    f"{exchange['temp_per_gradient']:.2f}"
  )


def benchmarks_wire_bytes_scaling() -> str:
  """BENCHMARKS.md's table of both exchanges against the device count, and its machine."""
  results = load("wire-bytes-cpu")
  scaling = results["scaling"]
  lines = [
    "| P | f32 all-reduce | " + " | ".join(SCALING_EXCHANGES) + " |",
    "|---|---|" + "---|" * len(SCALING_EXCHANGES),
  ]
  for row in scaling["rows"]:
    exchanges = row["exchanges"]
    f32 = exchanges["psum_f32"]["bytes_sent_per_device"] / (1 << 20)
    cells = [scaling_cell(exchanges[name]) for name in SCALING_EXCHANGES]
    lines.append(f"| {row['devices']} | {f32:.3f} MiB | " + " | ".join(cells) + " |")
  machine = scaling.get("machine", results["machine"])
  return (
    "\n".join(lines)
    + "\n\nEach cell: MiB a device sends per step, times fewer than the float32 all-reduce, "
    "temporaries in units of the gradient. "
    f"Machine: {machine['cpu']} ({machine['cpu_id']}), {machine['cpu_cores']} cores, "
    f"jax {machine['jax']}. Record: the `scaling` entry of "
    "`benchmarks/results/wire-bytes-cpu.json`.\n"
  )


BLOCKS: dict[str, Callable[[], str]] = {
  "readme-costs": readme_costs,
  "readme-allocator": readme_allocator,
  "benchmarks-cpu": lambda: benchmarks_run("cpu"),
  "benchmarks-gpu-h100": lambda: benchmarks_run("gpu-h100"),
  "benchmarks-settings": benchmarks_settings,
  "benchmarks-wire-bytes": benchmarks_wire_bytes,
  "benchmarks-wire-bytes-scaling": benchmarks_wire_bytes_scaling,
}


def _number(text: str) -> float:
  return float(text.replace(",", ""))


def problems(text: str, where: str) -> list[str]:
  """What in one Markdown file disagrees with the JSON: stale blocks and marked numbers."""
  found = []
  for match in BLOCK.finditer(text):
    name, body = match.group(2), match.group(3)
    if name not in BLOCKS:
      found.append(f"{where}: unknown cost block {name!r} (known: {sorted(BLOCKS)})")
    elif body != BLOCKS[name]():
      found.append(
        f"{where}: block {name!r} differs from the JSON: run python docs/cost_figures.py"
      )
  for match in MARKED.finditer(text):
    shown, key, path = match.groups()
    try:
      value = float(lookup(load(key), path))
    except (FileNotFoundError, KeyError, TypeError) as error:
      found.append(f"{where}: {key}:{path} is not in the results ({error!r})")
      continue
    digits = len(shown.split(".")[1]) if "." in shown else 0
    if round(value, digits) != _number(shown):
      found.append(f"{where}: says {shown} where results/{key}.json's {path} is {value:.{digits}f}")
  return found


def rewrite(text: str) -> str:
  """``text`` with every known block regenerated."""
  return BLOCK.sub(
    lambda m: (
      m.group(1) + (BLOCKS[m.group(2)]() if m.group(2) in BLOCKS else m.group(3)) + m.group(4)
    ),
    text,
  )


def main(argv: list[str]) -> int:
  check = "--check" in argv
  stale = []
  for name in CHECKED_FILES:
    path = ROOT / name
    if not path.exists():
      continue
    text = path.read_text()
    if check:
      stale += problems(text, name)
    elif rewrite(text) != text:
      path.write_text(rewrite(text))
      print(f"rewrote the cost blocks of {name}")
  for line in stale:
    print(line, file=sys.stderr)
  return 1 if stale else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
