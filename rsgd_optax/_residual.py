"""SGD(m) with residuals, and the compression baselines it is compared with.

Paper notation: ``y_t`` is the reference point (the base optimizer's iterate, where gradients are
taken), ``r_t`` the residual and ``x_t = y_t + r_t`` the point that is evaluated and shipped. With the
base update ``u_t = y_{t+1} - y_t``, one step of Algorithm 1 is

    delta_t = x_t - y_{t+1} = r_t - u_t,   p_t = R(delta_t),
    x_{t+1} = x_t - p_t,                    r_{t+1} = delta_t - p_t.

:func:`residual` passes ``u_t`` through unchanged, so ``params`` stay on the base trajectory ``y``,
and keeps ``r`` in its state; :func:`rsgd_optax.eval_params` returns ``x = params + r``. The
baselines :func:`error_feedback` and :func:`compress` move ``params`` by the compressed step instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.tree_util import keystr, tree_flatten_with_path

from rsgd_optax import _dtypes, _schemes, _tree
from rsgd_optax._states import CompressState, ErrorFeedbackState, ResidualState

PyTree = Any


def _difference(memory: PyTree, updates: PyTree) -> PyTree:
  """``memory - updates`` per slot, in the wider of the two dtypes; MaskedNode where no slot."""

  def diff(u: Any, m: Any) -> Any:
    if isinstance(m, optax.MaskedNode) or _tree.skips(u):
      return optax.MaskedNode()
    dtype = _dtypes.wider_float(u.dtype, m.dtype)
    return m.astype(dtype) - u.astype(dtype)

  return jax.tree.map(diff, updates, memory, is_leaf=lambda x: x is None)


def _check_scheme_output(moved: PyTree, delta: PyTree) -> None:
  """Raises a ValueError naming the first leaf where the scheme changed structure or shape."""
  delta_leaves = {keystr(path): leaf for path, leaf in tree_flatten_with_path(delta)[0]}
  moved_leaves = {keystr(path): leaf for path, leaf in tree_flatten_with_path(moved)[0]}
  for name in sorted(delta_leaves.keys() ^ moved_leaves.keys()):
    side = "input" if name in delta_leaves else "output"
    raise ValueError(
      f"The residual scheme returned a tree of a different structure: leaf {name} is only in its "
      f"{side}. A scheme must return a pytree with its input's structure."
    )
  for name, d in delta_leaves.items():
    shape = getattr(moved_leaves[name], "shape", None)
    if shape != d.shape:
      raise ValueError(
        f"The residual scheme changed the shape of leaf {name} from {d.shape} to {shape}. "
        "A scheme must return a pytree with its input's shapes."
      )
  if jax.tree.structure(moved) != jax.tree.structure(delta):  # type: ignore[operator]
    raise ValueError(
      "The residual scheme returned a tree of a different structure: "
      f"{jax.tree.structure(moved)} for input {jax.tree.structure(delta)}."
    )


def _run_scheme(scheme: _schemes.Scheme, delta: PyTree, count: jax.Array) -> PyTree:
  moved = _schemes.apply_scheme(scheme, delta, count)
  _check_scheme_output(moved, delta)
  return moved


def _subtract_into(delta: PyTree, moved: PyTree, like: PyTree) -> PyTree:
  """``delta - moved`` cast to the dtypes of ``like`` (the stored memory)."""
  return jax.tree.map(lambda d, m, r: (d - m.astype(d.dtype)).astype(r.dtype), delta, moved, like)


def _negated_into(updates: PyTree, moved: PyTree) -> PyTree:
  """``-moved`` in each update's dtype; updates with no slot pass through untouched."""

  def negate(u: Any, m: Any) -> Any:
    if isinstance(m, optax.MaskedNode):
      return u
    return (-m).astype(u.dtype)

  return jax.tree.map(negate, updates, moved, is_leaf=lambda x: x is None)


