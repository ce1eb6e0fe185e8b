"""Test-process set-up shared by every test directory.

Eight virtual CPU devices let the sharding and data-parallel tests build a real device mesh. The flag
must be set before JAX initialises its backend, so it lives here (this test process only), not in the
user's environment.

One persistent compilation cache for the whole test run: many tests compile the same programs again
in another process (a trainer launched again to resume, the same tiny config in several tests), and
on 2 CPU cores compiling is most of their time. The cache is new for each run (nothing compiled by
another version of the code is ever read) and removed at its end; the processes the tests start
inherit it through the environment, as the pytest-xdist workers do.
"""

import atexit
import os
import shutil
import tempfile

_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICE_FLAG).strip()
# The CPU scheduler the examples run with (examples/common/cpu_runtime.py). XLA's default one may
# run a step's independent collectives in another order on each virtual device, which deadlocks
# (docs/design_notes.md, "Collectives that wait on each other").
_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _SCHEDULER_FLAG not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += f" {_SCHEDULER_FLAG}=false"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
if _CACHE_VARIABLE not in os.environ:  # set: a worker (or a user's own cache), which is kept
  os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="rsgd-optax-tests-jax-cache-")
  # Also the small programs (an evaluation step compiles in well under JAX's default of 1 s).
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  atexit.register(shutil.rmtree, os.environ[_CACHE_VARIABLE], ignore_errors=True)


def pytest_configure(config):
  config.addinivalue_line(
    "markers",
    "long: a test file that runs for minutes on 2 cores (multi-process launches, the benchmark "
    "smoke run); such files are collected first, so that parallel workers end together.",
  )


def pytest_collection_modifyitems(items):
  # A stable sort: files marked long first, each file's tests still together and in order.
  items.sort(key=lambda item: item.get_closest_marker("long") is None)
