"""Iterate averaging (ASGD, and with residuals the paper's RASGD), switched on by NT-ASGD.

AWD-LSTM trains with plain SGD and, once the validation loss stops improving (the non-monotone
trigger, :func:`nonmonotone_trigger`), keeps taking the same SGD steps but evaluates at the uniform
average of the iterates produced since the switch. With residuals (section 7.1 of the RSGD(m) paper)
the iterate that is averaged is the RSGD point ``x = y + r``, not the gradient point ``y``.

:func:`iterate_averaging` wraps the optimizer (base optimizer and residual transformation) rather than
following it in a chain, because the point it averages, ``x_{t+1} = y_{t+1} + r_{t+1}``, needs the
residual *after* the step, which only the wrapped state holds. Averaging is off until
:func:`start_averaging` sets a step number in the state: the training loop switches it on without
rebuilding or re-jitting anything, and a checkpoint carries the switch with it.

Because a residual transformation passes the base updates through, an averaging may also wrap just
the residual, after the base optimizer in a chain. So one training can carry several views, each with
its own average started by its own trigger: ``optax.chain(optax.sgd(lr),
iterate_averaging(optax.identity()), iterate_averaging(residual_sign()))`` is ASGD and RASGD-sign on
one SGD trajectory.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rsgd_optax import _dtypes, _lookup, _tree
from rsgd_optax._states import AveragingState, ResidualState

PyTree = Any


def _rsgd_point(params: PyTree, updates: PyTree, inner_state: PyTree, which: Any) -> PyTree:
  """``x_{t+1} = y_{t+1} + r_{t+1}``; ``y_{t+1}`` when the wrapped optimizer holds no residual."""
  new_params = optax.apply_updates(params, updates)
  if not _tree.states_of_type(inner_state, ResidualState):
    return new_params
  residual = _lookup.find_residual_state(inner_state, which).residual
  return _lookup.plus_residual(residual, new_params, keep_wider=True)


def iterate_averaging(
  inner: optax.GradientTransformation,
  *,
  which: int | str | None = None,
  average_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""ASGD's iterate averaging around an optimizer; with a residual inside, the paper's RASGD.

  The wrapped optimizer's updates pass through unchanged, so training follows exactly the trajectory
  it would follow alone. While averaging is off the state only counts steps. Once
  :func:`start_averaging` has switched it on at step ``s``, the state keeps the uniform average of the
  iterates produced since then, where the iterate is the RSGD point ``x = y + r`` when ``inner``
  holds a :func:`rsgd_optax.residual` transformation and ``y`` (the parameters) otherwise:

  .. math::
    \bar{x}_t = \frac{1}{t - s} \sum_{k = s + 1}^{t} x_k, \qquad
    \bar{x}_t = \bar{x}_{t-1} + \frac{x_t - \bar{x}_{t-1}}{t - s}.

  :func:`eval_params` returns ``\bar{x}_t`` once averaging is on and ``x_t`` before (and right after
  the switch, before the first averaged step). PyTorch's ``ASGD(t0=0, lambd=0)``, which the AWD-LSTM
  code switches to, takes the same SGD steps; its average differs from this one only by leaving out
  the first averaged iterate (an artefact of when it updates its ``mu``).

  No transformation after it may change the updates (it computes ``y_{t+1}`` as
  ``params + updates``); wrappers that leave the updates alone (``optax.inject_hyperparams``,
  ``optax.apply_if_finite``, ``optax.MultiSteps``) may go around it. It may wrap the whole optimizer
  or, in a chain after the base optimizer, only a residual transformation (which passes the base
  updates through) or ``optax.identity()`` (the base iterate ``y``). Several such averagings in one
  chain are several views of one trajectory, each switched on by
  ``start_averaging(state, which=...)``.

  Args:
    inner: the optimizer whose iterates are averaged, for example ``optax.sgd(30.0)`` (ASGD) or
      ``optax.chain(optax.sgd(30.0), rsgd.residual_sign())`` (RASGD-sign).
    which: which residual transformation defines ``x`` when ``inner`` holds several (see
      :func:`rsgd_optax.find_residual_state`).
    average_dtype: dtype in which the average is stored; defaults to each parameter's dtype (the
      running mean is computed in float32 or wider either way).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is an :class:`AveragingState`.
    Its ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> params = {"w": jnp.array([4.0])}
    >>> tx = rsgd.iterate_averaging(optax.sgd(1.0))
    >>> state = tx.init(params)
    >>> for step in range(3):
    ...   if step == 1:
    ...     state = rsgd.start_averaging(state)  # e.g. when nonmonotone_trigger(val_losses) says so
    ...   updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params["w"], rsgd.eval_params(state, params)["w"]  # iterates 3, 2, 1; average of 2 and 1
    (Array([1.], dtype=float32), Array([1.5], dtype=float32))

  References:
    Polyak and Juditsky, "Acceleration of stochastic approximation by averaging", 1992; Merity et al.,
    "Regularizing and optimizing LSTM language models", ICLR 2018 (NT-ASGD); section 7.1 of the
    RSGD(m) paper (RASGD).
  """
  if not isinstance(inner, optax.GradientTransformation):
    raise ValueError(
      "`inner` must be an optax.GradientTransformation (the optimizer whose iterates are averaged, "
      f"e.g. optax.sgd(30.0)), got {inner!r}."
    )
  _tree.validated_which(which)
  dtype = _tree.validated_dtype(average_dtype, "average_dtype")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: PyTree) -> AveragingState:
    inner_state = inner.init(params)
    if _tree.states_of_type(inner_state, AveragingState):
      raise ValueError("iterate_averaging cannot wrap another iterate_averaging.")

    return AveragingState(
      count=jnp.zeros([], jnp.int32),
      start_step=jnp.full([], -1, jnp.int32),
      average=_tree.float_zeros(params, dtype),
      inner_state=inner_state,
    )

  def update_fn(
    updates: PyTree, state: AveragingState, params: PyTree = None, **extra_args: Any
  ) -> tuple[PyTree, AveragingState]:
    if params is None:
      raise ValueError(
        "iterate_averaging needs the parameters to average: call tx.update(grads, state, params)."
      )
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    count = optax.safe_increment(state.count)

    def averaged() -> PyTree:
      point = _rsgd_point(params, updates, inner_state, which)
      num_averaged = count - state.start_step

      def running_mean(x: Any, mean: Any) -> Any:
        if isinstance(mean, optax.MaskedNode):
          return mean
        acc = _dtypes.accumulation_dtype(mean.dtype, x.dtype)
        old = mean.astype(acc)
        return (old + (x.astype(acc) - old) / num_averaged.astype(acc)).astype(mean.dtype)

      # Mapped over the point (a leaf where the average has a MaskedNode), in the average's shape.
      return jax.tree.map(running_mean, point, state.average)

    started = state.start_step >= 0
    average = jax.lax.cond(started, averaged, lambda: state.average)
    return updates, AveragingState(count, state.start_step, average, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def start_averaging(opt_state: PyTree, which: int | str | None = None) -> PyTree:
  """Switches iterate averaging on: every later update adds its iterate to the average.

  Returns a new state in the same structure, dtypes and (for ``flax.nnx.Optimizer``) Variable types,
  so a jitted train step neither rebuilds nor retraces. Calling it again changes nothing.

  Args:
    opt_state: an optimizer state holding an :class:`AveragingState` anywhere (for
      ``flax.nnx.Optimizer``: ``optimizer.opt_state = start_averaging(optimizer.opt_state)``).
    which: needed only when the state holds several averaging transformations (one per view, each
      switched on by its own trigger): see :func:`rsgd_optax.find_averaging_state`. The others are
      left as they are.

  Returns:
    The state with the chosen ``start_step`` set to the current step count.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> state = rsgd.iterate_averaging(optax.sgd(1.0)).init({"w": jnp.zeros(2)})
    >>> bool(rsgd.averaging_started(state)), bool(rsgd.averaging_started(rsgd.start_averaging(state)))
    (False, True)
  """
  chosen = _lookup.find_averaging_state(opt_state, which)

  def switch_on(node: Any) -> Any:
    if node is not chosen:
      return node
    start_step = jax.tree.map(
      lambda start, count: jnp.where(start < 0, count, start).astype(jnp.int32),
      node.start_step,
      node.count,
    )
    return node._replace(start_step=start_step)

  return jax.tree.map(switch_on, opt_state, is_leaf=lambda x: isinstance(x, AveragingState))


def averaging_started(opt_state: PyTree, which: int | str | None = None) -> jax.Array:
  """Whether :func:`start_averaging` has switched averaging on (a boolean scalar array).

  Args:
    opt_state: an optimizer state holding an :class:`AveragingState`.
    which: see :func:`start_averaging`.

  Returns:
    A ``bool`` scalar; ``bool(...)`` of it outside ``jit``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> tx = optax.named_chain(
    ...     ("sgd", optax.sgd(1.0)),
    ...     ("asgd", rsgd.iterate_averaging(optax.identity())),
    ...     ("rasgd-sign", rsgd.iterate_averaging(rsgd.residual_sign())))
    >>> state = rsgd.start_averaging(tx.init({"w": jnp.zeros(2)}), which="rasgd-sign")
    >>> bool(rsgd.averaging_started(state, "asgd")), bool(rsgd.averaging_started(state, "rasgd-sign"))
    (False, True)
  """
  return _tree.unboxed(_lookup.find_averaging_state(opt_state, which).start_step) >= 0


def nonmonotone_trigger(losses: Sequence[float], nonmono: int = 5) -> bool:
  r"""The NT-ASGD rule: whether to switch averaging on after the newest validation loss.

  With ``losses = [l_0, ..., l_k]`` in the order they were measured (``l_k`` the newest), it
  returns True exactly when ``k > nonmono`` and

  .. math::
    l_k > \min(l_0, \ldots, l_{k - 1 - \text{nonmono}}),

  that is, when the newest loss is worse than the best loss measured before the ``nonmono`` losses
  that precede it. It needs at least ``nonmono + 2`` losses. This is the AWD-LSTM code's
  ``len(best_val_loss) > nonmono and val_loss > min(best_val_loss[:-nonmono])`` with
  ``best_val_loss = losses[:-1]`` (the earlier losses) and ``val_loss = losses[-1]``. Call it once
  per evaluation with the losses measured before the switch, and :func:`start_averaging` when it
  returns True. A NaN newest loss never triggers (the comparison is false).

  Args:
    losses: the validation losses so far, oldest first.
    nonmono: the non-monotone interval (AWD-LSTM uses 5); an int >= 1.

  Returns:
    Whether to switch averaging on now.

  Example:
    >>> import rsgd_optax as rsgd
    >>> rsgd.nonmonotone_trigger([5.0, 4.0, 3.9, 3.8, 3.7, 3.6, 4.1], nonmono=5)  # 4.1 > min(5.0)? no
    False
    >>> rsgd.nonmonotone_trigger([5.0, 4.0, 3.9, 3.8, 3.7, 3.6, 3.5, 4.1], nonmono=5)  # 4.1 > 4.0
    True

  References:
    Merity et al., "Regularizing and optimizing LSTM language models", ICLR 2018, Algorithm 1.
  """
  if isinstance(nonmono, bool) or not isinstance(nonmono, numbers.Integral) or nonmono < 1:
    raise ValueError(f"`nonmono` must be an int >= 1, got {nonmono!r}.")
  values = [float(loss) for loss in losses]
  earlier, newest = values[:-1], values[-1:] or [math.nan]
  if len(earlier) <= nonmono:
    return False
  return newest[0] > min(earlier[:-nonmono])
