"""Residual schemes: the map ``R`` of the paper's Algorithm 1.

A scheme takes the pytree ``v = x_t - y_{t+1}`` (how far the shipped point is from the next reference
point) and returns the part ``p = R(v)`` of it that the shipped point moves this step. Any callable from
a pytree to a pytree of the same structure is a scheme. The built-in schemes are small frozen objects
that also accept the step count, so that the scaling factor can follow an :class:`optax.Schedule`.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsgd_optax import _dtypes, _topk

PyTree = Any
Scheme = Callable[[PyTree], PyTree]


class StepAwareScheme:
  """Base of the built-in schemes: called as ``scheme(v, step=count)``.

  User schemes need not derive from it: a plain ``fn(v)`` is a scheme too. Transformations pass the
  step count only to instances of this class.
  """

  def __call__(self, tree: PyTree, step: jax.Array | int = 0) -> PyTree:
    raise TypeError(f"{type(self).__name__} must define __call__(tree, step).")


def apply_scheme(scheme: Scheme, tree: PyTree, step: jax.Array | int) -> PyTree:
  """Calls ``scheme`` on ``tree``, passing ``step`` to the schemes that use it."""
  if isinstance(scheme, StepAwareScheme):
    return scheme(tree, step)
  return scheme(tree)


def validate_scheme(scheme: Any, name: str = "scheme") -> None:
  if not callable(scheme):
    raise ValueError(
      f"`{name}` must be callable (a pytree -> pytree function such as rsgd.scaling(1/16)), "
      f"got {scheme!r} of type {type(scheme).__name__}."
    )


def _validate_fraction(value: Any, name: str, *, may_be_traced: bool = False) -> None:
  """Checks ``0 < value <= 1``; a traced value (``optax.inject_hyperparams`` under jit) is let be."""
  if isinstance(value, jax.core.Tracer):
    if may_be_traced:
      return
    raise ValueError(
      f"`{name}` must be a concrete number: it fixes array shapes. With optax.inject_hyperparams, "
      f"list it in static_args=('{name}',)."
    )
  if isinstance(value, jax.Array | np.ndarray) and value.shape == () and not value.dtype == bool:
    value = value.item()
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"`{name}` must be a real number in (0, 1], got {value!r}.")
  if not 0.0 < float(value) <= 1.0:
    raise ValueError(f"`{name}` must be in (0, 1], got {value!r}.")


def _validate_per_leaf(per_leaf: Any) -> None:
  if not isinstance(per_leaf, bool):
    raise ValueError(f"`per_leaf` must be True or False, got {per_leaf!r}.")


@dataclasses.dataclass(frozen=True)
class _Scaling(StepAwareScheme):
  alpha: float | optax.Schedule

  def __call__(self, tree: PyTree, step: jax.Array | int = 0) -> PyTree:
    alpha = self.alpha(step) if callable(self.alpha) else self.alpha
    return jax.tree.map(lambda v: jnp.asarray(alpha, v.dtype) * v, tree)


def scaling(alpha: float | optax.Schedule) -> Scheme:
  r"""The scaling scheme: moves a fixed fraction ``alpha`` of the way.

  .. math::
    R(v) = \alpha\, v, \qquad 0 < \alpha \le 1.

  Used in :func:`rsgd_optax.residual`, the shipped point becomes an exponential moving average of the
  base optimizer's iterates with decay ``1 - alpha``: ``x_{t+1} = (1 - alpha) x_t + alpha y_{t+1}``.
  ``alpha = 1`` leaves no residual (plain base optimizer).

  Args:
    alpha: the scaling factor in ``(0, 1]``, or an :class:`optax.Schedule` of the step count whose
      values lie in ``(0, 1]`` (the value at step 0 is checked here).

  Returns:
    A scheme (pytree -> pytree) that also accepts ``step=`` for scheduled ``alpha``.

  Example:
    >>> import jax.numpy as jnp
    >>> import rsgd_optax as rsgd
    >>> rsgd.scaling(0.25)({"w": jnp.array([4.0, -8.0])})["w"]
    Array([ 1., -2.], dtype=float32)

  References:
    Algorithm 1 and section 4.3 of the RSGD(m) paper (SGD(m) with residuals).
  """
  if callable(alpha):
    first = float(jax.device_get(alpha(0)))
    if not 0.0 < first <= 1.0:
      raise ValueError(f"The `alpha` schedule must take values in (0, 1]; at step 0 it is {first}.")
  else:
    _validate_fraction(alpha, "alpha", may_be_traced=True)
  return _Scaling(alpha)


def _l1_mean(leaves: list[jax.Array]) -> jax.Array:
  """The mean absolute value over all entries of ``leaves``, accumulated in at least float32."""
  acc = _dtypes.accumulation_dtype(*(leaf.dtype for leaf in leaves))
  total = sum(jnp.sum(jnp.abs(leaf), dtype=acc) for leaf in leaves)
  size = sum(leaf.size for leaf in leaves)
  return jnp.asarray(total, acc) / jnp.asarray(max(size, 1), acc)


def _signed(scale: jax.Array, v: jax.Array) -> jax.Array:
  """``scale * sign(v)``, rounded once into ``v``'s dtype."""
  return (scale * jnp.sign(v).astype(scale.dtype)).astype(v.dtype)


