"""An epoch's per-step losses: the progress bar and the non-finite stop, synced every few steps."""

from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from examples.common.nonfinite import check_losses


class StepLosses:
  """An epoch's per-step losses (and other per-step values), checked every few steps.

  Keeps the device arrays and syncs with the host once per ``check_every`` steps, where it raises
  :class:`~examples.common.nonfinite.NonFiniteLossError` on a NaN/inf loss and moves the tqdm bar.

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
    self.extras: dict[str, list[Any]] = {}
    self._checked = 0
    self._bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not progress_bar, leave=False)

  def add(self, loss: Any, **extras: Any) -> None:
    self.losses.append(loss)
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

  def finish(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Checks the remaining losses, closes the bar; returns all losses and extras as arrays."""
    try:
      self._check()
    finally:
      self._bar.close()
    extras = {k: np.asarray(jax.device_get(v)) for k, v in self.extras.items()}
    return np.asarray(jax.device_get(self.losses)), extras

  def __enter__(self) -> "StepLosses":
    return self

  def __exit__(self, *exc: object) -> None:
    self._bar.close()
