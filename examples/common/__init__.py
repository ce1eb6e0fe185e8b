"""Pieces shared by every example family (image classification, language modeling, graphs).

* :mod:`~examples.common.optimizers`: ``make_optimizer(name, learning_rate, ...)`` for the paper's
  optimizers by name (``sgdm``, ``rsgdm-scale``, ``ef-signsgd``, ``adam-topk``, ...),
  ``has_residual(name)`` and ``step_decay_schedule``.
* :mod:`~examples.common.runloop`: ``run(config, workdir, views=, state=, train_epoch=, evaluate=,
  ...)``, the run skeleton of every family (resume from the newest readable checkpoint, config
  record, per-view records, checkpoints, progress, the non-finite stop, Orbax INFO filtered), and
  ``StepLosses``.
* :mod:`~examples.common.views`: ``parse_views("sgdm,rsgdm-scale@0.25,...")`` (refuses names of
  different trajectories), ``make_optimizer(views, ...)`` (one chain with every residual),
  ``group_by_trajectory``.
* :mod:`~examples.common.metrics`: ``MetricsWriter`` (one JSON line per epoch in
  ``<workdir>/metrics.jsonl`` plus TensorBoard scalars, resume-safe) and ``read_metrics``.
* :mod:`~examples.common.checkpoint`: ``Checkpointer`` (Orbax, one checkpoint of named items per
  epoch, restore the latest) and ``abstract_like``.
* :mod:`~examples.common.nonfinite`: ``check_losses`` raising ``NonFiniteLossError`` with the epoch
  and step.
* :mod:`~examples.common.report`: runs (``config.json`` + ``metrics.jsonl``) grouped by a config field,
  best metric per epoch range, mean ± std, paired gains of residual views over their base,
  Markdown tables and curve plots.
"""
