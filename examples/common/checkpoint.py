"""Orbax checkpoints for resumable training: one per epoch, restore the latest.

Orbax writes each checkpoint into a temporary directory and renames it only when complete (its
atomic finalize), so a run killed mid-save leaves the previous checkpoint as the latest one. A run
stopped on a non-finite loss simply does not save the bad epoch, so the last good one stays.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves a training-state pytree once per epoch and restores the latest one.

  Args:
    directory: where the checkpoints live (``<workdir>/checkpoints``); created if needed.
    max_to_keep: how many recent epochs to keep on disk.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_epoch(self) -> int | None:
    """The epoch of the newest complete checkpoint, or ``None`` if there is none."""
    return self._manager.latest_step()

  def save(self, epoch: int, state: Any) -> None:
    """Saves ``state`` as epoch ``epoch`` and waits until it is finalized on disk."""
    self._manager.save(epoch, args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def restore(self, abstract_state: Any, epoch: int | None = None) -> Any:
    """Restores epoch ``epoch`` (default: the latest) into ``abstract_state``'s structure.

    ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` (with shardings) or arrays, e.g.
    from :func:`abstract_like`; the restored arrays get its shardings.
    """
    epoch = self.latest_epoch() if epoch is None else epoch
    if epoch is None:
      raise FileNotFoundError(f"No checkpoint to restore in {self.directory}.")
    return self._manager.restore(epoch, args=ocp.args.StandardRestore(abstract_state))

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def abstract_like(state: Any) -> Any:
  """The ``ShapeDtypeStruct`` tree (keeping shardings) that :meth:`Checkpointer.restore` fills."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
