"""Where each array lives on the mesh: replicated (data parallelism) or split FSDP-style."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

SHARDINGS = ("replicated", "fsdp")


def fsdp_spec(shape: tuple[int, ...], num_shards: int, axis: str = "data") -> P:
  """Splits the largest dimension that ``num_shards`` divides (the first such on a tie).

  Arrays with no such dimension (scalars, small biases) stay replicated: ``P()``.
  """
  divisible = [d for d, size in enumerate(shape) if size % num_shards == 0 and size >= num_shards]
  if num_shards == 1 or not divisible:
    return P()
  dim = max(divisible, key=lambda d: (shape[d], -d))
  return P(*(axis if d == dim else None for d in range(len(shape))))


def shardings(tree: Any, mesh: Mesh, kind: str, axis: str = "data") -> Any:
  """A ``NamedSharding`` per array leaf of ``tree`` (arrays or ``jax.ShapeDtypeStruct``s).

  ``"replicated"``: every leaf whole on every device. ``"fsdp"``: each leaf split along ``axis`` by
  :func:`fsdp_spec`. Give the same rule to the params and to the optimizer state (momentum,
  residual): leaves of one shape then share one layout, and GSPMD reduce-scatters the gradients.
  """
  if kind not in SHARDINGS:
    raise ValueError(f"Unknown sharding {kind!r}: choose one of {', '.join(SHARDINGS)}.")
  num_shards = mesh.shape[axis]

  def leaf_sharding(x: Any) -> NamedSharding:
    if kind == "replicated" or not hasattr(x, "shape"):
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, fsdp_spec(tuple(x.shape), num_shards, axis))

  return jax.tree.map(leaf_sharding, tree)
