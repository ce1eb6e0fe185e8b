"""The command line that every benchmark entry point shares: parse, measure, print, write JSON."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

HOST_DEVICES = 8
HOST_DEVICE_FLAG = f"--xla_force_host_platform_device_count={HOST_DEVICES}"


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def parser(doc: str | None) -> argparse.ArgumentParser:
  """A parser described by the module docstring's first line, with ``--out``."""
  parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
  parser.add_argument(
    "--out",
    default=None,
    help="write every measurement here as JSON (committed ones: benchmarks/results/)",
  )
  return parser


def report(results: dict[str, Any], markdown: Callable[[dict[str, Any]], str], out: str | None):
  """Prints the Markdown of ``results`` and writes them to ``out`` as JSON (when given)."""
  print(markdown(results))
  if out:
    with open(out, "w") as f:
      json.dump(results, f, indent=2)
  return results


def run_on_host_devices(
  module: str, arguments: list[str], devices: int = HOST_DEVICES
) -> dict[str, Any]:
  """Runs ``python -m module --out <file> *arguments`` with ``devices`` host (CPU) devices.

  The device count is fixed when JAX starts, so a benchmark that needs a mesh runs in a process
  of its own. Compile times are measured there, so JAX's persistent compilation cache is off.
  Returns the JSON the module wrote.
  """
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"  # a cached compile would time a file read
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.json")
    command = [sys.executable, "-m", module, "--out", out, *arguments]
    subprocess.run(command, check=True, cwd=root, env=env)
    with open(out) as f:
      return json.load(f)
