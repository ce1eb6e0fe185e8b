"""``distributed.initialize``: settings a user can get wrong are named before anything starts.

Real multi-process runs (2 processes on localhost over gloo) are tested through the image trainer,
in ``examples/image_classification/multiprocess_test.py``.
"""

import pytest
from ml_collections import ConfigDict

from examples.common import distributed


@pytest.mark.parametrize(
  ("settings", "message"),
  [
    ({"distributed": False, "process_id": 0}, "without config.distributed=True"),
    ({"distributed": True, "coordinator_address": "h:1"}, "num_processes, config.process_id"),
    (
      {"distributed": True, "coordinator_address": "h", "num_processes": 2, "process_id": 0},
      "host:port",
    ),
    (
      {"distributed": True, "coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
      r"process_id must be in \[0, num_processes\)",
    ),
  ],
)
def test_bad_settings_are_named_before_anything_starts(settings, message):
  config = ConfigDict({"coordinator_address": "", "num_processes": 0, "process_id": -1})
  config.update(settings)
  with pytest.raises(ValueError, match=message):
    distributed.initialize(config)


def test_not_distributed_starts_nothing():
  distributed.initialize(ConfigDict({"distributed": False, "coordinator_address": ""}))


@pytest.mark.parametrize(
  ("bound", "heartbeat", "shutdown"),
  [(0, 100, 300), (10, 100, 35), (90, 205, 115), (600, 1225, 625)],
)
def test_jax_heartbeat_timeout_comes_after_the_stall_watchdog(bound, heartbeat, shutdown):
  config = ConfigDict({"collective_timeout_s": bound})
  assert distributed.heartbeat_timeout_s(config) == heartbeat
  assert distributed.shutdown_timeout_s(config) == shutdown
  if bound:  # JAX may notice a death half a heartbeat timeout after it; the watchdog comes first
    assert heartbeat / 2 > bound + 5
