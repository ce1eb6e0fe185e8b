"""The base errors a user can cause, which the entry point prints as one ``error: ...`` line.

Raise :class:`UserError` for anything a user can fix (a bad config value, a workdir of another
config, an unknown optimizer name); its message says what is wrong and what to do. Errors of one
concern live in their module (:class:`~examples.common.fileio.RunIOError`,
:class:`~examples.common.nonfinite.NonFiniteLossError`, the checkpoint errors), and the entry point
lists every one it prints as one line (:data:`examples.common.entry.USER_ERRORS`). Every other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Something the user can fix; the message says what is wrong and what to do."""


class DataError(ValueError):
  """A data file is missing, truncated or not in its format; the message names the file and what
  to do. Each family's loaders raise a subclass of their own."""
