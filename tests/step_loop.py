"""The harness of the library's tests: an Optax transformation run in a jitted step loop.

It produces what the tests compare against the NumPy reference (``reference.py``), so it needs JAX
and Optax, but not the library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax


def jitted_step(tx: Any, grad_fn: Callable[[Any], Any]) -> Callable[[Any, Any], tuple[Any, Any]]:
  """``(params, state) -> (params + updates, new state)`` with the gradient at ``params``, jitted."""

  @jax.jit
  def step(params: Any, state: Any) -> tuple[Any, Any]:
    updates, state = tx.update(grad_fn(params), state, params)
    return optax.apply_updates(params, updates), state

  return step


def run_jitted(
  step: Callable[[Any, Any], tuple[Any, Any]],
  params: Any,
  state: Any,
  steps: int,
  *,
  before_step: Callable[[int, Any], Any] | None = None,
  record: Callable[[Any, Any], Any] | None = None,
  first: int = 0,
) -> tuple[Any, Any, list]:
  """Runs ``steps`` steps numbered from ``first``; returns the final params and state and a history.

  ``before_step(t, state)`` may replace the state before step ``t`` (for example to switch averaging
  on); ``record(params, state)`` is kept after each step (the params by default).
  """
  history = []
  for t in range(first, first + steps):
    if before_step is not None:
      state = before_step(t, state)
    params, state = step(params, state)
    history.append(params if record is None else record(params, state))
  return params, state, history
