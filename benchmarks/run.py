"""Benchmarks of rsgd-optax: residual step costs, top-k selection, memory, compile time.

Run from the repository root::

  python -m benchmarks.run --size full --out results.json   # minutes on a 2-core CPU
  python -m benchmarks.run --size tiny                      # seconds (the CI smoke test)

Prints a Markdown table of the goals of the performance issue and writes every measurement as JSON.
The FSDP rows (the tree sharded over 8 CPU devices) run in a subprocess: see ``benchmarks/fsdp.py``.
Timings are medians over interleaved rounds: each round runs every variant once, back to back, so
drift of a shared machine cancels in the ratios (each ratio is the median of per-round ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rsgd_optax as rsgd
from benchmarks import cnn_step, fsdp, resnet50_tree, timing
from rsgd_optax import _topk


@dataclasses.dataclass(frozen=True)
class Size:
  """How big each measurement is."""

  width_scale: float  # ResNet-50 channel multiplier (1.0 is the real 25.6M-entry tree)
  stage_blocks: tuple[int, ...]  # bottleneck blocks per stage ((3, 4, 6, 3) is ResNet-50)
  topk_size: int  # entries of the single leaf in the top-k comparison
  rounds: int  # interleaved timing rounds
  compile_rounds: int
  copy_entries: int  # float32 entries of the bandwidth reference copy
  cnn: str  # model of the whole-training-step row
  cnn_batch: int
  fsdp_leaves: str  # which leaves the FSDP rows shard: "all", or "ends" (stem and last stage)


SIZES = {
  "tiny": Size(1 / 16, (1, 1, 1, 1), 23_593, 3, 1, 1 << 20, "small_cnn", 4, "ends"),
  "full": Size(1.0, resnet50_tree.STAGE_BLOCKS, 2_359_296, 9, 2, 1 << 26, "densenet121", 8, "all"),
}

TOPK_FRACTION = 0.01
# Steps per call of the looped timing, which leaves out what a call costs beyond the device's work
# (on an H100, 7 of the 7.7 ms that one sgdm step over the tree takes per call).
LOOPED_STEPS = 10
SGDM = {"learning_rate": 0.1, "momentum": 0.9}


def optimizers() -> dict[str, optax.GradientTransformation]:
  """The timed variants; the first is the baseline of the ratios."""
  sgdm = optax.sgd(**SGDM)
  return {
    "sgdm": sgdm,
    "residual_scale": optax.chain(sgdm, rsgd.residual_scale(1 / 16)),
    "residual_sign": optax.chain(sgdm, rsgd.residual_sign()),
    "residual_topk": optax.chain(sgdm, rsgd.residual_topk(TOPK_FRACTION)),
  }


# Process-wide settings that change the timings (the XLA scheduler, the memory allocator): a table
# measured under any of them says so.
PERFORMANCE_SETTINGS = ("XLA_FLAGS", "LD_PRELOAD", "GLIBC_TUNABLES")


def machine() -> dict[str, Any]:
  device = jax.devices()[0]
  info = {
    "platform": platform.platform(),
    "processor": platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    "python": sys.version.split()[0],
    "jax": jax.__version__,
    "optax": optax.__version__,
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "settings": {name: os.environ[name] for name in PERFORMANCE_SETTINGS if os.environ.get(name)},
  }
  try:
    import torch

    info["torch"] = torch.__version__
  except ImportError:
    info["torch"] = None
  return info


def bandwidth(size: Size) -> dict[str, float]:
  """Bytes per second of a large in-place array update (one read and one write per entry).

  The input is donated, as the optimizer steps' are, so no fresh output buffer is faulted in.
  """
  carry = [jnp.ones((size.copy_entries,), jnp.float32)]
  moved = 2 * carry[0].size * carry[0].dtype.itemsize
  double = jax.jit(lambda x: x * 2.0, donate_argnums=0)

  def run() -> None:
    carry[0] = double(carry[0])
    carry[0].block_until_ready()

  seconds = timing.median(timing.interleaved({"copy": run}, size.rounds)["copy"])
  return {"bytes_moved": moved, "seconds": seconds, "bytes_per_second": moved / seconds}


def _step_fn(tx: optax.GradientTransformation) -> Callable:
  def step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def _looped_step_fn(tx: optax.GradientTransformation, steps: int) -> Callable:
  """``steps`` optimizer steps inside one ``fori_loop``: one call, so per-call costs drop out."""
  step = _step_fn(tx)

  def looped(params, opt_state, grads):
    return jax.lax.fori_loop(0, steps, lambda _, carry: step(*carry, grads), (params, opt_state))

  return looped


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _memory(compiled: Any) -> dict[str, int]:
  analysis = compiled.memory_analysis()
  fields = ("argument", "output", "alias", "temp", "generated_code")
  return {f"{f}_bytes": int(getattr(analysis, f"{f}_size_in_bytes")) for f in fields}


def step_rows(size: Size, link_bandwidth: float) -> dict[str, Any]:
  """Step time, compile time and memory of each optimizer on the ResNet-50-shaped tree."""
  params = resnet50_tree.resnet50_tree(jax.random.key(0), size.width_scale, size.stage_blocks)
  grads = resnet50_tree.resnet50_tree(jax.random.key(1), size.width_scale, size.stage_blocks)
  params_bytes = resnet50_tree.tree_bytes(params)
  txs = optimizers()
  txs_memory = {
    **txs,
    "residual_scale_bf16": optax.chain(
      optax.sgd(**SGDM), rsgd.residual(rsgd.scaling(1 / 16), residual_dtype=jnp.bfloat16)
    ),
  }

  memory, compiled, compile_seconds = {}, {}, {name: [] for name in txs}
  for round_ in range(size.compile_rounds):
    for name, tx in txs_memory.items():
      if round_ and name not in txs:
        continue
      # A fresh function each time, so nothing is cached; lowered on abstract arrays.
      state = jax.eval_shape(tx.init, params)
      start = time.perf_counter()
      executable = (
        jax.jit(_step_fn(tx), donate_argnums=(0, 1))
        .lower(_abstract(params), state, _abstract(grads))
        .compile()
      )
      if name in txs:
        compile_seconds[name].append(time.perf_counter() - start)
      if not round_:
        compiled[name] = executable
        memory[name] = _memory(executable)
        memory[name]["state_bytes"] = resnet50_tree.tree_bytes(state)

  runners = {}
  for name, tx in txs.items():
    carry = [jax.tree.map(jnp.copy, params), tx.init(params)]
    looped = jax.jit(_looped_step_fn(tx, LOOPED_STEPS), donate_argnums=(0, 1))

    def run(step: Callable, carry=carry) -> None:
      carry[:] = step(carry[0], carry[1], grads)
      jax.block_until_ready(carry)

    runners[name] = functools.partial(run, compiled[name])
    runners[f"looped_{name}"] = functools.partial(run, looped)
  del params
  times = timing.interleaved(runners, size.rounds)
  step_seconds = {name: times[name] for name in txs}
  looped_seconds = {name: [t / LOOPED_STEPS for t in times[f"looped_{name}"]] for name in txs}

  base = "sgdm"
  rows = {}
  for name in txs:
    # The least traffic a step can have: sgdm reads params, grads and momentum and writes params
    # and momentum; a residual adds one read and one write of r.
    least = (5 if name == base else 7) * params_bytes
    seconds = timing.median(step_seconds[name])
    rows[name] = {
      "step_seconds": seconds,
      "step_ratio": timing.median_ratio(step_seconds[name], step_seconds[base]),
      "least_bytes_moved": least,
      "fraction_of_bandwidth": least / seconds / link_bandwidth,
      "looped_step_seconds": timing.median(looped_seconds[name]),
      "looped_step_ratio": timing.median_ratio(looped_seconds[name], looped_seconds[base]),
      "looped_fraction_of_bandwidth": least / timing.median(looped_seconds[name]) / link_bandwidth,
      "compile_seconds": timing.median(compile_seconds[name]),
      "compile_ratio": timing.median_ratio(compile_seconds[name], compile_seconds[base]),
      "memory": memory[name],
    }
  rows["residual_scale_bf16"] = {"memory": memory["residual_scale_bf16"]}
  for row in rows.values():
    extra = row["memory"]["argument_bytes"] - memory[base]["argument_bytes"]
    row["memory"]["state_bytes_beyond_sgdm"] = extra
    row["memory"]["state_beyond_sgdm_per_params_bytes"] = extra / params_bytes
  leaves = jax.tree.leaves(grads)
  return {
    "leaves": len(leaves),
    "entries": int(sum(leaf.size for leaf in leaves)),
    "params_bytes": params_bytes,
    "looped_steps": LOOPED_STEPS,
    "optimizers": rows,
  }


def topk_rows(size: Size) -> dict[str, Any]:
  """Our exact top-k vs jax.lax.top_k vs torch.topk on one leaf (k = 1%)."""
  n = size.topk_size
  k = _topk_count(n)
  x = jax.random.normal(jax.random.key(2), (n,), jnp.float32)
  ours = jax.jit(lambda x: _topk.keep_top_k(x, k))
  lax_top_k = jax.jit(lambda x: jax.lax.top_k(jnp.abs(x), k))

  def lax_keep(x):
    _, index = jax.lax.top_k(jnp.abs(x), k)
    return jnp.zeros_like(x).at[index].set(x[index])

  lax_keep = jax.jit(lax_keep)
  exact = bool(np.array_equal(np.asarray(ours(x)), np.asarray(lax_keep(x))))
  variants: dict[str, Callable[[], object]] = {
    "ours_keep_top_k": lambda: ours(x).block_until_ready(),
    "lax_top_k": lambda: jax.block_until_ready(lax_top_k(x)),
    "lax_top_k_keep": lambda: lax_keep(x).block_until_ready(),
  }
  note = None
  try:
    import torch
  except ImportError:
    torch = None
    note = "torch is not installed (pip install torch, CPU build): its rows are skipped."
    print(f"note: {note}")
  if torch is not None:
    # On a GPU run, torch runs on the GPU too (when its build has CUDA), else on the CPU.
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    xt = torch.from_numpy(np.array(x)).to("cuda" if on_gpu else "cpu")
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    def torch_top_k():
      result = torch.topk(xt.abs(), k, sorted=False)
      sync()
      return result

    def torch_keep():
      _, index = torch.topk(xt.abs(), k, sorted=False)
      out = torch.zeros_like(xt)
      out[index] = xt[index]
      sync()
      return out

    variants["torch_topk"] = torch_top_k
    variants["torch_topk_keep"] = torch_keep
  times = timing.interleaved(variants, size.rounds)
  result: dict[str, Any] = {"entries": n, "k": k, "exact_match_with_lax": exact, "note": note}
  for name, values in times.items():
    result[f"{name}_seconds"] = timing.median(values)
  # Speed-ups against the bare library calls (values and indices only): our timing includes the
  # masked output, so these ratios understate our advantage slightly.
  result["speedup_vs_lax_top_k"] = timing.median_ratio(times["lax_top_k"], times["ours_keep_top_k"])
  if torch is not None:
    result["speedup_vs_torch_topk"] = timing.median_ratio(
      times["torch_topk"], times["ours_keep_top_k"]
    )
  return result


def _topk_count(n: int) -> int:
  return max(1, round(TOPK_FRACTION * n))


def _met(value: float | None, goal: float, *, at_most: bool = True) -> str:
  if value is None:
    return "n/a"
  return "yes" if (value <= goal if at_most else value >= goal) else "no"


def goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
  """The issue's goals table with the measured values."""
  opt = results["resnet50_tree"]["optimizers"]
  topk = results["top_k"]
  cnn = results["cnn_step"]
  rows = [
    (
      "chain(sgdm, residual_scale) step / sgdm step",
      "<= 1.3x",
      opt["residual_scale"]["step_ratio"],
      1.3,
      True,
    ),
    (
      "chain(sgdm, residual_sign) step / sgdm step",
      "<= 1.5x",
      opt["residual_sign"]["step_ratio"],
      1.5,
      True,
    ),
    (
      "chain(sgdm, residual_topk(0.01)) step / sgdm step",
      "<= 2.5x",
      opt["residual_topk"]["step_ratio"],
      2.5,
      True,
    ),
    (
      f"top-k 1% of {topk['entries']:,} entries: jax.lax.top_k time / ours",
      ">= 3x",
      topk["speedup_vs_lax_top_k"],
      3.0,
      False,
    ),
    (
      f"top-k 1% of {topk['entries']:,} entries: torch.topk time / ours",
      ">= 3x",
      topk.get("speedup_vs_torch_topk"),
      3.0,
      False,
    ),
    (
      f"whole training step, {cnn['model']} (batch {cnn['batch']}): RSGDm / SGDm",
      "<= 1.03x",
      cnn["step_ratio"],
      1.03,
      True,
    ),
  ]
  out = [
    {"what": what, "goal": goal, "value": value, "met": _met(value, limit, at_most=at_most)}
    for what, goal, value, limit, at_most in rows
  ]
  for name, goal in (("residual_scale", 1.0), ("residual_scale_bf16", 0.5)):
    per = opt[name]["memory"]["state_beyond_sgdm_per_params_bytes"]
    out.append(
      {
        "what": f"optimizer memory beyond sgdm, {name} (x params bytes; 4 bytes are the step count)",
        "goal": f"{goal}",
        "value": per,
        "met": "yes" if abs(per - goal) * results["resnet50_tree"]["params_bytes"] <= 8 else "no",
      }
    )
  for name in ("residual_scale", "residual_sign", "residual_topk"):
    value = opt[name]["compile_ratio"]
    out.append(
      {
        "what": f"compile time of the ResNet-50-tree step, {name} / sgdm",
        "goal": "<= 1.5x",
        "value": value,
        "met": _met(value, 1.5),
      }
    )
  return out


