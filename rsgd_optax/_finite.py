"""Skipping a non-finite step on every device at once, inside :func:`jax.shard_map`.

:func:`optax.apply_if_finite` checks the updates it is given and picks the inner update or a skip with
:func:`jax.lax.cond`. Inside ``shard_map`` that fails twice over for a chain holding
:func:`rsgd_optax.compressed_mean`: each device checks only its own gradient, so one device would skip
while the others step (and the devices would disagree on the collective calls inside the inner
update); and ``cond``'s branches return the inner state varying over the manual axes in one branch
and not in the other, which JAX refuses. Here the devices first agree on one flag (one all-reduce of
one scalar), the inner update then runs on every device (its collectives run everywhere, whatever
the flag), and the flag selects, leaf by leaf, between the inner update's results and the skip.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any
AxisName = str | tuple[str, ...]


def _axis_names(axis_name: Any) -> tuple[str, ...]:
  """``axis_name`` as a tuple of mesh axis names; a ValueError for anything else."""
  names = (axis_name,) if isinstance(axis_name, str) else axis_name
  if not isinstance(names, tuple) or not names or not all(isinstance(n, str) and n for n in names):
    raise ValueError(
      f"`axis_name` must be a mesh axis name or a tuple of them, for example 'data', got "
      f"{axis_name!r}."
    )
  return names


def _all_finite(tree: PyTree) -> jax.Array:
  """True if every entry of every floating-point leaf of ``tree`` is finite (integers always are)."""
  flags = [
    jnp.all(jnp.isfinite(leaf))
    for leaf in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
  ]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def _increment(count: jax.Array) -> jax.Array:
  """``count + 1``, saturating at the largest int32 (a counter that never wraps to negative)."""
  return jnp.where(count < jnp.iinfo(jnp.int32).max, count + 1, count)


def apply_if_finite_across(
  inner: optax.GradientTransformation,
  axis_name: AxisName,
  max_consecutive_errors: int,
) -> optax.GradientTransformationExtraArgs:
  r"""Skips a step on every device when any device's gradient is not finite.

  The same contract as :func:`optax.apply_if_finite`, for a step that runs inside
  :func:`jax.shard_map` with a different gradient on each device along ``axis_name`` (for example a
  chain holding :func:`rsgd_optax.compressed_mean`). With :math:`f_i` true when every entry of
  device :math:`i`'s gradient is finite, all devices compute the same

  .. math::

    f = \min_i f_i \quad \text{(one all-reduce of one scalar)}, \qquad
    \text{apply} = f \lor (n > N),

  where :math:`n` counts the consecutive non-finite steps so far (this one included) and :math:`N` is
  ``max_consecutive_errors``. When ``apply`` holds, the updates and the inner state are the inner
  transformation's; otherwise the updates are zero and the inner state, error-feedback memories
  included, is the one the step started from, on every device. A NaN or an infinity on one device
  therefore never reaches the mean nor any device's memory.

  The inner update runs on every step (its collective calls must run on every device), and its
  results are selected leaf by leaf with :func:`jax.numpy.where`, not with :func:`jax.lax.cond`, whose
  branches would disagree on which values vary over the manual mesh axes. The cost is one scalar
  all-reduce and one select per state leaf.

  The state is :class:`optax.ApplyIfFiniteState`; its counters are the same on every device (pass
  them through ``shard_map`` with ``P()``: :func:`rsgd_optax.memory_specs` does so). Outside
  ``shard_map``, where each array is global and one ``jnp.all`` already sees every device, use
  :func:`optax.apply_if_finite`.

  Args:
    inner: the transformation to guard, typically ``optax.chain(rsgd.compressed_mean(...), ...)``.
    axis_name: the mesh axis (or axes) over which the devices' gradients differ.
    max_consecutive_errors: how many consecutive non-finite steps are skipped; the next one is
      applied (as in :func:`optax.apply_if_finite`). A non-negative integer.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import functools
    >>> import jax, jax.numpy as jnp, numpy as np, optax
    >>> from jax.sharding import PartitionSpec as P
    >>> import rsgd_optax as rsgd
    >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> tx = rsgd.apply_if_finite_across(
    ...     optax.chain(rsgd.compressed_mean(rsgd.scaled_sign(), "data"), optax.sgd(0.1)),
    ...     "data", max_consecutive_errors=3)
    >>> params = {"w": jnp.ones(4)}
    >>> with jax.set_mesh(mesh):
    ...   state = tx.init(params)
    ...   specs = rsgd.memory_specs(state, "data")
    ...   @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P("data"), specs),
    ...                      out_specs=(P(), specs))
    ...   def step(grads, state):
    ...     return tx.update(jax.tree.map(lambda g: g[0], grads), state)
    ...   updates, state = step({"w": jnp.array([[1.0, jnp.nan, 2.0, 3.0]])}, state)
    >>> updates["w"], int(state.total_notfinite)
    (Array([0., 0., 0., 0.], dtype=float32), 1)

  References:
    The skip-and-count contract is :func:`optax.apply_if_finite`'s.
  """
  names = _axis_names(axis_name)
  if (
    isinstance(max_consecutive_errors, bool)
    or not isinstance(max_consecutive_errors, int)
    or max_consecutive_errors < 0
  ):
    raise ValueError(
      "`max_consecutive_errors` must be a non-negative integer (how many non-finite steps in a "
      f"row are skipped), got {max_consecutive_errors!r}."
    )
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: PyTree) -> optax.ApplyIfFiniteState:
    return optax.ApplyIfFiniteState(
      notfinite_count=jnp.zeros([], jnp.int32),
      last_finite=jnp.array(True),
      total_notfinite=jnp.zeros([], jnp.int32),
      inner_state=inner.init(params),
    )

  def update_fn(
    updates: PyTree, state: optax.ApplyIfFiniteState, params: PyTree = None, **extra_args: Any
  ) -> tuple[PyTree, optax.ApplyIfFiniteState]:
    try:
      # The minimum over devices of "all my entries are finite": the same flag on every device.
      finite = jax.lax.pmin(_all_finite(updates).astype(jnp.int32), names).astype(bool)
    except NameError as e:
      raise ValueError(
        f"apply_if_finite_across runs inside jax.shard_map over {names!r}, where each device holds "
        "its own gradient; that axis is not bound here. Outside shard_map use "
        "optax.apply_if_finite."
      ) from e
    notfinite_count = jnp.where(finite, 0, _increment(state.notfinite_count))
    apply = finite | (notfinite_count > max_consecutive_errors)

    new_updates, new_inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    updates = jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new_updates)
    inner_state = jax.tree.map(
      lambda new, old: jnp.where(apply, new, old), new_inner_state, state.inner_state
    )
    return updates, optax.ApplyIfFiniteState(
      notfinite_count=notfinite_count,
      last_finite=finite,
      total_notfinite=jnp.where(finite, state.total_notfinite, _increment(state.total_notfinite)),
      inner_state=inner_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
