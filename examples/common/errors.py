"""The errors a user can cause, which the entry point prints as one ``error: ...`` line.

Raise :class:`UserError` for anything a user can fix (a bad config value, a workdir of another
config, an unknown optimizer name); its message says what is wrong and what to do. Every other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Something the user can fix; the message says what is wrong and what to do."""


class DataError(ValueError):
  """A data file is missing, truncated or not in its format; the message names the file and what
  to do. Each family's loaders raise a subclass of their own."""


def user_errors() -> tuple[type[BaseException], ...]:
  """What the entry point prints as one line: :class:`UserError` and the listed data/IO errors.

  A missing file (FileNotFoundError: missing data), a file in the wrong format (DataError), a full
  disk or unwritable workdir (RunIOError), a diverged run, no readable checkpoint, a checkpoint of
  another tree (imported here, not at the top, so that importing :class:`UserError` stays light).
  """
  from examples.common.checkpoint import CheckpointMismatchError, NoReadableCheckpointError
  from examples.common.metrics import RunIOError
  from examples.common.nonfinite import NonFiniteLossError

  return (
    UserError,
    NonFiniteLossError,
    NoReadableCheckpointError,
    CheckpointMismatchError,
    FileNotFoundError,
    DataError,
    RunIOError,
  )
