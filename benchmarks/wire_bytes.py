"""Bytes on the wire of the compressed gradient exchange, read from the compiled HLO, and step times.

One data-parallel step (each device's own gradient of the ResNet-50-shaped tree, exchanged, then SGD)
is compiled for each exchange: the plain float32 mean (``jax.lax.pmean``), and
:func:`rsgd_optax.compressed_mean` with scaled sign (packed bits + scale) and top-k 1% (int32 index
+ float32 value pairs), both with error feedback. Two meshes of 8 CPU devices: one ``data`` axis, and
``("host", "local") = (2, 4)`` where the compressed exchanges compress across ``host`` after a
``pmean`` over ``local`` (the float32 baseline: ``pmean`` over ``local`` then over ``host``).

Bytes each device sends per step are computed from every collective in the compiled HLO (its result
shape and dtype, its replica groups; :mod:`examples.common.hlo`), assuming ring algorithms over the
``P`` devices of a group:

- all-gather of ``B`` bytes from each device: ``(P - 1) B`` (each device's block passes ``P - 1`` hops);
- all-reduce of a ``B``-byte buffer: ``2 (P - 1) / P * B`` (reduce-scatter, then all-gather);
- reduce-scatter of a ``B``-byte input: ``(P - 1) / P * B``; all-to-all: ``(P - 1) / P * B``;
  collective-permute: ``B``.

So one expects the float32 all-reduce to send ``64 / P`` times the bytes of the sign all-gather and
``100 / P`` times those of top-k 1% (8-byte pairs for 1% of the entries). Step times come from
interleaved rounds on 8 virtual CPU devices that share the host's cores: they measure the extra
compute of encoding and decoding, not a network, and are noisy on a shared machine.

The device count is fixed when JAX starts, so this runs as its own process::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.wire_bytes \
    --out benchmarks/results/wire-bytes-cpu.json

:func:`run_in_subprocess` starts it so from another process (``benchmarks.run``).

How the bytes grow with the number of devices ``P``: ``--scaling-devices 8,16,32,64`` compiles (does
not run) one step of the float32 all-reduce and of both exchanges of ``compressed_mean``
(``all_gather`` and ``two_phase``) with both schemes on one axis of ``P`` host devices, each ``P`` in
a process of its own (:func:`scaling_in_subprocesses`), and records the HLO's bytes next to the
wire formats' (:func:`formula_bytes`) and the compiled step's temporaries::

  python -m benchmarks.wire_bytes --scaling-devices 8,16,32,64 --out w.json
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import rsgd_optax as rsgd
from benchmarks import cli, resnet50_tree, timing
from examples.common.hlo import axis_of_group, collectives

DEVICES, DEVICE_FLAG = cli.HOST_DEVICES, cli.HOST_DEVICE_FLAG
TOPK_FRACTION = 0.01
LEARNING_RATE = 0.1
MESHES = {"data8": ((8,), ("data",)), "host2xlocal4": ((2, 4), ("host", "local"))}


# ---------------------------------------------------------------------------------------------
# The steps.


def exchanges(names: tuple[str, ...]) -> dict[str, tuple[optax.GradientTransformation, Any]]:
  """Name -> (transformation in front of SGD, axes its update pmeans first) for one mesh."""
  slow, fast = names[0], names[1:] or None
  fast_axis = fast[0] if fast and len(fast) == 1 else fast

  def compressed(scheme: Any) -> optax.GradientTransformation:
    return rsgd.compressed_mean(scheme, slow, average_axis=fast_axis)

  return {
    "psum_f32": (optax.identity(), names),
    "sign_ef": (compressed(rsgd.scaled_sign()), None),
    "topk1pct_ef": (compressed(rsgd.top_k(TOPK_FRACTION)), None),
  }


def _local_step(params, state, grads, *, tx, pmean_axes):
  """One device's step inside shard_map: its gradient, the exchange, SGD."""
  grads = jax.tree.map(lambda g: g[0], grads)  # this device's own gradient
  if pmean_axes is not None:
    # The baseline: pmean over the fast axes first, then the slow one (one all-reduce each).
    for axis in reversed(pmean_axes):
      grads = jax.lax.pmean(grads, axis)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def mesh_rows(layout: str, shapes: dict[str, tuple[int, ...]], rounds: int) -> dict[str, Any]:
  mesh_shape, names = MESHES[layout]
  kind = (jax.sharding.AxisType.Explicit,) * len(names)
  mesh = jax.make_mesh(mesh_shape, names, axis_types=kind, devices=jax.devices()[:DEVICES])
  rng = np.random.default_rng(0)
  host_params = {n: 0.01 * rng.standard_normal(s, np.float32) for n, s in shapes.items()}
  # One gradient per device: a leading device axis, one row a device.
  host_grads = {n: 0.01 * rng.standard_normal((DEVICES, *s), np.float32) for n, s in shapes.items()}
  grad_spec = P(names if len(names) > 1 else names[0])
  rows: dict[str, Any] = {}
  runners = {}
  with jax.set_mesh(mesh):
    grads = jax.device_put(host_grads, NamedSharding(mesh, grad_spec))
    for name, (exchange, pmean_axes) in exchanges(names).items():
      tx = optax.chain(exchange, optax.sgd(LEARNING_RATE))
      local_step = functools.partial(_local_step, tx=tx, pmean_axes=pmean_axes)
      params = jax.device_put(host_params, NamedSharding(mesh, P()))
      state = tx.init(params)
      specs = rsgd.memory_specs(state, names[0])
      step = jax.jit(
        jax.shard_map(
          local_step, mesh=mesh, in_specs=(P(), specs, grad_spec), out_specs=(P(), specs)
        ),
        donate_argnums=(0, 1),
      )
      start = time.perf_counter()
      compiled = step.lower(params, state, grads).compile()
      compile_seconds = time.perf_counter() - start
      ops = collectives(compiled.as_text())
      by_axis: dict[str, float] = {}
      for op in ops:
        op["axis"] = axis_of_group(op["group"], mesh_shape, names)
        by_axis[op["axis"]] = by_axis.get(op["axis"], 0.0) + op["bytes_sent"]
      rows[name] = {
        "collectives": ops,
        "bytes_sent_per_device": sum(op["bytes_sent"] for op in ops),
        "bytes_sent_per_device_by_axis": by_axis,
        "compile_seconds": compile_seconds,
      }
      runners[name] = timing.carried_step(compiled, [params, state], [grads])
    times = timing.interleaved(runners, rounds) if rounds else {}
  slow = names[0]
  base = rows["psum_f32"]
  for name, row in rows.items():
    row["bytes_ratio"] = base["bytes_sent_per_device"] / row["bytes_sent_per_device"]
    slow_bytes = row["bytes_sent_per_device_by_axis"].get(slow, 0.0)
    row["slow_axis_bytes_ratio"] = base["bytes_sent_per_device_by_axis"][slow] / slow_bytes
    if times:
      row["step_seconds"] = timing.median(times[name])
      row["step_ratio"] = timing.median_ratio(times[name], times["psum_f32"])
  return {
    "mesh": dict(zip(names, mesh_shape, strict=True)),
    "compressed_axis": slow,
    "participants": mesh_shape[0],
    "rounds": rounds,
    "exchanges": rows,
  }


