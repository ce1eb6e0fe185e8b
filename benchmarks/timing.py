"""Interleaved timing: every round runs each variant once, so slow drift of the machine cancels."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def interleaved(
  variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1, alternate: bool = False
) -> dict[str, list[float]]:
  """Seconds per call of each variant, ``rounds`` times, the variants alternating within a round.

  Each callable must block until its work is done (``jax.block_until_ready``). ``alternate`` runs
  every other round in reverse order: a variant timed right after another heavy one can be slowed
  by it (two top-k engines: about 6% either way), and reversing cancels that in the medians.
  """
  for _ in range(warmup):
    for run in variants.values():
      run()
  times: dict[str, list[float]] = {name: [] for name in variants}
  for i in range(rounds):
    order = list(variants.items())
    for name, run in reversed(order) if alternate and i % 2 else order:
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  return times


def median(values: list[float]) -> float:
  return float(statistics.median(values))


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
  """The median over rounds of the per-round ratio (variants of one round ran back to back)."""
  return median([a / b for a, b in zip(numerator, denominator, strict=True)])


def carried_step(compiled: Callable, carry: list[Any], fixed: list[Any]) -> Callable[[], None]:
  """A runner of a compiled step ``(*carry, *fixed) -> (*carry, ...)`` for :func:`interleaved`:
  each call feeds the step its previous carried outputs (the step may donate them), drops any
  further outputs, and waits for the result."""
  carry = list(carry)

  def run() -> None:
    carry[:] = list(compiled(*carry, *fixed))[: len(carry)]
    jax.block_until_ready(carry)

  return run
