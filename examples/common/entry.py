"""The one entry point of the example families: ``python -m examples.<family>.main``.

Each family's ``main.py`` is ``entry.run(__doc__, train.train_and_evaluate, DEFAULT_CONFIG)``; this
module does, once for all of them:

* flags: ``--config`` (a config file, ``--config.FIELD=VALUE`` overrides) and ``--workdir``.
  ``--help`` prints every config field with its default and one-line meaning, taken from the
  family's default config file (the trailing comment of each ``config.FIELD = ...`` line), and
  exits 0. A misspelt ``--config.FIELD`` is one ``error:`` line naming the nearest valid fields.
* the CPU runtime flags (:func:`examples.common.cpu_runtime.prefer_small_temporaries`), logging
  (the examples' INFO lines shown, Orbax's INFO filtered once), and the start of several processes
  (:func:`examples.common.distributed.initialize`) for a config that has ``distributed``.
* several processes (``config.distributed``, from the command line): each runs as the child of a
  thin parent (:mod:`examples.common.supervisor`) that turns JAX's abort on a dead coordinator
  into the relaunch line and exit code 75.
* errors: :class:`~examples.common.errors.UserError` and the data and IO errors each module defines
  (:data:`USER_ERRORS`) print as one ``error: ...`` line with exit status 1;
  any other exception is a bug and keeps its traceback.
"""

import difflib
import importlib
import importlib.util
import io
import logging
import re
import sys
import tokenize
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from examples.common import cpu_runtime, errors, supervisor
from examples.common.checkpoint import CheckpointMismatchError, NoReadableCheckpointError
from examples.common.config_record import flat_fields, is_group
from examples.common.fileio import RunIOError
from examples.common.nonfinite import NonFiniteLossError

HELP_ARGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")
# What prints as one ``error:`` line: each module's error a user can cause or fix. A missing file
# (missing data), a file in the wrong format, a full disk or an unwritable workdir, a diverged run,
# no readable checkpoint, a checkpoint of another tree. Every other exception is a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (
  errors.UserError,
  NonFiniteLossError,
  NoReadableCheckpointError,
  CheckpointMismatchError,
  FileNotFoundError,
  errors.DataError,
  RunIOError,
)
_FIELD_LINE = re.compile(r"^\s*config\.([A-Za-z_][\w.]*)\s*=")