def _with_memory(
  scheme: _schemes.Scheme,
  memory_dtype: Any,
  make_state: Callable[[jax.Array, PyTree], Any],
  emit: Callable[[PyTree, PyTree], PyTree],
) -> optax.GradientTransformation:
  """The arithmetic shared by :func:`residual` and :func:`error_feedback`.

  Both keep a memory ``m`` (the residual, or the error) and move by ``p = R(m - u)``, keeping
  ``m - u - p``; they differ only in what they emit: ``u`` itself (params stay on the base
  trajectory) or ``-p`` (params move by the compressed step).
  """
  _schemes.validate_scheme(scheme)
  dtype = _tree.validated_dtype(memory_dtype, "residual_dtype")

  def init_fn(params: PyTree) -> Any:
    return make_state(jnp.zeros([], jnp.int32), _tree.float_zeros(params, dtype))

  def update_fn(updates: PyTree, state: Any, params: PyTree = None) -> tuple[PyTree, Any]:
    del params
    count, memory = state
    delta = _difference(memory, updates)
    moved = _run_scheme(scheme, delta, count)
    new_memory = _subtract_into(delta, moved, memory)
    return emit(updates, moved), make_state(optax.safe_increment(count), new_memory)

  return optax.GradientTransformation(init_fn, update_fn)


def residual(
  scheme: _schemes.Scheme, *, residual_dtype: Any = None
) -> optax.GradientTransformation:
  r"""SGD(m) with residuals: keeps the paper's shadow point next to the base trajectory.

  Chained after a base optimizer, it passes the base updates through unchanged, so ``params`` follow
  the base optimizer's trajectory ``y`` exactly and gradients are taken there (the paper's Theorem 2).
  Its state carries the residual ``r``; the point to evaluate and ship is
  ``x = rsgd.eval_params(state, params) = params + r``. With ``u_t`` the base update:

  .. math::
    \delta_t = r_t - u_t, \quad p_t = R(\delta_t), \quad x_{t+1} = x_t - p_t, \quad
    r_{t+1} = \delta_t - p_t, \quad r_0 = 0.

  With :func:`rsgd_optax.scaling` (``R(v) = alpha v``),
  ``x_{t+1} = (1 - alpha) x_t + alpha y_{t+1}``: an exponential moving average of the base iterates
  with decay ``1 - alpha``.

  ``init`` builds ``r`` with :func:`jax.numpy.zeros_like` of each parameter, so it works under
  :func:`jax.eval_shape` and takes each parameter's sharding (eagerly, and under ``jit`` on meshes
  with explicit axes; on ``Auto`` axes give ``jit`` its ``out_shardings`` as for any optax state).

  Args:
    scheme: the residual scheme ``R``: :func:`rsgd_optax.scaling`, :func:`rsgd_optax.scaled_sign`,
      :func:`rsgd_optax.top_k`, or any callable from a pytree to a pytree of the same structure.
    residual_dtype: dtype in which ``r`` is stored (for example ``jnp.bfloat16`` to halve its memory
      for float32 params). Defaults to each parameter's dtype. Integer and masked-out leaves carry no
      residual.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a :class:`ResidualState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> params = {"w": jnp.array([1.0, 2.0])}
    >>> tx = optax.chain(optax.sgd(0.1, momentum=0.9), rsgd.residual(rsgd.scaling(0.5)))
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.array([1.0, -1.0])}
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)  # the SGDm trajectory y
    >>> params["w"], rsgd.eval_params(state, params)["w"]  # y and x = y + r
    (Array([0.9, 2.1], dtype=float32), Array([0.95, 2.05], dtype=float32))

  References:
    Algorithm 1 of the RSGD(m) paper (SGD(m) with residuals), sections 4.1-4.3 and Theorem 2.
  """
  return _with_memory(scheme, residual_dtype, ResidualState, lambda updates, moved: updates)


def residual_scale(
  alpha: float | optax.Schedule = 1 / 16, *, residual_dtype: Any = None
) -> optax.GradientTransformation:
  """:func:`residual` with the scaling scheme ``R(v) = alpha v`` (RSGD(m)-scale).

  Args:
    alpha: the scaling factor in ``(0, 1]`` or a schedule of it (the paper uses ``1/16``).
    residual_dtype: see :func:`residual`.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a :class:`ResidualState`.

  Example:
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> tx = optax.chain(optax.sgd(0.1, momentum=0.9), rsgd.residual_scale(1 / 16))
  """
  return residual(_schemes.scaling(alpha), residual_dtype=residual_dtype)


