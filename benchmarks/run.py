"""Benchmarks of rsgd-optax: residual step costs, top-k selection, memory, compile time.

Run from the repository root::

  python -m benchmarks.run --size full --out benchmarks/results/cpu.json   # minutes on a 2-core CPU
  python -m benchmarks.run --size tiny                                     # seconds (CI smoke test)

Prints a Markdown table of the goals (``benchmarks/goals.py``) and the measurements behind them, and
writes every measurement as JSON to ``--out`` (nothing is written without it). The committed records
are ``benchmarks/results/<machine>.json``; ``benchmarks/BENCHMARKS.md`` renders its tables from them.
The FSDP rows (the tree sharded over 8 CPU devices) and the rows of the compressed gradient exchange
(bytes on the wire read from the compiled HLO, 8 CPU devices) run in subprocesses: see
``benchmarks/fsdp.py`` and ``benchmarks/wire_bytes.py``. With ``--scaling-devices 8,16,32,64``
both exchanges of ``rsgd.compressed_mean`` (all-gather and two-phase) are also compiled on each of
those numbers of host devices, each in a process of its own, for a row per device count (about 10
minutes at full size on 2 cores).
Timings are medians over interleaved rounds: each round runs every variant once, back to back, so
drift of a shared machine cancels in the ratios (each ratio is the median of per-round ratios).
"""

from __future__ import annotations

import dataclasses
import functools
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
from benchmarks import cli, cnn_step, fsdp, goals, render, resnet50_tree, timing, wire_bytes
from examples.common import machine as examples_machine
from rsgd_optax import _schemes, _topk


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
  described = examples_machine.describe()  # the CPU's model, family and vector extensions
  info.update(cpu=described["cpu"], cpu_id=described["cpu_id"], jaxlib=described["jaxlib"])
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


def compile_records(
  txs: dict[str, optax.GradientTransformation], params: Any, grads: Any, rounds: int
) -> dict[str, dict[str, Any]]:
  """Per optimizer: the compiled step, its compile seconds (one per round) and its memory."""
  records: dict[str, dict[str, Any]] = {name: {"compile_seconds": []} for name in txs}
  for _ in range(rounds):
    for name, tx in txs.items():
      # A fresh function each time, so nothing is cached; lowered on abstract arrays.
      state = jax.eval_shape(tx.init, params)
      start = time.perf_counter()
      executable = (
        jax.jit(_step_fn(tx), donate_argnums=(0, 1))
        .lower(_abstract(params), state, _abstract(grads))
        .compile()
      )
      records[name]["compile_seconds"].append(time.perf_counter() - start)
      if "executable" not in records[name]:
        records[name]["executable"] = executable
        records[name]["memory"] = {
          **_memory(executable),
          "state_bytes": resnet50_tree.tree_bytes(state),
        }
  return records


def step_time_records(
  txs: dict[str, optax.GradientTransformation],
  executables: dict[str, Any],
  params: Any,
  grads: Any,
  rounds: int,
) -> dict[str, dict[str, list[float]]]:
  """Per optimizer: seconds per step, one step per call and LOOPED_STEPS per call (interleaved)."""
  runners = {}
  for name, tx in txs.items():
    carry = [jax.tree.map(jnp.copy, params), tx.init(params)]
    looped = jax.jit(_looped_step_fn(tx, LOOPED_STEPS), donate_argnums=(0, 1))

    def run(step: Callable, carry=carry) -> None:
      carry[:] = step(carry[0], carry[1], grads)
      jax.block_until_ready(carry)

    runners[name] = functools.partial(run, executables[name])
    runners[f"looped_{name}"] = functools.partial(run, looped)
  times = timing.interleaved(runners, rounds)
  return {
    name: {
      "step": times[name],
      "looped_step": [t / LOOPED_STEPS for t in times[f"looped_{name}"]],
    }
    for name in txs
  }


