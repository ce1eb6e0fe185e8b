"""The states the transformations keep.

They sit in a module of their own because two others read them: the transformations that build them
(:mod:`rsgd_optax._residual`, :mod:`rsgd_optax._averaging`) and the lookup that finds them in any
nesting and forms the point to evaluate (:mod:`rsgd_optax._lookup`), which the averaging
transformation uses in turn.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

PyTree = Any


class ResidualState(NamedTuple):
  """State of :func:`rsgd_optax.residual`.

  Attributes:
    count: number of updates applied so far (``int32``); the step given to scheduled schemes.
    residual: ``r = x - y`` for each floating-point parameter, in ``residual_dtype`` (the parameter's
      dtype by default); :class:`optax.MaskedNode` for leaves that carry no residual (integer leaves).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax's states
  residual: PyTree


class ErrorFeedbackState(NamedTuple):
  """State of :func:`rsgd_optax.error_feedback`.

  Attributes:
    count: number of updates applied so far (``int32``).
    error: the accumulated compression error ``e`` per floating-point parameter.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax's states
  error: PyTree


class CompressState(NamedTuple):
  """State of :func:`rsgd_optax.compress`.

  Attributes:
    count: number of updates applied so far (``int32``).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax's states


class AveragingState(NamedTuple):
  """State of :func:`rsgd_optax.iterate_averaging`.

  Attributes:
    count: number of updates applied so far (``int32``).
    start_step: the value of ``count`` when :func:`rsgd_optax.start_averaging` switched averaging on,
      ``-1`` while it is off (``int32``). The average holds the ``count - start_step`` iterates
      produced since then.
    average: the uniform average of those iterates for each floating-point parameter, in
      ``average_dtype`` (the parameter's dtype by default); zeros while averaging is off;
      :class:`optax.MaskedNode` for the other leaves.
    inner_state: the state of the wrapped transformation.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax's states
  start_step: jax.Array
  average: PyTree
  inner_state: PyTree
