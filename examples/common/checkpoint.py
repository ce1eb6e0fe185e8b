"""Orbax checkpoints for resumable training: one per epoch, restore the latest.

Orbax writes each checkpoint into a temporary directory and renames it only when complete (its
atomic finalize), so a run killed mid-save leaves the previous checkpoint as the latest one. A run
stopped on a non-finite loss simply does not save the bad epoch, so the last good one stays.
"""

import logging
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
  """A readable checkpoint of another tree (another config, an older layout): not a corrupt one."""


class NoReadableCheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be read."""


class Checkpointer:
  """Saves named pytrees once per epoch and restores the latest ones.

  Each checkpoint holds named items, e.g. ``state`` (everything needed to resume) and ``model``
  (the evaluated parameters, what one ships); a restore reads only the items it asks for.

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

  def save(self, epoch: int, items: Mapping[str, Any]) -> None:
    """Saves ``items`` (name -> pytree) as epoch ``epoch``; returns once finalized on disk."""
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    self._manager.save(epoch, args=ocp.args.Composite(**args))
    self._manager.wait_until_finished()

  def restore(self, abstract_items: Mapping[str, Any], epoch: int | None = None) -> dict[str, Any]:
    """Restores the named items of epoch ``epoch`` (default: the latest).

    Each value of ``abstract_items`` is a pytree of ``jax.ShapeDtypeStruct`` (with shardings) or
    arrays, e.g. from :func:`abstract_like`; the restored arrays get its structure and shardings.
    """
    epoch = self.latest_epoch() if epoch is None else epoch
    if epoch is None:
      raise FileNotFoundError(f"No checkpoint to restore in {self.directory}.")
    args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
    try:
      restored = self._manager.restore(epoch, args=ocp.args.Composite(**args))
    except ValueError as error:
      # Another tree, or the same tree with other shapes (another model width, say): both mean
      # the checkpoint belongs to another config, not that it is corrupt.
      if not any(m in str(error) for m in ("tree structures do not match", "stored shape")):
        raise
      raise CheckpointMismatchError(
        f"The checkpoint of epoch {epoch} in {self.directory} holds a different tree than this run "
        "expects: it was written with another config, or by an older version of this example (the "
        "image trainer's state became plain dicts of arrays). Resume with the config that wrote "
        "it, or train in a fresh workdir."
      ) from error
    return {name: restored[name] for name in abstract_items}

  def all_epochs(self) -> list[int]:
    """The epochs of every complete checkpoint on disk, oldest first."""
    return sorted(self._manager.all_steps())

  def restore_newest_readable(
    self, abstract_items: Mapping[str, Any]
  ) -> tuple[int | None, dict[str, Any] | None]:
    """Restores the newest checkpoint that can be read; ``(None, None)`` when there is none.

    A checkpoint that fails to read (truncated or missing array files, say) is logged as skipped
    and moved aside to ``<directory>-unreadable/`` (so the resumed run can write that epoch again
    and nothing is deleted); the one before it is tried. A checkpoint of another tree
    (:class:`CheckpointMismatchError`) is not skipped: an older one would not fit either.

    Raises:
      NoReadableCheckpointError: checkpoints exist and none of them can be read.
    """
    epochs = self.all_epochs()
    skipped = []
    for epoch in reversed(epochs):
      try:
        restored = self.restore(abstract_items, epoch)
      except CheckpointMismatchError:
        raise
      except Exception as error:  # Orbax/TensorStore raise many types for unreadable files.
        reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        logger.warning(
          "Skipping the checkpoint of epoch %d in %s: it cannot be read (%s). Trying the one "
          "before it.",
          epoch,
          self.directory,
          reason,
        )
        skipped.append((epoch, reason))
        continue
      self._set_aside([e for e, _ in skipped])
      if skipped:
        logger.warning("Resuming from the checkpoint of epoch %d instead.", epoch)
      return epoch, restored
    if epochs:
      listing = "; ".join(f"epoch {e}: {why}" for e, why in skipped)
      raise NoReadableCheckpointError(
        f"None of the checkpoints in {self.directory} can be read ({listing}). To train from "
        f"scratch, move {self.directory} away (or use a fresh workdir); to resume, put back a "
        "readable copy of one of them."
      )
    return None, None

  def _set_aside(self, epochs: list[int]) -> None:
    """Moves unreadable checkpoints to ``<directory>-unreadable/<epoch>-<time>``."""
    if not epochs or jax.process_index() != 0:
      return
    aside = self.directory.rstrip(os.sep) + "-unreadable"
    os.makedirs(aside, exist_ok=True)
    for epoch in epochs:
      target = os.path.join(aside, f"{epoch}-{time.strftime('%Y%m%dT%H%M%S')}")
      shutil.move(os.path.join(self.directory, str(epoch)), target)
      logger.warning("Moved the unreadable checkpoint of epoch %d to %s.", epoch, target)
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def abstract_like(state: Any) -> Any:
  """The ``ShapeDtypeStruct`` tree (keeping shardings) that :meth:`Checkpointer.restore` fills."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
