"""A run's config as a record: the ``config.json`` file name, the config as JSON, its dotted fields.

:mod:`~examples.common.rundir` writes ``config.json`` and compares a resumed run's config with it;
:mod:`~examples.common.report` reads it to group runs; :mod:`~examples.common.entry` lists the
fields in ``--help`` and checks ``--config.FIELD`` overrides against them. All three name the fields
as :func:`flat_fields` does (``model_kwargs.width``).
"""

import json
from collections.abc import Mapping
from typing import Any

import ml_collections

CONFIG_FILE = "config.json"


def is_group(value: Any) -> bool:
  """Whether a config value is a nested group of fields (a ``ConfigDict`` or a dict)."""
  return isinstance(value, (Mapping, ml_collections.ConfigDict))


def flat_fields(config: Any, *, groups: bool = False, prefix: str = "") -> dict[str, Any]:
  """Every field of a nested config (a ``ConfigDict`` or a dict) by dotted name, in its order.

  ``groups=False`` keeps the leaves only (``{"a.b": 1}``); ``groups=True`` also keeps each nested
  group under its own name before its fields (``{"a": {...}, "a.b": 1}``).
  """
  out = {}
  for key, value in config.items():
    if not is_group(value):
      out[f"{prefix}{key}"] = value
      continue
    if groups:
      out[f"{prefix}{key}"] = value
    out.update(flat_fields(value, groups=groups, prefix=f"{prefix}{key}."))
  return out


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as ``config.json`` holds it (tuples become lists, other objects strings)."""
  return json.loads(json.dumps(config.to_dict(), default=str))
