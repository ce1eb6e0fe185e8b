"""What machine a result came from: CPU model, cores, accelerator and library versions.

Numbers differ between CPUs and XLA versions (the README's main job gives other paired gains on an
Intel Xeon than on an AMD EPYC), so every committed result records the machine it was measured on,
and the reports print it next to the tables.
"""

import os
import platform
from importlib import metadata
from typing import Any

MACHINE_FILE = "machine.json"

_PACKAGES = ("jax", "jaxlib", "optax", "flax")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str | None:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def describe() -> dict[str, Any]:
  """The machine this process runs on, as a JSON-ready dict.

  Keys: ``cpu`` (model name), ``cpu_cores`` (usable by this process), ``platform`` and
  ``devices`` (JAX's default backend and its device kind and count), ``python`` and one key per
  package version (``jax``, ``jaxlib``, ``optax``, ``flax``).

  >>> sorted(describe())[:3]
  ['cpu', 'cpu_cores', 'devices']
  """
  import jax  # imported here so that reading a committed record needs no JAX

  devices = jax.devices()
  return {
    "cpu": _cpu_model(),
    "cpu_cores": len(os.sched_getaffinity(0))
    if hasattr(os, "sched_getaffinity")
    else os.cpu_count(),
    "platform": devices[0].platform,
    "devices": f"{len(devices)} x {devices[0].device_kind}",
    "python": platform.python_version(),
    **{package: _version(package) for package in _PACKAGES},
  }


def summary(machine: dict[str, Any]) -> str:
  """One line for a table caption: ``AMD EPYC, 2 cores, cpu, jax 0.10.2 / jaxlib 0.10.2``."""
  if not machine:
    return "machine not recorded"
  parts = [str(machine.get("cpu", "unknown CPU")), f"{machine.get('cpu_cores', '?')} cores"]
  if machine.get("platform") not in (None, "cpu"):
    parts.append(str(machine.get("devices", machine["platform"])))
  parts.append(f"jax {machine.get('jax')} / jaxlib {machine.get('jaxlib')}")
  return ", ".join(parts)
