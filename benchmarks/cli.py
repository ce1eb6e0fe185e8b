"""The command line that every benchmark entry point shares: parse, measure, print, write JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def parser(doc: str | None) -> argparse.ArgumentParser:
  """A parser described by the module docstring's first line, with ``--out``."""
  parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
  parser.add_argument("--out", default=None, help="write every measurement here as JSON")
  return parser


def report(results: dict[str, Any], markdown: Callable[[dict[str, Any]], str], out: str | None):
  """Prints the Markdown of ``results`` and writes them to ``out`` as JSON (when given)."""
  print(markdown(results))
  if out:
    with open(out, "w") as f:
      json.dump(results, f, indent=2)
  return results