def wire_rows(width_scale: float, stage_blocks: tuple[int, ...], rounds: int) -> dict[str, Any]:
  """The measurement: bytes and step times of every exchange on both meshes (8 devices)."""
  if len(jax.devices()) < DEVICES:
    raise RuntimeError(f"needs {DEVICES} devices (XLA_FLAGS={DEVICE_FLAG}), found {jax.devices()}")
  shapes = resnet50_tree.resnet50_shapes(width_scale, stage_blocks)
  from examples.common import machine  # the machine record every committed number carries

  return {
    "machine": machine.describe(),
    "tree": {
      "width_scale": width_scale,
      "stage_blocks": list(stage_blocks),
      "leaves": len(shapes),
      "entries": int(sum(np.prod(s) for s in shapes.values())),
    },
    "topk_fraction": TOPK_FRACTION,
    "ring_formula": "all-gather (P-1)B_in; all-reduce 2(P-1)/P B; reduce-scatter (P-1)/P B_in",
    "meshes": {layout: mesh_rows(layout, shapes, rounds) for layout in MESHES},
  }


def markdown(result: dict[str, Any]) -> list[str]:
  tree = result["tree"]
  lines = [
    f"Compressed gradient exchange, {tree['entries']:,} float32 entries in {tree['leaves']} "
    f"leaves (ResNet-50 shapes at width x{tree['width_scale']}), 8 CPU devices; bytes each device "
    "sends per step from the compiled HLO (ring formulas), step time median over "
    f"{result['meshes']['data8']['rounds']} interleaved rounds.",
    "",
    "| mesh | exchange | MiB sent / device | x fewer | slow-axis MiB | x fewer (slow) | "
    "step ms | step x psum |",
    "|---|---|---|---|---|---|---|---|",
  ]
  mib = 1 << 20
  for layout, mesh in result["meshes"].items():
    for name, row in mesh["exchanges"].items():
      slow = row["bytes_sent_per_device_by_axis"].get(mesh["compressed_axis"], 0.0)
      step = f"{row['step_seconds'] * 1e3:.1f}" if "step_seconds" in row else "-"
      ratio = f"{row['step_ratio']:.2f}" if "step_ratio" in row else "-"
      lines.append(
        f"| {layout} | {name} | {row['bytes_sent_per_device'] / mib:.3f} | "
        f"{row['bytes_ratio']:.1f} | {slow / mib:.3f} | {row['slow_axis_bytes_ratio']:.1f} | "
        f"{step} | {ratio} |"
      )
  return lines


