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
  at the start; :func:`heartbeat_timeout_s` and :func:`shutdown_timeout_s` set JAX's heartbeat
  and its wait for the peers at exit from the stall watchdog's bound.

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
      shutdown_timeout_seconds=shutdown_timeout_s(config),
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
    shutdown_timeout_seconds=shutdown_timeout_s(config),
  )


JAX_HEARTBEAT_TIMEOUT_S = 100  # jax.distributed.initialize's default
JAX_SHUTDOWN_TIMEOUT_S = 300  # jax.distributed.initialize's default
# More than the watchdog's poll (5 s) and a loaded machine's slack.
MARGIN_S = 25


def heartbeat_timeout_s(config: Any) -> int:
  """JAX's heartbeat timeout: twice the stall watchdog's bound and a margin.

  When a peer stops sending heartbeats, JAX aborts the survivors (SIGABRT) with a C++ stack and no
  word on what to do; the watchdog (:mod:`examples.common.watchdog`, ``config.collective_timeout_s``)
  must end a run whose peer died first, with the line that says to relaunch every process. A
  process sends a heartbeat every half timeout, and the timeout counts from its last one: JAX
  can notice a death half a timeout after it (measured: 70 s with a timeout of 115 s). Twice the
  bound and a margin keeps that after the watchdog's bound (90 s by default: 205 s).
  """
  bound = int(config.get("collective_timeout_s", 0) or 0)
  if bound <= 0:
    return JAX_HEARTBEAT_TIMEOUT_S
  return max(JAX_HEARTBEAT_TIMEOUT_S, 2 * (bound + MARGIN_S) - MARGIN_S)


def shutdown_timeout_s(config: Any) -> int:
  """How long ``jax.distributed.shutdown`` waits for the peers at exit: the watchdog's bound and a
  margin (90 s by default: 115 s), so that a survivor whose peer died after the last checkpoint
  ends (with JAX's abort) within two minutes of reaching the exit, not five."""
  bound = int(config.get("collective_timeout_s", 0) or 0)
  return bound + MARGIN_S if bound > 0 else JAX_SHUTDOWN_TIMEOUT_S


def _use_gloo_on_cpu() -> None:
  # CPU processes need a collectives implementation to talk to each other; accelerators ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
