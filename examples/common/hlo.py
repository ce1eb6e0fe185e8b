"""The collectives of a compiled XLA program and the bytes each device sends for them.

:func:`collectives` reads every cross-device op of a compiled HLO text (``jax.jit(f).lower(...)
.compile().as_text()``): its result shape and dtype and its replica groups. Bytes each device sends
assume ring algorithms over the ``P`` devices of a group:

- all-gather of ``B`` bytes from each device: ``(P - 1) B`` (each device's block makes ``P - 1``
  hops);
- all-reduce of a ``B``-byte buffer: ``2 (P - 1) / P * B`` (reduce-scatter, then all-gather);
- reduce-scatter of a ``B``-byte input: ``(P - 1) / P * B``; all-to-all: ``(P - 1) / P * B``;
  collective-permute: ``B``.

The compressed sweep (:mod:`examples.image_classification.compressed_sweep`) and the wire-bytes
benchmark (``benchmarks/wire_bytes.py``) both read their train steps with it.
"""

import re
from typing import Any

import numpy as np

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_BYTES.update({"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8})
_OPS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def _result_bytes(result_type: str) -> int:
  """Bytes of an HLO result type such as ``u8[8,1250]{1,0}`` or a tuple of them."""
  total = 0
  for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", result_type):
    total += int(np.prod([int(d) for d in dims.split(",") if d])) * _BYTES[dtype]
  return total


def _replica_groups(attributes: str, partitions: int) -> list[list[int]]:
  """The replica groups of one collective, from the list or the iota form (``[2,4]<=[8]``)."""
  listed = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", attributes)
  if listed:
    groups = [[int(i) for i in g.split(",") if i] for g in re.findall(r"\{([\d,]*)\}", listed[1])]
    return groups or [list(range(partitions))]
  iota = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attributes)
  if iota:
    shape = [int(d) for d in iota[1].split(",")]
    dims = [int(d) for d in iota[2].split(",")]
    ids = np.arange(int(np.prod(dims))).reshape(dims)
    if iota[3]:
      ids = ids.transpose([int(d) for d in iota[3].split(",")])
    return ids.reshape(shape).tolist()
  return [list(range(partitions))]


def ring_bytes_sent(op: str, result_bytes: int, group_size: int) -> float:
  """Bytes one device sends for one collective under ring algorithms (see the module docstring)."""
  p = group_size
  if p <= 1:
    return 0.0
  if op == "all-gather":
    return (p - 1) * result_bytes / p  # each device contributed result_bytes / p
  if op == "all-reduce":
    return 2 * (p - 1) / p * result_bytes
  if op == "reduce-scatter":
    return (p - 1) * result_bytes  # the input is p times the result
  if op == "all-to-all":
    return (p - 1) / p * result_bytes
  return float(result_bytes)  # collective-permute


def collectives(hlo: str) -> list[dict[str, Any]]:
  """Every cross-device op of a compiled HLO text: op, result dtypes and bytes, groups, bytes sent."""
  header = re.search(r"num_partitions=(\d+)", hlo)
  partitions = int(header[1]) if header else 1
  found = []
  pattern = rf"= (\(.*?\)|\S+) ({'|'.join(_OPS)})(-start)?\((.*)$"
  for line in hlo.splitlines():
    match = re.search(pattern, line)
    if not match:
      continue
    result_type, op, start = match[1], match[2], match[3]
    result_bytes = _result_bytes(result_type)
    if start:  # an async start's result holds its operands and its results: keep the results
      result_bytes = _result_bytes(result_type.split("), (")[-1]) if "), (" in result_type else 0
    groups = _replica_groups(match[4], partitions)
    found.append(
      {
        "op": op,
        "dtypes": sorted(set(re.findall(r"(\w+)\[", result_type))),
        "arrays": len(re.findall(r"\w+\[", result_type)),
        "result_bytes": result_bytes,
        "group": groups[0],
        "group_size": len(groups[0]),
        "bytes_sent": ring_bytes_sent(op, result_bytes, len(groups[0])),
      }
    )
  return found


def axis_of_group(group: list[int], mesh_shape: tuple[int, ...], names: tuple[str, ...]) -> str:
  """The mesh axes a replica group spans (device i is position i of the mesh, row-major)."""
  coords = np.array([np.unravel_index(i, mesh_shape) for i in group])
  spanned = [name for a, name in enumerate(names) if len(set(coords[:, a])) > 1]
  return "+".join(spanned) or "none"
