"""Starting JAX on several processes: with a cluster manager, or with the coordinator given.

``jax.distributed.initialize()`` without arguments finds the coordinator only where JAX detects a
cluster (SLURM, Open MPI, Cloud TPU, ...). On plain machines, and in tests, the coordinator's
address, the number of processes and this process's index are given in the config instead:

  # on host 0 (and the same with --config.process_id=1 on host 1)
  python -m examples.image_classification.main --config=... --workdir=/shared/run \\
    --config.distributed=True --config.coordinator_address=host0:12355 \\
    --config.num_processes=2 --config.process_id=0
"""

from __future__ import annotations

from typing import Any

import jax

# The three settings that name the coordinator, and the values that leave each unset.
_UNSET = {"coordinator_address": "", "num_processes": 0, "process_id": -1}
_EXPLICIT = tuple(_UNSET)


def initialize(config: Any) -> None:
  """Calls ``jax.distributed.initialize`` as ``config`` asks; nothing when it is not distributed.

  Must run before any other JAX call. ``config.distributed`` switches it on. With
  ``coordinator_address``, ``num_processes`` and ``process_id`` all set, they are used and cluster
  detection is off; with none of them set (``""``, ``0``, ``-1``, or absent), JAX detects the
  cluster. CPU processes talk over gloo. ``distributed_timeout_s`` bounds the wait for the peers
  at the start; :func:`heartbeat_timeout_s` bounds JAX's heartbeat and its wait for the peers at
  exit (``jax.distributed.shutdown``: 300 s by default; a peer that died after the last checkpoint
  then ends the survivors, with JAX's abort, within two minutes instead of five).

  Raises:
    ValueError: some but not all of the three are set, they are set without ``distributed``, or a
      value is out of range.
  """
  given = {
    name: config.get(name)
    for name, unset in _UNSET.items()
    if config.get(name) is not None and config.get(name) != unset
  }
  if not config.get("distributed", False):
    if given:
      raise ValueError(
        f"config.{', config.'.join(given)} set without config.distributed=True: set it too, or "
        "leave these empty for a single-process run."
      )
    return
  timeout = int(config.get("distributed_timeout_s", 300))
  heartbeat = heartbeat_timeout_s(config)
  if not given:
    _use_gloo_on_cpu()
    jax.distributed.initialize(
      initialization_timeout=timeout,
      heartbeat_timeout_seconds=heartbeat,
      shutdown_timeout_seconds=heartbeat,
    )
    return
  missing = [name for name in _EXPLICIT if name not in given]
  if missing:
    raise ValueError(
      f"config.{', config.'.join(missing)} missing: give coordinator_address, num_processes and "
      "process_id together, or none of them to let JAX detect the cluster."
    )
  address, num_processes, process_id = (given[name] for name in _EXPLICIT)
  host, _, port = str(address).rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(
      f"config.coordinator_address must be host:port (for example 10.0.0.1:12355), got {address!r}."
    )
  if int(num_processes) < 1 or not 0 <= int(process_id) < int(num_processes):
    raise ValueError(
      f"config.process_id must be in [0, num_processes), got process_id={process_id} with "
      f"num_processes={num_processes}."
    )
  _use_gloo_on_cpu()
  jax.distributed.initialize(
    str(address),
    int(num_processes),
    int(process_id),
    cluster_detection_method="deactivate",
    initialization_timeout=timeout,
    heartbeat_timeout_seconds=heartbeat,
    shutdown_timeout_seconds=heartbeat,
  )


JAX_HEARTBEAT_TIMEOUT_S = 100  # jax.distributed.initialize's default
# How far JAX's heartbeat timeout lies past the watchdog's bound: more than the watchdog's poll
# (5 s) and a loaded machine's slack. With the default bound (90 s) it is 115 s: a survivor whose
# watchdog somehow did not fire is still ended (by JAX's abort) within two minutes.
HEARTBEAT_MARGIN_S = 25


def heartbeat_timeout_s(config: Any) -> int:
  """JAX's heartbeat timeout: past the stall watchdog's bound (``config.collective_timeout_s``).

  When a peer stops sending heartbeats, JAX aborts the survivors (SIGABRT) with a C++ stack and no
  word on what to do; with the watchdog's bound below JAX's, the watchdog ends a stalled run
  first, with the line that says to relaunch every process (:mod:`examples.common.watchdog`).
  """
  bound = int(config.get("collective_timeout_s", 0) or 0)
  if bound <= 0:
    return JAX_HEARTBEAT_TIMEOUT_S
  return max(JAX_HEARTBEAT_TIMEOUT_S, bound + HEARTBEAT_MARGIN_S)


def _use_gloo_on_cpu() -> None:
  # CPU processes need a collectives implementation to talk to each other; accelerators ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