def run_in_subprocess(width_scale: float, stage_blocks: tuple[int, ...], rounds: int) -> dict:
  """:func:`wire_rows` in a fresh process with 8 host devices (CPU), its result read back."""
  blocks = ",".join(map(str, stage_blocks))
  arguments = ["--rounds", str(rounds), "--width-scale", str(width_scale), "--stage-blocks", blocks]
  return cli.run_on_host_devices("benchmarks.wire_bytes", arguments)


# ---------------------------------------------------------------------------------------------
# How the bytes grow with the devices: one axis of P devices, both exchanges of both schemes,
# compiled (not run) from abstract inputs, so that P = 64 fits in a small machine's memory.

SCALING_DEVICES = (8, 16, 32, 64)


def scaling_exchanges(block_size: int | None = None) -> dict[str, tuple[Any, str | None]]:
  """Name -> (scheme, exchange) of the rows; ``psum_f32`` (None, None) is the float32 all-reduce.

  With ``block_size``, two more rows: ``signblock_all_gather`` and ``signblock_two_phase``, scaled
  sign with one scale per block of ``block_size`` entries (``rsgd.scaled_sign(block_size=...)``).
  """
  rows: dict[str, tuple[Any, str | None]] = {
    "psum_f32": (None, None),
    "sign_all_gather": (rsgd.scaled_sign(), "all_gather"),
    "sign_two_phase": (rsgd.scaled_sign(), "two_phase"),
    "topk1pct_all_gather": (rsgd.top_k(TOPK_FRACTION), "all_gather"),
    "topk1pct_two_phase": (rsgd.top_k(TOPK_FRACTION), "two_phase"),
  }
  if block_size is not None:
    blocks = rsgd.scaled_sign(block_size=block_size)
    rows["signblock_all_gather"] = (blocks, "all_gather")
    rows["signblock_two_phase"] = (blocks, "two_phase")
  return rows


