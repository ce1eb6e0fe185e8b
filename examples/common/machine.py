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


# Vector extensions that change what XLA's CPU backend compiles (and so the last bits of results).
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve")


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
  """The first processor's fields of ``path`` (empty where there is no such file)."""
  fields: dict[str, str] = {}
  try:
    with open(path) as f:
      for line in f:
        if not line.strip():
          break  # the first processor's block ends here
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  return fields


def _cpu_model(info: dict[str, str]) -> str:
  return info.get("model name") or platform.processor() or platform.machine() or "unknown"


def _cpu_id(info: dict[str, str]) -> str | None:
  """Family, model and vector extensions: virtual machines often report only "AMD EPYC" as the
  model name, and two such hosts of different generations give different results."""
  if "cpu family" not in info:
    return None
  flags = set(info.get("flags", "").split())
  isa = [flag for flag in _ISA_FLAGS if flag in flags]
  return f"family {info['cpu family']} model {info.get('model', '?')}" + (
    f", {' '.join(isa)}" if isa else ""
  )


def _version(package: str) -> str | None:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def describe() -> dict[str, Any]:
  """The machine this process runs on, as a JSON-ready dict.

  Keys: ``cpu`` (model name), ``cpu_id`` (family, model and vector extensions, where the system
  says), ``cpu_cores`` (usable by this process), ``platform`` and
  ``devices`` (JAX's default backend and its device kind and count), ``python`` and one key per
  package version (``jax``, ``jaxlib``, ``optax``, ``flax``).

  >>> sorted(describe())[:3]
  ['cpu', 'cpu_cores', 'devices']
  """
  import jax  # imported here so that reading a committed record needs no JAX

  devices = jax.devices()
  info = _cpuinfo()
  return {
    "cpu": _cpu_model(info),
    "cpu_id": _cpu_id(info),
    "cpu_cores": len(os.sched_getaffinity(0))
    if hasattr(os, "sched_getaffinity")
    else os.cpu_count(),
    "platform": devices[0].platform,
    "devices": f"{len(devices)} x {devices[0].device_kind}",
    "python": platform.python_version(),
    **{package: _version(package) for package in _PACKAGES},
  }


def summary(machine: dict[str, Any]) -> str:
  """One line for a table caption: ``AMD EPYC (family 26 model 2, avx2 avx512f), 2 cores, jax
  0.10.2 / jaxlib 0.10.2`` (records from before ``cpu_id`` have no parenthesis)."""
  if not machine:
    return "machine not recorded"
  cpu = str(machine.get("cpu", "unknown CPU"))
  if machine.get("cpu_id"):
    cpu += f" ({machine['cpu_id']})"
  parts = [cpu, f"{machine.get('cpu_cores', '?')} cores"]
  if machine.get("platform") not in (None, "cpu"):
    parts.append(str(machine.get("devices", machine["platform"])))
  parts.append(f"jax {machine.get('jax')} / jaxlib {machine.get('jaxlib')}")
  return ", ".join(parts)
