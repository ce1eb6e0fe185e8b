"""An epoch's per-step losses: the progress bar, the non-finite stop and the epoch's means."""

from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from examples.common.nonfinite import check_losses


class StepLosses:
  """An epoch's per-step losses (and other per-step values), checked every few steps.

  Keeps the device arrays and syncs with the host once per ``check_every`` steps, where it raises
  :class:`~examples.common.nonfinite.NonFiniteLossError` on a NaN/inf loss and moves the tqdm bar.
  :meth:`finish` returns the epoch's mean loss and the mean of each extra value: plain means of the
  float32 values, or with ``weight`` given to :meth:`add` (a window's length, say) weighted means
  in float64.

  Args:
    epoch: named in the progress bar and in the error.
    first_step: global step of the first loss.
    total: steps expected this epoch (for the bar; ``None`` if unknown).
    check_every: steps between host syncs.
    progress_bar: show the tqdm bar.
  """

  def __init__(
    self,
    epoch: int,
    first_step: int,
    total: int | None,
    *,
    check_every: int = 50,
    progress_bar: bool = True,
  ):
    self.epoch, self.first_step, self.total = epoch, first_step, total
    self.check_every = max(1, int(check_every))
    self.losses: list[Any] = []
    self.weights: list[float] = []
    self.extras: dict[str, list[Any]] = {}
    self._checked = 0
    self._bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not progress_bar, leave=False)

  @property
  def step(self) -> int:
    """The global step of the next loss (``first_step`` plus the losses added so far)."""
    return self.first_step + len(self.losses)

  def add(self, loss: Any, *, weight: float | None = None, **extras: Any) -> None:
    """Adds one step's loss (a device scalar), its weight in the mean, and other values."""
    if self.losses and (weight is None) != (not self.weights):
      raise ValueError("Give a weight to every loss of an epoch or to none.")
    self.losses.append(loss)
    if weight is not None:
      self.weights.append(weight)
    for key, value in extras.items():
      self.extras.setdefault(key, []).append(value)
    if len(self.losses) - self._checked >= self.check_every or len(self.losses) == self.total:
      self._check()

  def _check(self) -> None:
    new = np.asarray(jax.device_get(self.losses[self._checked :]))
    if new.size:
      check_losses(new, epoch=self.epoch, first_step=self.first_step + self._checked)
      self._bar.set_postfix(loss=f"{float(new[-1]):.4f}")
      self._bar.update(len(new))
    self._checked = len(self.losses)

  def finish(self) -> dict[str, float]:
    """Checks the remaining losses and closes the bar; returns the means (``loss`` and extras)."""
    try:
      self._check()
    finally:
      self._bar.close()
    values = {"loss": self.losses, **self.extras}
    if self.weights:
      return {
        key: float(
          np.average(np.asarray(jax.device_get(v)).astype(np.float64), weights=self.weights)
        )
        for key, v in values.items()
      }
    return {key: float(np.mean(np.asarray(jax.device_get(v)))) for key, v in values.items()}

  def __enter__(self) -> "StepLosses":
    return self

  def __exit__(self, *exc: object) -> None:
    self._bar.close()
