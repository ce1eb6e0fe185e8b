"""What every trainer does before and around its epoch loop, written once; the loop stays with it.

Each family's ``train_and_evaluate(config, workdir)`` reads top to bottom (Flax's NNX examples and
big_vision keep their loops the same way; nothing here calls back into the trainer)::

  run = skeleton.start_run(config, workdir, CONFIG_RANGES, CONFIG_CHOICES, log_fields=...)
  data = ...   # the family's loaders: a refused config or workdir never reads any data
  state = ...  # model and optimizer, on the mesh of sharding.create_mesh(...)
  with run.open(state):
    for epoch in range(run.start_epoch, config.num_epochs):
      ...      # train steps (progress.StepLosses), then evaluate each view at its point
      run.write(epoch, per_view, shared=fields, seconds=...)
      run.save(epoch, state, models)
  return skeleton.finish(run)

:func:`start_run` parses the views of ``config.optimizer`` (a bad name fails first), checks every
field against its range and choices, and locks the workdir (the config lock, checked once, by
:class:`~examples.common.rundir.RunDirectory`); nothing is read or written before all three pass.
:func:`finish` gives every family's one return type, :class:`RunResults`. Logging is set up once, by
the entry point (:mod:`~examples.common.entry`); trainers log through the standard ``logging``
module under the ``examples`` logger.
"""

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import ml_collections

from examples.common import config_checks, optimizers, rundir

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RunResults:
  """What every family's ``train_and_evaluate`` returns.

  Attributes:
    records: each view's per-epoch records by view name, as its ``metrics.jsonl`` holds them
      (restored epochs included).
    final: each view's results at the end of the run by view name: the family's own (the language
      model's best model on the test set) or, by default, the view's last record.
  """

  records: dict[str, list[Record]]
  final: dict[str, Record]


def start_run(
  config: ml_collections.ConfigDict,
  workdir: str,
  ranges: Mapping[str, config_checks.Range],
  choices: Mapping[str, Collection[Any]] | None = None,
  *,
  log_fields: Sequence[str] = (),
) -> rundir.RunDirectory:
  """Parses the views, checks the config, locks the workdir; returns the unopened run directory.

  Raises:
    examples.common.errors.UserError: an unknown optimizer name or a list of names that cannot
      share a training, a config value out of range, or a workdir trained with another config.
  """
  views = optimizers.parse_views(config.optimizer)
  config_checks.check(config, ranges, choices)
  return rundir.RunDirectory(config, workdir, views, log_fields=log_fields)


def finish(run: rundir.RunDirectory, final: Mapping[str, Record] | None = None) -> RunResults:
  """The run's :class:`RunResults`: its records and ``final`` (default: each view's last record)."""
  records = run.records
  if final is None:
    final = {
      name: (view_records[-1] if view_records else {}) for name, view_records in records.items()
    }
  return RunResults(records, dict(final))
