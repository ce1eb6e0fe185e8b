"""Finding the states in any nesting, and the point to evaluate: ``eval_params`` and ``proximity``.

Optimizer states nest (``optax.chain``, ``named_chain``, ``inject_hyperparams``, ``masked``,
``MultiSteps``, ``apply_if_finite``, ``flax.nnx.Optimizer``), so the residual and averaging states are
found by type wherever they sit, and their leaves are paired with the parameters by key path, which
also pairs ``nnx.Optimizer``'s ``OptVariable`` leaves with ``nnx.Param`` ones.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.tree_util import keystr, tree_flatten_with_path, tree_map_with_path

from rsgd_optax import _dtypes, _tree
from rsgd_optax._states import AveragingState, ResidualState

PyTree = Any
KeyPath = tuple[Any, ...]


def find_residual_state(opt_state: PyTree, which: int | str | None = None) -> ResidualState:
  """Returns the :class:`ResidualState` inside a (nested) optimizer state.

  Args:
    opt_state: any optimizer state: ``optax.chain``, nested chains, ``optax.named_chain``,
      ``inject_hyperparams``, ``masked``, ``MultiSteps``, ``apply_if_finite``, or the state held by
      ``flax.nnx.Optimizer``.
    which: needed only when the state holds several residual transformations: their index in
      depth-first order, or a name on their path (an ``optax.named_chain`` name).

  Returns:
    The selected :class:`ResidualState`.

  Raises:
    ValueError: if there is no residual state, or several and ``which`` does not pick exactly one.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> tx = optax.named_chain(
    ...     ("sgd", optax.sgd(0.1)), ("ema", rsgd.residual_scale(0.1)), ("sign", rsgd.residual_sign()))
    >>> state = tx.init({"w": jnp.zeros(3)})
    >>> rsgd.find_residual_state(state, which="sign").count
    Array(0, dtype=int32)
  """
  found = _tree.states_of_type(opt_state, ResidualState)
  if not found:
    raise ValueError(
      "The optimizer state holds no ResidualState, so there is no residual to add. Chain a residual "
      "transformation after the base optimizer, e.g. optax.chain(optax.sgd(0.1, momentum=0.9), "
      "rsgd.residual_scale(1 / 16)), and pass that optimizer's state."
    )
  return _tree.select(found, which, "residual state")


def find_averaging_state(opt_state: PyTree, which: int | str | None = None) -> AveragingState:
  """Returns the :class:`AveragingState` inside a (nested) optimizer state.

  Args:
    opt_state: any optimizer state holding :func:`rsgd_optax.iterate_averaging` (inside
      ``optax.chain``, ``named_chain``, ``inject_hyperparams``, ``apply_if_finite``, ``MultiSteps``,
      or ``flax.nnx.Optimizer``).
    which: needed only when the state holds several: their index in depth-first order, or a name
      on their path (an ``optax.named_chain`` name).

  Returns:
    The selected :class:`AveragingState`.

  Raises:
    ValueError: if there is none, or several and ``which`` does not pick exactly one.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> tx = rsgd.iterate_averaging(optax.sgd(0.1))
    >>> rsgd.find_averaging_state(tx.init({"w": jnp.zeros(3)})).start_step  # -1: averaging is off
    Array(-1, dtype=int32)
  """
  found = _tree.states_of_type(opt_state, AveragingState)
  if not found:
    raise ValueError(
      "Expected an AveragingState in the optimizer state, found 0. Wrap the optimizer in "
      "iterate_averaging(...), e.g. iterate_averaging(optax.chain(optax.sgd(30.0), "
      "rsgd.residual_sign()))."
    )
  return _tree.select(found, which, "averaging state")


def paired(state_tree: PyTree, params: PyTree, combine: Any) -> PyTree:
  """``combine(param, slot)`` for each float parameter, paired with its slot of ``state_tree``.

  The one way leaves are paired: by key path (with Flax NNX's trailing ``.value`` dropped), which
  also pairs ``nnx.Optimizer``'s ``OptVariable`` leaves with ``nnx.Param`` ones. The result has the
  structure of ``params``; leaves without a slot (masked out, or not floating point) pass through.
  ``params`` must match the state exactly: a float leaf the state does not have, a slot no parameter
  fills, or a shape that differs is a ValueError naming the leaf.
  """
  is_slot = lambda x: isinstance(x, optax.MaskedNode)
  by_path = {
    _tree.strip_variable_key(path): slot
    for path, slot in tree_flatten_with_path(state_tree, is_leaf=is_slot)[0]
  }
  used: set[KeyPath] = set()

  def pair(path: KeyPath, p: Any) -> Any:
    key = _tree.strip_variable_key(path)
    if key not in by_path:
      if not _tree.is_float(p):
        return p
      raise ValueError(
        f"The parameter {keystr(path)} has no leaf in the optimizer state: pass the params that "
        "this optimizer state was built for (and no other leaves)."
      )
    used.add(key)
    slot = by_path[key]
    if is_slot(slot) or not _tree.is_float(p):
      return p
    if slot.shape != p.shape:
      raise ValueError(
        f"The optimizer state's leaf for {keystr(path)} has shape {slot.shape} but the parameter "
        f"has {p.shape}: pass the params that this optimizer state was built for."
      )
    return combine(p, slot)

  out = tree_map_with_path(pair, params)
  # A masked-out slot may have no parameter (optax.masked hands its inner state MaskedNodes).
  unused = sorted(
    keystr(path) for path, slot in by_path.items() if path not in used and not is_slot(slot)
  )
  if unused:
    raise ValueError(
      f"The optimizer state has {len(unused)} leaves that no parameter matches (they include "
      f"{unused[:5]}): pass the params that this optimizer state was built for."
    )
  return out


def plus_residual(residual: PyTree, params: PyTree, *, keep_wider: bool = False) -> PyTree:
  """``x = y + r``: each parameter plus its residual, summed in the wider of the two dtypes.

  The one place the RSGD point is formed (:func:`eval_params`, the averaging, :func:`proximity`'s
  check of the params). The sums are returned in each parameter's dtype, or in the wider dtype with
  ``keep_wider`` (the averaging accumulates them so).
  """

  def add(p: jax.Array, r: jax.Array) -> jax.Array:
    dtype = _dtypes.wider_float(p.dtype, r.dtype)
    x = p.astype(dtype) + r.astype(dtype)
    return x if keep_wider else x.astype(p.dtype)

  return paired(residual, params, add)


def _averaged_view(opt_state: PyTree, which: int | str | None) -> tuple[AveragingState, Any]:
  """The averaging state that ``which`` names, and the ``which`` that picks ``x`` inside it.

  With one :func:`rsgd_optax.iterate_averaging` in the state, ``which`` picks among the residuals it
  wraps; with several (one per view), ``which`` picks the averaging, and each wraps at most one
  residual.
  """
  averaging = _tree.states_of_type(opt_state, AveragingState)
  inside = sum(len(_tree.states_of_type(s.inner_state, ResidualState)) for _, s in averaging)
  if len(_tree.states_of_type(opt_state, ResidualState)) != inside:
    raise ValueError(
      "The optimizer state holds a residual transformation outside iterate_averaging: put it inside, "
      "iterate_averaging(optax.chain(base_optimizer, rsgd.residual(...))), so that the average is "
      "taken of the RSGD point x = y + r."
    )
  if len(averaging) == 1:
    return averaging[0][1], which
  state = _tree.select(averaging, which, "averaging state")
  if len(_tree.states_of_type(state.inner_state, ResidualState)) > 1:
    raise ValueError(
      "With several iterate_averaging transformations in the state, each must wrap at most one "
      "residual transformation (one view each), e.g. optax.chain(optax.sgd(lr), "
      "rsgd.iterate_averaging(rsgd.residual_sign()), rsgd.iterate_averaging(rsgd.residual_topk()))."
    )
  return state, None


def eval_params(opt_state: PyTree, params: PyTree, which: int | str | None = None) -> PyTree:
  r"""The point to evaluate, checkpoint and ship: ``x = params + r``, or its running average.

  ``params`` are the base optimizer's iterate ``y`` (where gradients are taken); the residual ``r`` is
  read from the :class:`ResidualState` found anywhere in ``opt_state``. The sum is formed in the wider
  of the two dtypes and returned in each parameter's dtype, in the structure of ``params``. Leaves
  without a residual (integer or masked-out) are returned unchanged: the residual transformations
  pass an integer leaf's update through whole and keep no residual for it (a residual of a
  fraction of an integer step cannot be held in its dtype), so for such a leaf ``x = y``, the base
  optimizer's value, by design rather than by omission.

  When the state holds :func:`rsgd_optax.iterate_averaging` (ASGD, and with a residual inside it the
  paper's RASGD), the result is the average of ``x`` (of ``y`` when the averaging wraps no residual)
  once averaging has been switched on and has seen a step, and ``x`` before. The choice is a
  ``jnp.where``, so this works under ``jit``.

  .. math::
    x_t = y_t + r_t, \qquad \text{or} \qquad \bar{x}_t = \frac{1}{t - s} \sum_{k = s + 1}^{t} x_k.

  Args:
    opt_state: the optimizer state (see :func:`find_residual_state` for the nestings understood;
      ``flax.nnx.Optimizer.opt_state`` works too).
    params: the parameters the optimizer updates (a pytree, or ``nnx.state(model, nnx.Param)``).
    which: which view to evaluate when the state holds several residual transformations (see
      :func:`find_residual_state`), or several :func:`rsgd_optax.iterate_averaging` ones (then
      ``which`` picks the averaging, by index among them or by name).

  Returns:
    ``params + r`` (or the average) in the structure and dtypes of ``params``.

  Raises:
    ValueError: if the state holds neither a residual nor an averaging state, ``which`` does not pick
      exactly one, a residual transformation sits outside the averaging next to one inside it, or
      ``params`` do not match the state.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> params = {"w": jnp.array([1.0])}
    >>> tx = optax.chain(optax.sgd(1.0), rsgd.residual_scale(0.25))
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> rsgd.eval_params(state, params)["w"]  # EMA of y: 0.75 * 1.0 + 0.25 * 0.0
    Array([0.75], dtype=float32)

  References:
    Algorithm 1 of the RSGD(m) paper: the output is the RSGD point ``x``; section 7.1 (RASGD).
  """
  if not _tree.states_of_type(opt_state, AveragingState):
    return plus_residual(find_residual_state(opt_state, which).residual, params)
  averaging, inner_which = _averaged_view(opt_state, which)
  if _tree.states_of_type(averaging.inner_state, ResidualState):
    point = plus_residual(find_residual_state(averaging.inner_state, inner_which).residual, params)
  else:
    point = params
  start_step = _tree.unboxed(averaging.start_step)
  use_average = (start_step >= 0) & (_tree.unboxed(averaging.count) > start_step)

  def choose(x: jax.Array, mean: jax.Array) -> jax.Array:
    return jnp.where(use_average, mean.astype(x.dtype), x)

  return paired(averaging.average, point, choose)


def proximity(opt_state: PyTree, params: PyTree, which: int | str | None = None) -> jax.Array:
  r"""The paper's normalized distance between the shipped point and the base trajectory.

  .. math::
    \frac{\lVert x_t - y_t \rVert_2}{\lVert y_t \rVert_2} = \frac{\lVert r_t \rVert_2}{\lVert y_t
    \rVert_2},

  over all floating-point parameters, accumulated in float32 (or wider).

  Args:
    opt_state: the optimizer state holding the residual.
    params: the parameters ``y``.
    which: see :func:`find_residual_state`.

  Returns:
    A scalar: 0 at the start, about 1e-2 to 1e-4 in the paper's CIFAR-100 runs (section 7.3).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> tx = optax.chain(optax.sgd(1.0), rsgd.residual_scale(0.5))
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([0.6, 0.8])}, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> round(float(rsgd.proximity(state, params)), 4)  # |r| = 0.5, |y| = 4
    0.125

  References:
    Section 7.3 of the RSGD(m) paper.
  """
  residual = find_residual_state(opt_state, which).residual
  # Paired as eval_params pairs them: params that do not match the state are refused the same way.
  pairs = jax.tree.leaves(paired(residual, params, lambda p, r: (p, r)), is_leaf=_is_pair)
  pairs = [pair for pair in pairs if _is_pair(pair)]
  return _l2_norm([r for _, r in pairs]) / _l2_norm([p for p, _ in pairs])


def _is_pair(x: Any) -> bool:
  return isinstance(x, tuple) and len(x) == 2 and all(_tree.is_float(v) for v in x)


def _l2_norm(leaves: list[jax.Array]) -> jax.Array:
  """The L2 norm over all entries of ``leaves``, accumulated in at least float32."""
  dtype = _dtypes.accumulation_dtype(*(leaf.dtype for leaf in leaves))
  total = jnp.zeros((), dtype)
  for leaf in leaves:
    total = total + jnp.sum(jnp.square(leaf.astype(dtype)))
  return jnp.sqrt(total)
