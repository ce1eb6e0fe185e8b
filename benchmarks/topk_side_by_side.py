"""The top-k engine against an earlier copy of ``rsgd_optax/_topk.py``, side by side in one process.

  git show <commit>:rsgd_optax/_topk.py > /tmp/topk_old.py
  python -m benchmarks.topk_side_by_side --old /tmp/topk_old.py --what tree   # ResNet-50 tree
  python -m benchmarks.topk_side_by_side --old /tmp/topk_old.py --what cnn    # DenseNet-121 step
  python -m benchmarks.topk_side_by_side --old /tmp/topk_old.py --what fsdp   # 8 CPU devices

The top-k scheme calls the engine through ``rsgd_optax._schemes._topk``; each variant swaps that
module before it is traced. Compiles alternate between the variants round by round (a fresh function
each time), so drift of a shared machine falls on all of them alike; ratios are medians of per-round
ratios against sgdm.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Any


def _load(path: str) -> Any:
  spec = importlib.util.spec_from_file_location("topk_old", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _variants(old_path: str, which: str) -> dict[str, tuple[Any, Any]]:
  """name -> (optimizer, engine module); sgdm first (the baseline)."""
  import optax

  import rsgd_optax as rsgd
  from rsgd_optax import _topk

  old = _load(old_path)
  sgdm = optax.sgd(0.1, momentum=0.9)
  variants = {
    "sgdm": (sgdm, _topk),
    "scale": (optax.chain(sgdm, rsgd.residual_scale(1 / 16)), _topk),
    "sign": (optax.chain(sgdm, rsgd.residual_sign()), _topk),
    "topk_old": (optax.chain(sgdm, rsgd.residual_topk(0.01)), old),
    "topk_new": (optax.chain(sgdm, rsgd.residual_topk(0.01)), _topk),
    "topk_global_old": (optax.chain(sgdm, rsgd.residual(rsgd.top_k(0.01, False))), old),
    "topk_global_new": (optax.chain(sgdm, rsgd.residual(rsgd.top_k(0.01, False))), _topk),
  }
  return {name: variants[name] for name in which.split(",")}


def _summary(seconds: dict[str, list[float]]) -> dict[str, dict[str, float]]:
  from benchmarks import timing

  return {
    name: {
      "median_seconds": timing.median(values),
      "ratio_to_sgdm": timing.median_ratio(values, seconds["sgdm"]),
      "all_seconds": values,
    }
    for name, values in seconds.items()
  }


def _compile_and_time(variants, lower, run_args, rounds: int, step_rounds: int) -> dict[str, Any]:
  """Compile seconds (``rounds`` interleaved), temporaries and step seconds of each variant."""

  from benchmarks import timing
  from rsgd_optax import _schemes

  seconds: dict[str, list[float]] = {name: [] for name in variants}
  compiled = {}
  for _ in range(rounds):
    for name, (tx, engine) in variants.items():
      _schemes._topk = engine
      start = time.perf_counter()
      compiled[name] = lower(tx).compile()
      seconds[name].append(time.perf_counter() - start)
  result: dict[str, Any] = {"compile": _summary(seconds)}
  result["temp_bytes"] = {n: c.memory_analysis().temp_size_in_bytes for n, c in compiled.items()}
  if step_rounds:
    runners = {
      name: timing.carried_step(compiled[name], *run_args(tx)) for name, (tx, _) in variants.items()
    }
    result["step"] = _summary(timing.interleaved(runners, step_rounds, alternate=True))
  return result


def tree(old: str, which: str, rounds: int, step_rounds: int) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp

  from benchmarks import resnet50_tree
  from benchmarks.run import _abstract, _step_fn

  params = resnet50_tree.resnet50_tree(jax.random.key(0))
  grads = resnet50_tree.resnet50_tree(jax.random.key(1))

  def lower(tx):
    state = jax.eval_shape(tx.init, params)
    step = jax.jit(_step_fn(tx), donate_argnums=(0, 1))
    return step.lower(_abstract(params), state, _abstract(grads))

  def run_args(tx):
    return [jax.tree.map(jnp.copy, params), tx.init(params)], [grads]

  return _compile_and_time(_variants(old, which), lower, run_args, rounds, step_rounds)


def cnn(old: str, which: str, rounds: int, step_rounds: int) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from benchmarks import cnn_step

  model, _ = cnn_step.build_model("densenet121")
  graphdef, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  params, batch_stats = nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)
  images = jax.random.normal(jax.random.key(0), (8, *cnn_step.IMAGE_SHAPE), jnp.float32)
  labels = jax.random.randint(jax.random.key(1), (8,), 0, cnn_step.NUM_CLASSES)

  def carry(tx):
    return {"params": params, "batch_stats": batch_stats, "opt_state": tx.init(params)}

  def lower(tx):
    return cnn_step._train_step(graphdef, tx).lower(carry(tx), images, labels)

  def run_args(tx):
    return [jax.tree.map(jnp.copy, carry(tx))], [images, labels]

  return _compile_and_time(_variants(old, which), lower, run_args, rounds, step_rounds)


def fsdp(old: str, which: str, rounds: int, step_rounds: int) -> dict[str, Any]:
  import jax
  import optax
  from jax.sharding import NamedSharding

  from benchmarks import fsdp as fsdp_bench

  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  shapes = fsdp_bench.tree_shapes(1.0, fsdp_bench.resnet50_tree.STAGE_BLOCKS)
  host = fsdp_bench._host_tree(0, shapes)
  grads_host = fsdp_bench._host_tree(1, shapes)
  with jax.set_mesh(mesh):
    shardings = {n: NamedSharding(mesh, fsdp_bench.fsdp_spec(x.shape)) for n, x in host.items()}
    grads = jax.device_put(grads_host, shardings)

    def lower(tx):
      params = jax.device_put(host, shardings)
      state = tx.init(params)

      def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

      return jax.jit(step).lower(params, state, grads)

    def run_args(tx):
      params = jax.device_put(host, shardings)
      return [params, tx.init(params)], [grads]

    return _compile_and_time(_variants(old, which), lower, run_args, rounds, step_rounds)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--old", required=True, help="a copy of an earlier rsgd_optax/_topk.py")
  parser.add_argument("--what", choices=("tree", "cnn", "fsdp"), default="tree")
  parser.add_argument("--variants", default="sgdm,scale,sign,topk_old,topk_new")
  parser.add_argument("--rounds", type=int, default=3, help="interleaved compile rounds")
  parser.add_argument(
    "--step-rounds", type=int, default=9, help="interleaved step rounds (0: none)"
  )
  parser.add_argument("--out", default=None, help="write the result as JSON here")
  args = parser.parse_args()
  if args.what == "fsdp":  # before JAX starts
    from benchmarks import cli

    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + cli.HOST_DEVICE_FLAG).strip()
  import jax

  result = {"what": args.what, "machine": {"jax": jax.__version__, "platform": sys.platform}}
  result.update(
    {"tree": tree, "cnn": cnn, "fsdp": fsdp}[args.what](
      args.old, args.variants, args.rounds, args.step_rounds
    )
  )
  for kind in ("compile", "step"):
    for name, row in result.get(kind, {}).items():
      print(
        f"{kind:7s} {name:16s} median {row['median_seconds']:9.4f} s"
        f"  x sgdm {row['ratio_to_sgdm']:6.2f}  ({', '.join(f'{s:.3f}' for s in row['all_seconds'])})"
      )
  print("temporaries (bytes):", result["temp_bytes"])
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
