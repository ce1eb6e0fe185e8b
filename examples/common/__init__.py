"""Pieces shared by every example family (image classification, language modeling, transformer
language model, graphs).

One concept a module. Listed from the lowest layer up: each module imports only modules listed
above it (``examples/common/layout_test.py`` checks it), and none imports ``benchmarks`` or a
family.

- ``errors``: ``UserError`` and ``DataError``, the base errors a user can cause and fix.
- ``datalock``: the fingerprint of the data a run loaded (``data.json``), the data lock.
- ``fileio``: atomic writes of a run's files, and ``RunIOError`` (one line naming the file).
- ``config_record``: ``config.json``'s name, the config as JSON, its fields by dotted name.
- ``machine``: the machine a result came from (``machine.json``, report captions).
- ``hlo``: the collectives of a compiled program and the bytes each device sends for them.
- ``nonfinite``: ``check_losses``, raising ``NonFiniteLossError`` with the epoch and step.
- ``sharding``: the ``data`` mesh and where arrays live: batches split, state replicated or FSDP.
- ``cpu_runtime``: XLA's CPU scheduling flag for fewer and smaller temporaries.
- ``distributed``: starting JAX on several processes.
- ``watchdog``: the stall watchdog that ends a multi-process run whose peer died, and the steps
  compiled ahead of time with it paused.
- ``supervisor``: the parent of each process of a multi-process run, which turns JAX's abort on a
  dead coordinator into the relaunch line.
- ``config_checks``: ranges of config values and one rule for numbers (none may be non-finite),
  checked before anything is written.
- ``compression``: ``config.grad_compression`` by name (the compressed gradient exchange).
- ``optimizers``: the one registry of optimizer names, ``parse_views`` and ``make_optimizer``.
- ``progress``: ``StepLosses``, an epoch's per-step losses (progress bar, non-finite stop, means).
- ``metrics``: ``MetricsWriter`` (``metrics.jsonl`` and TensorBoard, resume-safe), ``read_metrics``.
- ``checkpoint``: ``Checkpointer`` (Orbax, one checkpoint of named items per epoch with the
  checksums of its files; restores the newest sound one) and its errors.
- ``report``: runs grouped by a config field, mean ± std, paired gains, Markdown tables, plots.
- ``rundir``: ``RunDirectory``, the config lock, resume, records and checkpoints of one workdir.
- ``skeleton``: what every trainer does around its loop: ``start_run``, ``finish``, ``RunResults``.
- ``entry``: the one entry point of every family's ``main.py`` (flags, ``--help``, logging, errors).
- ``faultprobes``: the faults a user runs into, as probes of a family's entry point (tests).
"""