def block_scales(v: jax.Array, block_size: int, acc: Any) -> jax.Array:
  """``mean |v|`` of each block of ``block_size`` consecutive entries of the flattened ``v``.

  The last block holds the ``v.size mod block_size`` entries left over (when there are any) and
  is averaged over those alone. Returns ``ceil(v.size / block_size)`` values in ``acc``.
  """
  blocks = -(-v.size // block_size)
  flat = jnp.pad(jnp.abs(v.ravel()).astype(acc), (0, blocks * block_size - v.size))
  counts = np.minimum(block_size, v.size - block_size * np.arange(blocks))
  return jnp.sum(flat.reshape(blocks, block_size), axis=1) / jnp.asarray(counts, acc)


def _block_signed(v: jax.Array, block_size: int) -> jax.Array:
  """``R(v)`` with one scale a block: each entry ``mean |v|`` of its block times ``sign``."""
  if v.size == 0:
    return v
  acc = _dtypes.accumulation_dtype(v.dtype)
  scales = jnp.repeat(block_scales(v, block_size, acc), block_size)[: v.size]
  return (scales * jnp.sign(v.ravel()).astype(acc)).astype(v.dtype).reshape(v.shape)


@dataclasses.dataclass(frozen=True)
class _ScaledSign(StepAwareScheme):
  per_leaf: bool
  block_size: int | None = None

  def __call__(self, tree: PyTree, step: jax.Array | int = 0) -> PyTree:
    del step
    block_size = self.block_size
    if block_size is not None:
      return jax.tree.map(lambda v: _block_signed(v, block_size), tree)
    if self.per_leaf:
      return jax.tree.map(lambda v: _signed(_l1_mean([v]), v), tree)
    leaves = jax.tree.leaves(tree)
    if not leaves:
      return tree
    scale = _l1_mean(leaves)
    return jax.tree.map(lambda v: _signed(scale, v), tree)


def scaled_sign(per_leaf: bool = True, *, block_size: int | None = None) -> Scheme:
  r"""The scaled sign scheme (scaled SignSGD's compressor, the paper's Eq. 1).

  .. math::
    R(v) = \frac{\lVert v \rVert_1}{d}\, \operatorname{sign}(v),

  with ``d`` the number of entries of the leaf (``per_leaf=True``) or of the whole tree. For a vector
  with no zero entry, ``R(v)`` has the same L1 norm as ``v``.

  With ``block_size=B`` each leaf is flattened and cut into blocks ``b`` of ``B`` consecutive
  entries (the last block shorter when ``B`` does not divide the size), each with its own scale, as
  in the blockwise compressor of Zheng et al. (2019):

  .. math::
    R(v)_b = \frac{\lVert v_b \rVert_1}{|b|}\, \operatorname{sign}(v_b).

  Error feedback contracts by the factor ``||v||_1^2 / (d ||v||_2^2)`` of what it compresses; for
  a leaf with a few large entries that factor falls toward ``1/d`` with one scale, while blocks
  bound it below by the worst block's. :func:`rsgd_optax.compressed_mean` sends one float32 scale
  a block (``4 / B`` bytes an entry on top of the ``1/8`` of the sign bits).

  Args:
    per_leaf: scale each leaf by its own mean magnitude (default) or all leaves by the mean magnitude
      over the whole tree.
    block_size: entries a scale covers (a positive integer), or None (default) for one scale a leaf
      (or a tree). Needs ``per_leaf=True``.

  Returns:
    A scheme (pytree -> pytree).

  Example:
    >>> import jax.numpy as jnp
    >>> import rsgd_optax as rsgd
    >>> rsgd.scaled_sign()({"w": jnp.array([1.0, -3.0])})["w"]
    Array([ 2., -2.], dtype=float32)
    >>> rsgd.scaled_sign(block_size=2)({"w": jnp.array([1.0, -3.0, 10.0])})["w"]
    Array([ 2., -2., 10.], dtype=float32)

  References:
    Eq. (1) and section 4.3 of the RSGD(m) paper; Bernstein et al., "signSGD: compressed optimisation
    for non-convex problems", ICML 2018; Zheng, Huang and Kwok, "Communication-efficient distributed
    blockwise momentum SGD with error-feedback", NeurIPS 2019.
  """
  _validate_per_leaf(per_leaf)
  if block_size is not None:
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer):
      raise ValueError(
        f"`block_size` must be a positive integer (entries a scale covers) or None, got "
        f"{block_size!r}."
      )
    if block_size < 1:
      raise ValueError(f"`block_size` must be a positive integer or None, got {block_size!r}.")
    if not per_leaf:
      raise ValueError(
        "`block_size` cuts each leaf into blocks of its own, so it needs per_leaf=True; drop "
        "per_leaf=False or block_size."
      )
    block_size = int(block_size)
  return _ScaledSign(per_leaf, block_size)


