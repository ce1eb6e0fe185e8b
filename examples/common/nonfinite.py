"""Stopping a run on a non-finite loss, with the epoch and step where it happened."""

import numpy as np


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the last good checkpoint is left as it was."""


def check_losses(losses: np.ndarray, *, epoch: int, first_step: int) -> None:
  """Raises :class:`NonFiniteLossError` if any of ``losses`` is not finite.

  Args:
    losses: per-step training losses, in order, for steps ``first_step, first_step + 1, ...``.
    epoch: the epoch these steps belong to (named in the message).
    first_step: the global step of ``losses[0]``.
  """
  losses = np.asarray(losses)
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    step = first_step + int(bad[0])
    raise NonFiniteLossError(
      f"Training loss is {losses[bad[0]]} at epoch {epoch}, step {step}. The run stopped; the last"
      " good checkpoint is kept. Lower the learning rate, add normalization or change the seed."
    )
