"""Runs locked to their data, not to its path: a fingerprint of the data a run trains on.

A trainer passes what it loaded (arrays, a dataclass of arrays, a list of file names and labels)
to :class:`~examples.common.rundir.RunDirectory` as ``data=``; the run directory records its
:func:`fingerprint` in ``<workdir>/data.json`` when the run starts and, on a resume, refuses
other data with one :class:`~examples.common.errors.UserError` before anything is written. The
fingerprint is of the contents, never of the path: the same data moved elsewhere (another
``data_dir``) resumes.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from examples.common.errors import UserError

DATA_FILE = "data.json"


def _feed(digest: Any, value: Any, counts: dict[str, int]) -> None:
  """Feeds ``value`` into ``digest`` with its type and shape, so that no two values collide."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    digest.update(f"dataclass {type(value).__name__}".encode())
    for field in dataclasses.fields(value):
      digest.update(field.name.encode())
      _feed(digest, getattr(value, field.name), counts)
  elif isinstance(value, Mapping):
    digest.update(f"mapping {len(value)}".encode())
    for key in sorted(value, key=str):
      digest.update(str(key).encode())
      _feed(digest, value[key], counts)
  elif isinstance(value, (list, tuple)):
    digest.update(f"sequence {len(value)}".encode())
    for item in value:
      _feed(digest, item, counts)
  elif isinstance(value, np.ndarray):
    array = np.ascontiguousarray(value)
    digest.update(f"array {array.dtype.str} {array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    counts["arrays"] += 1
    counts["bytes"] += array.nbytes
  elif isinstance(value, (str, bytes)):
    encoded = value.encode() if isinstance(value, str) else value
    digest.update(f"{type(value).__name__} {len(encoded)} ".encode())
    digest.update(encoded)
    counts["bytes"] += len(encoded)
  elif value is None or isinstance(value, (bool, int, float, np.generic)):
    digest.update(f"{type(value).__name__} {value!r}".encode())
  else:
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def fingerprint(data: Any) -> dict[str, Any]:
  """The SHA-256 of ``data``'s contents (arrays: dtype, shape and bytes), and what it covered.

  ``data`` is any nesting of dataclasses, mappings, lists and tuples of NumPy arrays, strings and
  numbers. Returns ``{"sha256", "arrays", "bytes"}`` (the bytes of its arrays and strings).
  """
  digest = hashlib.sha256()
  counts = {"arrays": 0, "bytes": 0}
  _feed(digest, data, counts)
  return {"sha256": digest.hexdigest(), **counts}


def _describe(record: Mapping[str, Any]) -> str:
  return (
    f"{record.get('arrays', '?')} arrays, {record.get('bytes', '?')} bytes, sha256 "
    + str(record.get("sha256", "?"))[:12]
  )


def check_data_lock(workdir: str, record: Mapping[str, Any]) -> None:
  """Refuses data whose fingerprint differs from ``<workdir>/data.json`` (if the run has one).

  Raises:
    UserError: naming both fingerprints and saying what to do.
  """
  path = os.path.join(workdir, DATA_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (OSError, ValueError) as error:
    raise UserError(
      f"{path} cannot be read ({error}); it records the data this workdir was trained on. "
      "Restore it, or train in a new --workdir."
    ) from error
  if recorded.get("sha256") != record["sha256"]:
    raise UserError(
      f"{workdir} was trained on other data ({path}: {_describe(recorded)}; this data: "
      f"{_describe(record)}); a run resumes only on the data it started with (it may have "
      "moved). Point config.data_dir (or data_source) at that data, or train in a new --workdir."
    )