def step_rows(size: Size, link_bandwidth: float) -> dict[str, Any]:
  """Step time, compile time and memory of each optimizer on the ResNet-50-shaped tree."""
  params = resnet50_tree.resnet50_tree(jax.random.key(0), size.width_scale, size.stage_blocks)
  grads = resnet50_tree.resnet50_tree(jax.random.key(1), size.width_scale, size.stage_blocks)
  params_bytes = resnet50_tree.tree_bytes(params)
  txs = optimizers()
  bf16 = optax.chain(
    optax.sgd(**SGDM), rsgd.residual(rsgd.scaling(1 / 16), residual_dtype=jnp.bfloat16)
  )
  compiled = compile_records(txs, params, grads, size.compile_rounds)
  memory = {name: record["memory"] for name, record in compiled.items()}
  memory["residual_scale_bf16"] = compile_records({"residual_scale_bf16": bf16}, params, grads, 1)[
    "residual_scale_bf16"
  ]["memory"]
  executables = {name: record["executable"] for name, record in compiled.items()}
  times = step_time_records(txs, executables, params, grads, size.rounds)
  del params

  base = "sgdm"
  rows = {}
  for name in txs:
    # The least traffic a step can have: sgdm reads params, grads and momentum and writes params
    # and momentum; a residual adds one read and one write of r.
    least = (5 if name == base else 7) * params_bytes
    step, looped = times[name]["step"], times[name]["looped_step"]
    compile_seconds = compiled[name]["compile_seconds"]
    rows[name] = {
      "step_seconds": timing.median(step),
      "step_ratio": timing.median_ratio(step, times[base]["step"]),
      "least_bytes_moved": least,
      "fraction_of_bandwidth": least / timing.median(step) / link_bandwidth,
      "looped_step_seconds": timing.median(looped),
      "looped_step_ratio": timing.median_ratio(looped, times[base]["looped_step"]),
      "looped_fraction_of_bandwidth": least / timing.median(looped) / link_bandwidth,
      "compile_seconds": timing.median(compile_seconds),
      "compile_ratio": timing.median_ratio(compile_seconds, compiled[base]["compile_seconds"]),
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
  k = _schemes.top_k_count(TOPK_FRACTION, n)
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


def run(
  size_name: str, cnn_batch: int | None = None, scaling_devices: tuple[int, ...] = ()
) -> dict[str, Any]:
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
  results["wire_bytes"] = wire_bytes.run_in_subprocess(
    size.width_scale, size.stage_blocks, size.rounds
  )
  if scaling_devices:  # both exchanges compiled at each device count, a process each
    results["wire_bytes"]["scaling"] = wire_bytes.scaling_in_subprocesses(
      size.width_scale, size.stage_blocks, scaling_devices
    )
  results["goals"] = goals.goal_rows(results)
  return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = cli.parser(__doc__)
  parser.add_argument("--size", choices=sorted(SIZES), default="full")
  parser.add_argument(
    "--cnn-batch",
    type=cli.positive_int,
    default=None,
    help="batch of the whole-training-step row (default: 8 for full, 4 for tiny; the paper's "
    "CIFAR batch is 128, a fairer load for a GPU)",
  )
  parser.add_argument(
    "--scaling-devices",
    type=device_counts,
    default=(),
    help="also compile the compressed exchanges on each of these numbers of host devices, e.g. "
    "8,16,32,64 (about 10 minutes at full size on 2 cores): a row per device count",
  )
  args = parser.parse_args(argv)
  return cli.report(run(args.size, args.cnn_batch, args.scaling_devices), render.markdown, args.out)


def device_counts(text: str) -> tuple[int, ...]:
  """``"8,16"`` -> ``(8, 16)``: positive integers, comma-separated."""
  return tuple(cli.positive_int(part) for part in text.split(",") if part.strip())


if __name__ == "__main__":
  # Compile times are measured: a persistent compilation cache (JAX_COMPILATION_CACHE_DIR) would
  # time a file read instead.
  jax.config.update("jax_enable_compilation_cache", False)
  main()
