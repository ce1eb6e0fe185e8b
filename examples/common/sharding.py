"""Where each array lives on the mesh: replicated (data parallelism) or split FSDP-style.

Every data-parallel trainer uses the same pieces: a one-axis ``data`` mesh (:func:`create_mesh`,
from ``config.num_devices`` and ``config.platform``), the training state placed by
:func:`shardings` (``"replicated"``: whole on every device; ``"fsdp"``: each leaf split along
``data``), and each batch split along ``data`` on its batch dimension (:func:`batch_sharding`),
from the batch a process holds (:func:`put_local`: each process its own share) or from one every
process holds whole (:func:`put_global`). XLA then inserts the gradient all-reduce (or, with FSDP,
the reduce-scatter), so a step's numbers do not depend on the device count up to float rounding.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from examples.common.errors import UserError

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


def create_mesh(num_devices: int = 0, platform: str | None = None) -> Mesh:
  """A one-axis ``data`` mesh over the first ``num_devices`` devices (0: all of them).

  ``platform`` ("cpu", "gpu", ...) picks a backend other than the default one.

  Raises:
    UserError: the platform has no devices, or fewer than ``num_devices``.
  """
  try:
    devices = jax.devices(platform)
  except RuntimeError as error:
    raise UserError(
      f"config.platform={platform!r} has no devices here ({error}); set it to '' for the default "
      "backend."
    ) from error
  if num_devices:
    if num_devices > len(devices):
      raise UserError(
        f"config.num_devices={num_devices} but only {len(devices)} devices exist; set it to 0 "
        "for all of them."
      )
    devices = devices[:num_devices]
  return Mesh(np.array(devices), ("data",))


def check_batch_split(batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
  """Raises :class:`UserError` unless ``batch_size`` splits evenly over the mesh's devices."""
  if batch_size % mesh.size:
    raise UserError(
      f"config.{field}={batch_size} does not split over {mesh.size} devices; make it a multiple "
      "of the device count."
    )


def batch_sharding(
  mesh: Mesh, batch_dim: int = 0, *, batch_size: int | None = None, axis: str = "data"
) -> NamedSharding:
  """Batches split along ``axis`` on their dimension ``batch_dim``, whole along the others.

  A ``batch_size`` that does not split evenly over the devices of ``axis`` (an evaluation set of
  one column, say) gives the replicated sharding: the batch whole on every device.
  """
  if batch_size is not None and batch_size % mesh.shape[axis]:
    return NamedSharding(mesh, P())
  return NamedSharding(mesh, P(*([None] * batch_dim), axis))


def put_local(sharding: NamedSharding, *arrays: np.ndarray) -> list[jax.Array]:
  """Global arrays from each process's own share of the batch (a process's rows, in order)."""
  return [jax.make_array_from_process_local_data(sharding, a) for a in arrays]


def put_global(sharding: NamedSharding, *arrays: np.ndarray) -> list[jax.Array]:
  """Global arrays from host arrays that every process holds whole (each device takes its part)."""
  return [
    jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]) for a in arrays
  ]
