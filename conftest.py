"""Test-process set-up shared by every test directory.

Eight virtual CPU devices let the sharding and data-parallel tests build a real device mesh. The flag
must be set before JAX initialises its backend, so it lives here (this test process only), not in the
user's environment.
"""

import os

_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICE_FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