def top_k_count(fraction: float, size: int) -> int:
  """``k = max(1, round(fraction * size))``, the number of entries the top-k scheme keeps."""
  return max(1, round(fraction * size))


@dataclasses.dataclass(frozen=True)
class _TopK(StepAwareScheme):
  fraction: float
  per_leaf: bool

  def __call__(self, tree: PyTree, step: jax.Array | int = 0) -> PyTree:
    # A leaf that may be sharded is selected in its own shape and sharding (see _topk): nothing is
    # gathered, and the result keeps the leaf's sharding.
    del step
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
      return tree
    if self.per_leaf:
      ks = [top_k_count(self.fraction, leaf.size) for leaf in leaves]
      kept = _topk.keep_top_k_leaves(leaves, ks)
    else:
      k = top_k_count(self.fraction, sum(leaf.size for leaf in leaves))
      kept = _topk.keep_top_k_global(leaves, k)
    return jax.tree.unflatten(treedef, kept)


def top_k(fraction: float = 0.01, per_leaf: bool = True) -> Scheme:
  r"""The top-k scheme: keeps the ``k`` largest-magnitude entries, zeroes the rest.

  .. math::
    R(v)_i = \begin{cases} v_i & i \in \operatorname{top}_k(\lvert v \rvert) \\ 0 & \text{otherwise}
    \end{cases}, \qquad k = \max(1, \operatorname{round}(\text{fraction} \cdot d)).

  The selection is exact: exactly ``k`` entries are kept, ties broken toward the lower flat index.
  On leaves sharded over a mesh (explicit or ``Auto`` axes) it runs in each leaf's own sharding:
  only histogram counters are all-reduced across devices, no leaf is gathered, and the kept set is
  the one a single device would keep.

  Args:
    fraction: the share of entries kept, in ``(0, 1]``.
    per_leaf: select within each leaf, ``d`` its size (default), or across the whole tree.

  Returns:
    A scheme (pytree -> pytree).

  Example:
    >>> import jax.numpy as jnp
    >>> import rsgd_optax as rsgd
    >>> rsgd.top_k(fraction=0.5)({"w": jnp.array([1.0, -3.0, 0.5, 2.0])})["w"]
    Array([ 0., -3.,  0.,  2.], dtype=float32)

  References:
    Section 4.3 of the RSGD(m) paper; Aji and Heafield, "Sparse communication for distributed gradient
    descent", EMNLP 2017.
  """
  _validate_fraction(fraction, "fraction")
  _validate_per_leaf(per_leaf)
  return _TopK(float(fraction), per_leaf)
