"""Pieces shared by every example family (image classification, language modeling, graphs).

* :mod:`~examples.common.optimizers`: the one registry of optimizer names (``REGISTRY``: each name's
  base, trajectory, tail and residual scheme), ``parse_views("sgdm,rsgdm-scale@0.25,...")`` (refuses
  names of different trajectories), ``make_optimizer(views or name, ...)`` (one chain layout for one
  view or many), ``group_by_trajectory`` and ``step_decay_schedule``.
* :mod:`~examples.common.rundir`: ``RunDirectory(config, workdir, views, template=state)``, the
  context manager a trainer's loop runs in (workdir checks, config and data locks, resume from the
  newest sound checkpoint, ``config.json``/``data.json``/``machine.json``, per-view records,
  checkpoints, every writer closed on exit).
* :mod:`~examples.common.datalock`: ``fingerprint(data)`` of what a run loaded, the data lock.
* :mod:`~examples.common.progress`: ``StepLosses`` (progress bar and non-finite stop).
* :mod:`~examples.common.config_checks`: ranges of config values and one rule for numbers (none
  may be non-finite), checked before anything is written.
* :mod:`~examples.common.entry`: the one entry point of the three ``main.py`` (flags, ``--help``,
  logging, ``UserError`` as one ``error:`` line).
* :mod:`~examples.common.errors`: ``UserError`` and the errors printed as one line.
* :mod:`~examples.common.metrics`: ``MetricsWriter`` (one JSON line per epoch in
  ``<workdir>/metrics.jsonl`` plus TensorBoard scalars, resume-safe) and ``read_metrics``.
* :mod:`~examples.common.checkpoint`: ``Checkpointer`` (Orbax, one checkpoint of named items per
  epoch with the checksums of its files, restore the newest sound one) and ``abstract_like``.
* :mod:`~examples.common.faultprobes`: the faults a user runs into, as probes of a family's entry
  point (for each family's ``faults_test.py``).
* :mod:`~examples.common.nonfinite`: ``check_losses`` raising ``NonFiniteLossError`` with the epoch
  and step.
* :mod:`~examples.common.report`: runs (``config.json`` + ``metrics.jsonl``) grouped by a config field,
  best metric per epoch range, mean ± std, paired gains of residual views over their base,
  Markdown tables and curve plots.
"""