def markdown(results: dict[str, Any]) -> str:
  """The goals table, then the raw timings."""
  lines = ["| what | goal | measured | met |", "|---|---|---|---|"]
  for row in results["goals"]:
    value = "skipped" if row["value"] is None else f"{row['value']:.3g}"
    lines.append(f"| {row['what']} | {row['goal']} | {value} | {row['met']} |")
  tree = results["resnet50_tree"]
  lines += [
    "",
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
    "",
    "The same whole step with each residual (pipelined; temporaries and compile time of the whole "
    f"step; SGDm compiled twice compiles in {cnn['control_compile_ratio']:.2f}x):",
    "",
    "| whole step | ms a step | x sgdm | compile s | x sgdm | temp MB |",
    "|---|---|---|---|---|---|",
    *(
      f"| {name} | {row['seconds'] * 1e3:.1f} | {row['step_ratio']:.3f} | "
      f"{row['compile_seconds']:.1f} | {row['compile_ratio']:.2f} | {row['temp_bytes'] / 1e6:.1f} |"
      for name, row in cnn["schemes"].items()
    ),
    "",
    *fsdp.markdown(results["fsdp"]),
    "",
    f"Machine: {results['machine']['processor']}, {results['machine']['cpu_count']} CPUs, "
    f"jax {results['machine']['jax']} on {results['machine']['device_kind']} "
    f"({results['machine']['backend']}); medians of {results['rounds']} interleaved rounds.",
  ]
  settings = results["machine"].get("settings")
  if settings:
    lines.append("Measured with " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".")
  return "\n".join(lines)


