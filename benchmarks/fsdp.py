"""The optimizer step on the ResNet-50 tree sharded over 8 CPU devices, FSDP style.

Each leaf (and so its momentum and residual) is split along a ``data`` mesh axis on its largest
dimension that 8 divides, and replicated when none does; the gradients come sharded the same way, as
a reduce-scatter leaves them. For sgdm and each residual the row gives the step time and its ratio to
sgdm, the bytes the compiled step all-gathers and all-reduces (read off its HLO), and the optimizer
state's bytes per device (read off the arrays' shards).

The device count is fixed when JAX starts, so this runs as its own process::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.fsdp --out fsdp.json

``benchmarks.run`` starts it so (:func:`run_in_subprocess`); the flag stays out of its own process.
"""

from __future__ import annotations

import re
import time
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import rsgd_optax as rsgd
from benchmarks import cli, render, resnet50_tree, timing

DEVICES, DEVICE_FLAG = cli.HOST_DEVICES, cli.HOST_DEVICE_FLAG
SGDM = {"learning_rate": 0.1, "momentum": 0.9}
TOPK_FRACTION = 0.01
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_BYTES.update({"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8})


def optimizers() -> dict[str, optax.GradientTransformation]:
  sgdm = optax.sgd(**SGDM)
  return {
    "sgdm": sgdm,
    "residual_scale": optax.chain(sgdm, rsgd.residual_scale(1 / 16)),
    "residual_sign": optax.chain(sgdm, rsgd.residual_sign()),
    "residual_topk": optax.chain(sgdm, rsgd.residual_topk(TOPK_FRACTION)),
  }


def fsdp_spec(shape: tuple[int, ...], devices: int = DEVICES) -> P:
  """``data`` on the largest dimension that ``devices`` divides (the first such on a tie), else
  replicated."""
  divisible = [axis for axis, n in enumerate(shape) if n % devices == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda a: (shape[a], -a))
  return P(*(("data" if a == axis else None) for a in range(len(shape))))


def collective_bytes(hlo: str) -> dict[str, int]:
  """Bytes of the results of each kind of cross-device op in a compiled HLO text, per device."""
  out = {"all-gather": 0, "all-reduce": 0, "reduce-scatter": 0, "all-to-all": 0}
  out["collective-permute"] = 0
  pattern = r"= (.+?) (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)\("
  for match in re.finditer(pattern, hlo):
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
      entries = int(np.prod([int(d) for d in dims.split(",") if d]))
      out[match.group(2)] += entries * _BYTES[dtype]
  return out


def _per_device_bytes(tree: Any) -> int:
  """The most bytes of ``tree``'s shards that any one device holds."""
  held: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
  return max(held.values())


LEAF_SUBSETS = ("all", "ends")


def tree_shapes(
  width_scale: float, stage_blocks: tuple[int, ...], leaf_subset: str = "all"
) -> dict[str, tuple[int, ...]]:
  """The ResNet-50-shaped tree's leaf shapes; ``"ends"`` keeps only the stem and the last stage.

  ``"ends"`` is for smoke tests: the stem's narrow leaves stay replicated, the last stage's are
  split, and the top-k step compiles in a fraction of the whole tree's time.
  """
  shapes = resnet50_tree.resnet50_shapes(width_scale, stage_blocks)
  if leaf_subset == "all":
    return shapes
  if leaf_subset != "ends":
    raise ValueError(f"leaf_subset must be one of {LEAF_SUBSETS}, got {leaf_subset!r}")
  last = f"stage{len(stage_blocks)}_"
  return {name: shape for name, shape in shapes.items() if name.startswith(("stem", last, "head"))}


def _host_tree(seed: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
  """The tree as NumPy float32 leaves, normal scaled by 0.01."""
  rng = np.random.default_rng(seed)
  return {name: (0.01 * rng.standard_normal(shape, np.float32)) for name, shape in shapes.items()}


def fsdp_rows(
  width_scale: float, stage_blocks: tuple[int, ...], rounds: int, leaf_subset: str = "all"
) -> dict[str, Any]:
  devices = jax.devices()
  if len(devices) != DEVICES:
    raise RuntimeError(f"needs {DEVICES} devices (XLA_FLAGS={DEVICE_FLAG}), found {len(devices)}")
  kind = jax.sharding.AxisType.Explicit
  mesh = jax.make_mesh((DEVICES,), ("data",), axis_types=(kind,), devices=devices)
  with jax.set_mesh(mesh):
    return _fsdp_rows(mesh, tree_shapes(width_scale, stage_blocks, leaf_subset), rounds)


def _fsdp_rows(
  mesh: jax.sharding.Mesh, shapes: dict[str, tuple[int, ...]], rounds: int
) -> dict[str, Any]:
  # NumPy on the host (quicker than 161 eager draws on 8 devices), so that each optimizer's device
  # arrays are buffers of their own to donate.
  host = _host_tree(0, shapes)
  host_grads = _host_tree(1, shapes)
  shardings = {name: NamedSharding(mesh, fsdp_spec(leaf.shape)) for name, leaf in host.items()}
  grads = jax.device_put(host_grads, shardings)
  params_bytes = resnet50_tree.tree_bytes(host)
  replicated = sum(1 for s in shardings.values() if s.spec == P())

  rows: dict[str, Any] = {}
  runners = {}
  for name, tx in optimizers().items():
    params = jax.device_put(host, shardings)
    state = tx.init(params)  # eager: each slot takes its parameter's sharding, the count P()
    state_shardings = jax.tree.map(lambda x: x.sharding, state)

    def step(params, state, grads, tx=tx):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    start = time.perf_counter()
    compiled = (
      jax.jit(step, donate_argnums=(0, 1), out_shardings=(shardings, state_shardings))
      .lower(params, state, grads)
      .compile()
    )
    compile_seconds = time.perf_counter() - start
    hlo = compiled.as_text()
    rows[name] = {
      "collective_bytes": collective_bytes(hlo),
      "state_bytes_per_device": _per_device_bytes(state),
      "params_bytes_per_device": _per_device_bytes(params),
      "temp_bytes_per_device": int(compiled.memory_analysis().temp_size_in_bytes),
      "compile_seconds": compile_seconds,
    }
    runners[name] = timing.carried_step(compiled, [params, state], [grads])
  times = timing.interleaved(runners, rounds)
  for name, row in rows.items():
    row["step_seconds"] = timing.median(times[name])
    row["step_ratio"] = timing.median_ratio(times[name], times["sgdm"])
    row["compile_ratio"] = row["compile_seconds"] / rows["sgdm"]["compile_seconds"]
  return {
    "devices": DEVICES,
    "axis_types": str(mesh.axis_types),
    "leaves": len(host),
    "replicated_leaves": replicated,
    "entries": int(sum(leaf.size for leaf in host.values())),
    "params_bytes": params_bytes,
    "rounds": rounds,
    "optimizers": rows,
  }


def run_in_subprocess(
  width_scale: float, stage_blocks: tuple[int, ...], rounds: int, leaf_subset: str = "all"
) -> dict:
  """:func:`fsdp_rows` in a fresh process with 8 host devices (CPU), its result read back."""
  blocks = ",".join(map(str, stage_blocks))
  arguments = ["--rounds", str(rounds), "--width-scale", str(width_scale), "--stage-blocks", blocks]
  return cli.run_on_host_devices("benchmarks.fsdp", [*arguments, "--leaf-subset", leaf_subset])


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = cli.parser(__doc__)
  parser.add_argument("--width-scale", type=float, default=1.0)
  parser.add_argument("--stage-blocks", default=",".join(map(str, resnet50_tree.STAGE_BLOCKS)))
  parser.add_argument("--rounds", type=cli.positive_int, default=9)
  parser.add_argument("--leaf-subset", choices=LEAF_SUBSETS, default="all")
  args = parser.parse_args(argv)
  blocks = tuple(int(b) for b in args.stage_blocks.split(","))
  result = fsdp_rows(args.width_scale, blocks, args.rounds, args.leaf_subset)
  return cli.report(result, lambda r: "\n".join(render.fsdp_lines(r)), args.out)


if __name__ == "__main__":
  main()
