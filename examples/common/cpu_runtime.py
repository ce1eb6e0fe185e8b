"""XLA's CPU scheduling choice for the example programs: fewer and smaller temporaries per step.

On the CPU, XLA's default "concurrency optimized" scheduler lets more buffers live at once. On the
README's Fashion-MNIST job a training step then needs one 41 MiB block of temporaries, above the
32 MiB up to which glibc keeps freed blocks for reuse, so every step mapped and zero-filled it
afresh and the kernel's share of the run was a third of its wall time (an epoch of 60k images took
29.5 s, 19.8 s with the memory-saving scheduler; the records were bitwise equal).

The same flag keeps the collectives of a step on several virtual CPU devices in one order: with
the concurrency-optimized scheduler, independent collectives may run at once and in another order
on each device, and a step with many of them deadlocked (docs/design_notes.md, "Collectives that
wait on each other"). The test processes set it too (the root ``conftest.py``).

The example entry points call :func:`prefer_small_temporaries` before JAX starts. It only adds the
flag to ``XLA_FLAGS`` when the user has not set that flag; it changes nothing on other backends.
The library itself never sets flags.
"""

import os

SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def prefer_small_temporaries(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> bool:
  """Turns XLA's concurrency-optimized CPU scheduler off unless ``XLA_FLAGS`` already names it.

  Must run before JAX initialises its backend (the first computation). Returns whether it set the
  flag.

  Example::

    from examples.common import cpu_runtime

    cpu_runtime.prefer_small_temporaries()  # first thing in main()
  """
  flags = environ.get("XLA_FLAGS", "")
  if SCHEDULER_FLAG in flags:
    return False
  environ["XLA_FLAGS"] = f"{flags} {SCHEDULER_FLAG}=false".strip()
  return True