class _DropOrbaxInfo(logging.Filter):
  """Drops Orbax's records below WARNING (dozens of INFO lines per save), keeps everything else."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def field_help(config_module: str) -> dict[str, str]:
  """Each field of ``config_module`` (a dotted module name) and the comment that ends its line.

  ``config.model_kwargs = ml_collections.ConfigDict()  # the model's keyword arguments`` gives
  ``{"model_kwargs": "the model's keyword arguments"}``; a field without a comment maps to ``""``.
  """
  spec = importlib.util.find_spec(config_module)
  assert spec is not None and spec.origin is not None, config_module
  with open(spec.origin) as f:
    source = f.read()
  comments: dict[int, str] = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      comments[token.start[0]] = token.string.lstrip("#").strip()
  fields = {}
  for number, line in enumerate(source.splitlines(), start=1):
    match = _FIELD_LINE.match(line)
    if match and not line.lstrip().startswith("#"):
      fields[match.group(1)] = comments.get(number, "")
  return fields


def help_text(doc: str, config_module: str) -> str:
  """Usage, the flags, and every config field with its default and meaning."""
  defaults = flat_fields(importlib.import_module(config_module).get_config(), groups=True)
  meanings = field_help(config_module)
  path = config_module.replace(".", "/") + ".py"
  lines = [
    doc.strip(),
    "",
    "Flags:",
    "  --config=FILE     a config file (configs/*.py); --config.FIELD=VALUE overrides one field",
    "  --workdir=DIR     checkpoints, metrics.jsonl and TensorBoard; rerunning resumes from it",
    "",
    f"Config fields (defaults from {path}; a config file may change them):",
  ]
  shown = {name: "{...}" if is_group(value) else repr(value) for name, value in defaults.items()}
  width = max(len(f"{name} = {value}") for name, value in shown.items())
  for name in defaults:
    left = f"{name} = {shown[name]}"
    lines.append(f"  {left:<{width}}  {meanings.get(name, '')}".rstrip())
  return "\n".join(lines) + "\n"


def _config_path(argv: Sequence[str]) -> str | None:
  for index, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and index + 1 < len(argv):
      return argv[index + 1]
  return None


def _is_config_path(argv: Sequence[str], index: int) -> bool:
  """Whether ``argv[index]`` is ``--config=FILE``, or ``--config`` or the ``FILE`` after it."""
  arg = argv[index]
  return (
    arg.startswith("--config=")
    or arg == "--config"
    or (index > 0 and argv[index - 1] == "--config")
  )


def _overrides(argv: Sequence[str]) -> list[str]:
  return [arg[len("--config.") :].split("=", 1)[0] for arg in argv if arg.startswith("--config.")]


def check_overrides(argv: Sequence[str], config: Mapping[str, Any]) -> None:
  """Raises :class:`UserError` for a ``--config.FIELD`` that ``config`` does not have."""
  fields = flat_fields(config, groups=True)
  for name in _overrides(argv):
    if name not in fields:
      near = difflib.get_close_matches(name, list(fields), n=3, cutoff=0.6)
      hint = f"did you mean {' or '.join(near)}? " if near else ""
      raise errors.UserError(
        f"--config.{name} is not a config field; {hint}--help lists every field."
      )


def _load_config(path: str) -> Any:
  spec = importlib.util.spec_from_file_location("_entry_config", path)
  if spec is None or spec.loader is None:
    raise errors.UserError(f"--config={path}: not a Python config file (configs/*.py).")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except FileNotFoundError as error:
    raise errors.UserError(f"--config={path}: no such file.") from error
  return module.get_config()


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def run(
  doc: str,
  train_and_evaluate: Callable[[Any, str], Any],
  config_module: str,
  argv: Sequence[str] | None = None,
) -> None:
  """Parses the command line and trains; see the module docstring.

  Args:
    doc: the family's usage text (its ``main.py`` docstring).
    train_and_evaluate: the family's ``train.train_and_evaluate(config, workdir)``.
    config_module: the family's default config module (dotted), whose fields ``--help`` lists.
    argv: the command line (default ``sys.argv``). Given, the run is never wrapped in the
      supervising parent (tests call this in-process).
  """
  from absl import flags
  from ml_collections import config_flags

  from_command_line = argv is None
  argv = list(sys.argv if argv is None else argv)
  if any(arg in HELP_ARGS for arg in argv[1:]):
    sys.stdout.write(help_text(doc, config_module))
    sys.exit(0)
  path = _config_path(argv)
  if path is None or not any(a.startswith("--workdir") for a in argv):
    _fail("give --config=FILE and --workdir=DIR (--help lists every config field).")
  # The config file is loaded here, once; absl parses the --config.FIELD overrides into it.
  # Defined here, not at import, so that importing a main module claims no flag names.
  rest_argv = [a for i, a in enumerate(argv) if not _is_config_path(argv, i)]
  flag_values = flags.FlagValues()
  try:
    config = _load_config(path)
    check_overrides(argv, config)
    workdir = flags.DEFINE_string(
      "workdir", None, "Checkpoints, metrics and TensorBoard.", flag_values=flag_values
    )
    config_flag = config_flags.DEFINE_config_dict(
      "config", config, "The config.", flag_values=flag_values, sys_argv=rest_argv
    )
    rest = flag_values(rest_argv)
  except errors.UserError as error:
    _fail(str(error))
  except flags.Error as error:
    _fail(f"{error} (--help lists every config field).")
  if len(rest) > 1:
    _fail(f"unexpected arguments {rest[1:]}; fields are set as --config.FIELD=VALUE.")
  if not flags.FLAGS.is_parsed():  # absl's own flags (logging): their defaults
    flags.FLAGS.mark_as_parsed()
  config = config_flag.value
  if from_command_line:
    supervisor.die_with_parent()  # a no-op unless this process is a supervised child
  if from_command_line and supervisor.wanted(config):
    command = supervisor.child_command(argv)
    if command is not None:  # this process only watches the one that trains
      supervisor.exit_like(supervisor.run_child(command))
  cpu_runtime.prefer_small_temporaries()
  setup_logging()
  try:
    if "distributed" in config:
      _start_processes(config)
    train_and_evaluate(config, workdir.value)
  except USER_ERRORS as error:
    _fail(str(error))


def setup_logging() -> None:
  """The examples' one logging set-up: absl's handler, INFO shown, Orbax's INFO lines dropped.

  The trainers and sweeps log through the standard ``logging`` module (loggers under
  ``examples``); the entry point and the sweep scripts call this once before training.
  """
  from absl import logging as absl_logging

  absl_logging.use_absl_handler()
  absl_logging.set_verbosity(absl_logging.INFO)
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
    handler.addFilter(_DropOrbaxInfo())
  logging.getLogger("examples").setLevel(logging.INFO)


def _start_processes(config: Any) -> None:
  from examples.common import distributed

  try:
    distributed.initialize(config)
  except ValueError as error:  # its checks of the coordinator settings (before any JAX call)
    raise errors.UserError(str(error)) from error
