"""Exact top-k magnitude selection used by the top-k residual scheme.

Reference implementation through :func:`jax.lax.top_k`. Ties are broken toward the lower flat index,
so exactly ``k`` entries survive.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def keep_top_k(x: jax.Array, k: int) -> jax.Array:
  """Returns ``x`` with all but its ``k`` largest-magnitude entries set to zero."""
  flat = x.reshape(-1)
  k = min(k, flat.size)
  _, idx = jax.lax.top_k(jnp.abs(flat), k)
  mask = jnp.zeros(flat.shape, dtype=bool).at[idx].set(True)
  return jnp.where(mask, flat, jnp.zeros_like(flat)).reshape(x.shape)


def keep_top_k_leaves(leaves: Sequence[jax.Array], ks: Sequence[int]) -> list[jax.Array]:
  """Applies :func:`keep_top_k` to each leaf with its own ``k``."""
  return [keep_top_k(leaf, k) for leaf, k in zip(leaves, ks, strict=True)]


def keep_top_k_global(leaves: Sequence[jax.Array], k: int) -> list[jax.Array]:
  """Keeps the ``k`` largest-magnitude entries across all leaves together."""
  if not leaves:
    return []
  dtype = jnp.result_type(*leaves)
  flat = jnp.concatenate([leaf.reshape(-1).astype(dtype) for leaf in leaves])
  kept = keep_top_k(flat, k)
  out, start = [], 0
  for leaf in leaves:
    out.append(kept[start : start + leaf.size].reshape(leaf.shape).astype(leaf.dtype))
    start += leaf.size
  return out