def formula_bytes(
  name: str, sizes: list[int], devices: int, block_size: int | None = None
) -> float:
  """Bytes one device sends per step by the ring formulas, from the exchange's wire format.

  float32 all-reduce of ``d`` entries: ``2 (P - 1) / P 4 d``. All-gather exchange: ``(P - 1)`` times
  the device's payload (sign: ``ceil(d / 8)`` bytes of bits and a float32 scale per leaf; top-k:
  8 bytes per kept entry). Two-phase exchange: the chunk (``c = sum_l ceil(d_l / P)`` entries) goes
  to each of the other devices once in each phase: sign ``2 (P - 1) ceil(c / 8)`` bytes, plus the
  scales (an all-gather of the senders' and an all-reduce of the server's); top-k
  ``2 (P - 1) 8 K``, ``K`` the entries kept in a chunk (``top_k_count`` of each leaf's piece).
  Block-wise sign (``signblock_*``, blocks of ``B = block_size``): all-gather sends a float32 scale
  per block of each leaf, ``sum_l ceil(d_l / B)``, instead of one a leaf; two-phase cuts each piece
  into blocks, ``b = sum_l ceil(ceil(d_l / P) / B)`` scales a chunk, sent with the chunk in both
  phases: ``2 (P - 1) (ceil(c / 8) + 4 b)``.
  """
  p, leaves = devices, len(sizes)
  if name == "psum_f32":
    return 2 * (p - 1) / p * 4 * sum(sizes)
  pieces = [-(-d // p) for d in sizes]
  if name.startswith("signblock_"):
    if block_size is None:
      raise ValueError(f"{name!r} needs the block size.")
    if name == "signblock_all_gather":
      return (p - 1) * (-(-sum(sizes) // 8) + 4 * sum(-(-d // block_size) for d in sizes))
    blocks = sum(-(-n // block_size) for n in pieces)
    return 2 * (p - 1) * (-(-sum(pieces) // 8) + 4 * blocks)
  if name == "sign_all_gather":
    return (p - 1) * (-(-sum(sizes) // 8) + 4 * leaves)
  if name == "sign_two_phase":
    return 2 * (p - 1) * -(-sum(pieces) // 8) + (p - 1) * 4 * leaves + 2 * (p - 1) / p * 4 * leaves
  if name == "topk1pct_all_gather":
    return (p - 1) * 8 * sum(rsgd._schemes.top_k_count(TOPK_FRACTION, d) for d in sizes)
  kept = sum(rsgd._schemes.top_k_count(TOPK_FRACTION, n) for n in pieces)
  return 2 * (p - 1) * 8 * kept


def scaling_row(
  shapes: dict[str, tuple[int, ...]], block_size: int | None = None
) -> dict[str, Any]:
  """Every exchange of :func:`scaling_exchanges` on one ``data`` axis of all the devices."""
  devices = len(jax.devices())
  kind = (jax.sharding.AxisType.Explicit,)
  mesh = jax.make_mesh((devices,), ("data",), axis_types=kind, devices=jax.devices())
  sizes = [int(np.prod(s)) for s in shapes.values()]
  gradient_bytes = 4 * sum(sizes)
  params = {n: jax.ShapeDtypeStruct(s, np.float32) for n, s in shapes.items()}
  grads = {
    n: jax.ShapeDtypeStruct((devices, *s), np.float32, sharding=NamedSharding(mesh, P("data")))
    for n, s in shapes.items()
  }
  rows = {}
  with jax.set_mesh(mesh):
    for name, (scheme, exchange) in scaling_exchanges(block_size).items():
      if scheme is None:
        front, pmean_axes = optax.identity(), ("data",)
      else:
        front, pmean_axes = rsgd.compressed_mean(scheme, "data", exchange=exchange), None
      tx = optax.chain(front, optax.sgd(LEARNING_RATE))
      state = jax.eval_shape(tx.init, params)
      specs = rsgd.memory_specs(state, "data")
      abstract = (
        jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P())),
          params,
        ),
        jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, s)),
          state,
          specs,
        ),
        grads,
      )
      local_step = functools.partial(_local_step, tx=tx, pmean_axes=pmean_axes)
      step = jax.jit(
        jax.shard_map(
          local_step, mesh=mesh, in_specs=(P(), specs, P("data")), out_specs=(P(), specs)
        ),
        donate_argnums=(0, 1),
      )
      start = time.perf_counter()
      compiled = step.lower(*abstract).compile()
      compile_seconds = time.perf_counter() - start
      ops = collectives(compiled.as_text())
      sent = sum(op["bytes_sent"] for op in ops)
      temp = int(compiled.memory_analysis().temp_size_in_bytes)
      rows[name] = {
        "collectives": [{k: v for k, v in op.items() if k != "group"} for op in ops],
        "bytes_sent_per_device": sent,
        "formula_bytes_per_device": formula_bytes(name, sizes, devices, block_size),
        "temp_bytes_per_device": temp,
        "temp_per_gradient": temp / gradient_bytes,
        "compile_seconds": compile_seconds,
      }
  base = rows["psum_f32"]["bytes_sent_per_device"]
  for row in rows.values():
    row["bytes_ratio"] = base / row["bytes_sent_per_device"]
  return {"devices": devices, "gradient_bytes_per_device": gradient_bytes, "exchanges": rows}


def scaling_markdown(result: dict[str, Any]) -> list[str]:
  tree = result["tree"]
  lines = [
    f"Bytes each device sends per step against the number of devices `P` (one axis), "
    f"{tree['entries']:,} float32 entries in {tree['leaves']} leaves (ResNet-50 shapes at width "
    f"x{tree['width_scale']}), from the compiled HLO (ring formulas); temporaries from the compiled "
    "step's memory analysis, per device, in units of the float32 gradient.",
    "",
    "| P | exchange | MiB sent / device | x fewer than f32 all-reduce | formula MiB | "
    "temp / gradient | compile s |",
    "|---|---|---|---|---|---|---|",
  ]
  mib = 1 << 20
  for row in result["rows"]:
    for name, ex in row["exchanges"].items():
      lines.append(
        f"| {row['devices']} | {name} | {ex['bytes_sent_per_device'] / mib:.3f} | "
        f"{ex['bytes_ratio']:.1f} | {ex['formula_bytes_per_device'] / mib:.3f} | "
        f"{ex['temp_per_gradient']:.2f} | {ex['compile_seconds']:.0f} |"
      )
  return lines


def scaling_in_subprocesses(
  width_scale: float, stage_blocks: tuple[int, ...], devices: tuple[int, ...] = SCALING_DEVICES
) -> dict[str, Any]:
  """:func:`scaling_row` for each device count, each in a fresh process with that many devices."""
  shapes = resnet50_tree.resnet50_shapes(width_scale, stage_blocks)
  blocks = ",".join(map(str, stage_blocks))
  arguments = ["--scaling", "--width-scale", str(width_scale), "--stage-blocks", blocks]
  from examples.common import machine

  record = machine.describe()
  record["devices"] = f"{','.join(map(str, devices))} x cpu (host devices, a process each)"
  return {
    "machine": record,
    "tree": {
      "width_scale": width_scale,
      "stage_blocks": list(stage_blocks),
      "leaves": len(shapes),
      "entries": int(sum(np.prod(s) for s in shapes.values())),
    },
    "topk_fraction": TOPK_FRACTION,
    "ring_formula": "all-gather (P-1)B_in; all-reduce 2(P-1)/P B; all-to-all (P-1)/P B",
    "rows": [cli.run_on_host_devices("benchmarks.wire_bytes", arguments, p) for p in devices],
  }


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width-scale", type=float, default=1.0)
  parser.add_argument("--stage-blocks", default=",".join(map(str, resnet50_tree.STAGE_BLOCKS)))
  parser.add_argument("--rounds", type=int, default=5, help="timing rounds; 0: bytes only")
  parser.add_argument("--out", default=None)
  parser.add_argument(
    "--scaling",
    action="store_true",
    help="bytes and temporaries of both exchanges on one axis "
    "of all the host devices (set by XLA_FLAGS), compiled only",
  )
  parser.add_argument(
    "--scaling-devices",
    default=None,
    help="comma-separated device counts: run --scaling for "
    "each in a process of its own and write them together",
  )
  args = parser.parse_args(argv)
  blocks = tuple(int(b) for b in args.stage_blocks.split(","))
  if args.scaling_devices:
    counts = tuple(int(p) for p in args.scaling_devices.split(","))
    result = scaling_in_subprocesses(args.width_scale, blocks, counts)
    print("\n".join(scaling_markdown(result)))
  elif args.scaling:
    result = scaling_row(resnet50_tree.resnet50_shapes(args.width_scale, blocks))
  else:
    result = wire_rows(args.width_scale, blocks, args.rounds)
    print("\n".join(markdown(result)))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