def residual_sign(
  per_leaf: bool = True, *, block_size: int | None = None, residual_dtype: Any = None
) -> optax.GradientTransformation:
  """:func:`residual` with the scaled sign scheme (RSGD(m)-sign).

  Args:
    per_leaf: see :func:`rsgd_optax.scaled_sign`.
    block_size: one scale per block of this many entries, or None (default); see
      :func:`rsgd_optax.scaled_sign`.
    residual_dtype: see :func:`residual`.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a :class:`ResidualState`.

  Example:
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> tx = optax.chain(optax.sgd(0.1, momentum=0.9), rsgd.residual_sign())
  """
  return residual(
    _schemes.scaled_sign(per_leaf, block_size=block_size), residual_dtype=residual_dtype
  )


def residual_topk(
  fraction: float = 0.01, per_leaf: bool = True, *, residual_dtype: Any = None
) -> optax.GradientTransformation:
  """:func:`residual` with the top-k scheme (RSGD(m)-topk).

  Args:
    fraction: share of entries moved each step, in ``(0, 1]`` (the paper uses 1%).
    per_leaf: see :func:`rsgd_optax.top_k`.
    residual_dtype: see :func:`residual`.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a :class:`ResidualState`.

  Example:
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> tx = optax.chain(optax.sgd(0.1, momentum=0.9), rsgd.residual_topk(0.01))
  """
  return residual(_schemes.top_k(fraction, per_leaf), residual_dtype=residual_dtype)


def error_feedback(
  scheme: _schemes.Scheme, *, residual_dtype: Any = None
) -> optax.GradientTransformation:
  r"""Error feedback (EF-SignSGD's memory): the baseline RSGD is compared with.

  The parameters themselves move by the compressed step, so the next gradient is taken at the
  compressed trajectory ``x``, not at the base trajectory: that is the difference from
  :func:`residual`. With ``u_t`` the base update and ``e_t`` the error memory:

  .. math::
    p_t = R(e_t - u_t), \quad x_{t+1} = x_t - p_t, \quad e_{t+1} = e_t - u_t - p_t, \quad e_0 = 0.

  Args:
    scheme: the compressor ``R`` (for EF-SignSGD, :func:`rsgd_optax.scaled_sign`).
    residual_dtype: dtype of the error memory; defaults to each parameter's dtype.

  Returns:
    An :class:`optax.GradientTransformation` whose state is an :class:`ErrorFeedbackState`; its
    updates are ``-p_t`` in each update's dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> tx = optax.chain(optax.sgd(0.5), rsgd.error_feedback(rsgd.scaled_sign()))
    >>> params = {"w": jnp.array([1.0, 2.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([1.0, -3.0])}, state, params)
    >>> updates["w"], state[1].error["w"]  # p = R([0.5, -1.5]) = [1, -1]
    (Array([-1.,  1.], dtype=float32), Array([-0.5, -0.5], dtype=float32))

  References:
    Karimireddy et al., "Error feedback fixes SignSGD and other gradient compression schemes",
    ICML 2019; section 2 of the RSGD(m) paper.
  """
  return _with_memory(scheme, residual_dtype, ErrorFeedbackState, _negated_into)


def compress(scheme: _schemes.Scheme) -> optax.GradientTransformation:
  r"""Compression without memory (SignSGD(m) with :func:`rsgd_optax.scaled_sign`).

  .. math::
    x_{t+1} = x_t - R(-u_t).

  Args:
    scheme: the compressor ``R``.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a :class:`CompressState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> tx = optax.chain(optax.sgd(0.1), rsgd.compress(rsgd.scaled_sign()))
    >>> params = {"w": jnp.array([1.0, 2.0])}
    >>> updates, _ = tx.update({"w": jnp.array([1.0, -3.0])}, tx.init(params), params)
    >>> updates["w"]
    Array([-0.2,  0.2], dtype=float32)

  References:
    Bernstein et al., "signSGD: compressed optimisation for non-convex problems", ICML 2018.
  """
  _schemes.validate_scheme(scheme)

  def init_fn(params: PyTree) -> CompressState:
    del params
    return CompressState(count=jnp.zeros([], jnp.int32))

  def update_fn(
    updates: PyTree, state: CompressState, params: PyTree = None
  ) -> tuple[PyTree, CompressState]:
    del params
    no_memory = jax.tree.map(
      lambda u: optax.MaskedNode() if _tree.skips(u) else jnp.zeros((), u.dtype),
      updates,
      is_leaf=lambda x: x is None,
    )
    delta = _difference(no_memory, updates)
    moved = _run_scheme(scheme, delta, state.count)
    return _negated_into(updates, moved), CompressState(optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)
