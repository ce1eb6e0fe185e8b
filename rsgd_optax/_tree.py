"""Pytree helpers shared by the transformations and the state lookup.

Which leaves carry state (floating-point ones that are not masked out), zeros shaped and sharded like
them, finding optimizer states by type in any nesting, and the one key that Flax NNX adds to a leaf's
path. Everything else comes from :mod:`optax.tree_utils` and :mod:`jax.tree_util`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import optax
from jax.tree_util import GetAttrKey, keystr

PyTree = Any
KeyPath = tuple[Any, ...]
State = TypeVar("State")


def is_float(x: Any) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def skips(x: Any) -> bool:
  """Leaves with no state slot: masked-out (None or MaskedNode) and non-float leaves."""
  return x is None or isinstance(x, optax.MaskedNode) or not is_float(x)


def float_zeros(params: PyTree, dtype: Any = None) -> PyTree:
  """Zeros shaped (and sharded) like each float leaf of ``params``; MaskedNode for the others."""

  def zeros(p: Any) -> Any:
    if skips(p):
      return optax.MaskedNode()
    return jnp.zeros_like(p, dtype=dtype or p.dtype)

  return jax.tree.map(zeros, params, is_leaf=lambda x: x is None)


def validated_dtype(dtype_arg: Any, name: str) -> Any:
  """``dtype_arg`` as a floating dtype (None stays None); a ValueError naming ``name`` otherwise."""
  if dtype_arg is None:
    return None
  try:
    dtype = jnp.dtype(dtype_arg)
  except TypeError as e:
    raise ValueError(f"`{name}` must be a floating dtype, got {dtype_arg!r}.") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"`{name}` must be a floating dtype, got {dtype}.")
  return dtype


def states_of_type(tree: PyTree, state_type: type[State]) -> list[tuple[KeyPath, State]]:
  """Every ``state_type`` node in ``tree``, depth first, with its path."""
  return optax.tree_utils.tree_get_all_with_path(
    tree, state_type.__name__, lambda _, node: isinstance(node, state_type)
  )


def _label(index: int, path: KeyPath) -> str:
  """How a ``which=`` message names a found state: its ``named_chain`` name, or index and place."""
  names = [key.key for key in path if isinstance(getattr(key, "key", None), str)]
  if names:
    return f"{names[-1]!r} (index {index})"
  where = keystr(path)
  if not where:
    return f"index {index} (the whole state)"
  return f"index {index} (at {'chain' if where.startswith('[') else 'state'}{where})"


def describe(found: list[tuple[KeyPath, Any]]) -> str:
  return ", ".join(_label(i, path) for i, (path, _) in enumerate(found))


def _path_names(path: KeyPath) -> set[Any]:
  """The dict keys and attribute names along ``path`` (where ``optax.named_chain`` names sit)."""
  return {getattr(key, attr) for key in path for attr in ("key", "name") if hasattr(key, attr)}


def select(found: list[tuple[KeyPath, State]], which: int | str | None, kind: str) -> State:
  """The one entry of ``found`` that ``which`` names: None when there is one, an index, or a name.

  Raises a ValueError listing ``found`` (states of type ``kind``) when ``which`` does not pick exactly
  one. ``found`` must not be empty.
  """
  validated_which(which)
  where = describe(found)
  if which is None:
    if len(found) > 1:
      raise ValueError(
        f"The optimizer state holds {len(found)} {kind}s: {where}. Pass `which=` with an index or "
        "a named_chain name to choose one."
      )
    return found[0][1]
  if isinstance(which, int):
    if not -len(found) <= which < len(found):
      raise ValueError(
        f"`which={which}` is out of range: the optimizer state holds {len(found)} {kind}"
        f"{'s' if len(found) > 1 else ''}: {where}."
      )
    return found[which][1]
  named = [state for path, state in found if which in _path_names(path)]
  if len(named) != 1:
    raise ValueError(f"`which={which!r}` matches {len(named)} {kind}s; they are: {where}.")
  return named[0]


def validated_which(which: Any) -> None:
  """The one check of a ``which=`` argument's type (its value is checked against the state)."""
  if which is not None and (isinstance(which, bool) or not isinstance(which, int | str)):
    raise ValueError(f"`which` must be None, an int or a str, got {which!r}.")


def strip_variable_key(path: KeyPath) -> KeyPath:
  """Drops the trailing ``.value`` that a Flax NNX Variable adds to its leaf's key path.

  ``nnx.Optimizer`` wraps state leaves in ``OptVariable`` while ``nnx.state(model)`` holds ``Param``
  nodes: the two trees differ node for node but agree once this key is removed.
  """
  if path and isinstance(path[-1], GetAttrKey) and path[-1].name == "value":
    return path[:-1]
  return path


def unboxed(x: Any) -> jax.Array:
  """The array in a scalar state leaf, also when ``flax.nnx.Optimizer`` wrapped it in a Variable."""
  (leaf,) = jax.tree.leaves(x)
  return jnp.asarray(leaf)