def run(size_name: str, cnn_batch: int | None = None) -> dict[str, Any]:
  size = SIZES[size_name]
  if cnn_batch is not None:
    size = dataclasses.replace(size, cnn_batch=cnn_batch)
  results: dict[str, Any] = {"size": size_name, "rounds": size.rounds, "machine": machine()}
  results["bandwidth"] = bandwidth(size)
  results["top_k"] = topk_rows(size)
  results["resnet50_tree"] = step_rows(size, results["bandwidth"]["bytes_per_second"])
  results["cnn_step"] = cnn_step.cnn_rows(size.cnn, size.cnn_batch, size.rounds)
  # In a process of its own: 8 host devices must be set before JAX starts.
  results["fsdp"] = fsdp.run_in_subprocess(
    size.width_scale, size.stage_blocks, size.rounds, size.fsdp_leaves
  )
  results["goals"] = goal_rows(results)
  return results


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="full")
  parser.add_argument("--out", default=None, help="write every measurement here as JSON")
  parser.add_argument(
    "--cnn-batch",
    type=_positive_int,
    default=None,
    help="batch of the whole-training-step row (default: 8 for full, 4 for tiny; the paper's "
    "CIFAR batch is 128, a fairer load for a GPU)",
  )
  args = parser.parse_args(argv)
  results = run(args.size, args.cnn_batch)
  print(markdown(results))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
