"""Config values checked against their valid ranges before a run writes anything.

Each family's ``train.py`` lists its fields with a :class:`Range` (or a set of choices) and calls
:func:`check`; a value out of range is one :class:`~examples.common.errors.UserError` naming every
bad field, its value and what it must be.

One rule for every number, in every family: a number that is not finite (``nan``, ``inf``,
``-inf``) is refused, whether or not its field has a range (every comparison with NaN is false, so
a range alone would let it through), and so is one after an ``@`` in an optimizer name
(:func:`fraction_after_at`).
"""

import dataclasses
import math
from collections.abc import Collection, Mapping
from typing import Any

from examples.common.errors import UserError


@dataclasses.dataclass(frozen=True)
class Range:
  """An interval of valid values; ``None`` leaves that side open-ended."""

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False

  def __contains__(self, value: Any) -> bool:
    if not is_finite_number(value):
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    if self.high is not None and (value >= self.high if self.high_open else value > self.high):
      return False
    return True

  def __str__(self) -> str:
    if self.high is None:
      return f"{'>' if self.low_open else '>='} {self.low:g}"
    left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
    return f"in {left}{self.low:g}, {self.high:g}{right}"


def is_finite_number(value: Any) -> bool:
  """Whether ``value`` is an ``int`` or ``float`` (not a ``bool``) and finite."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return False
  return math.isfinite(value)


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1, low_open=True)  # (0, 1]
PROBABILITY = Range(0, 1, high_open=True)  # [0, 1): dropout rates, momentum


def fraction_after_at(text: str) -> float:
  """The number after an ``@`` (``rsgdm-topk@0.05``, ``topk@0.01``), which must lie in (0, 1].

  Raises:
    ValueError: ``text`` is no number, or one outside (0, 1]; the message says which.
  """
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f"the value after @ must be a number, got {text!r}") from None
  if value not in FRACTION:
    raise ValueError(f"the value after @ must be a finite number {FRACTION}, got {text.strip()}")
  return value


def format_setting(value: float) -> str:
  """The one spelling of an ``@`` value: Python's shortest round-trip form, without a trailing
  ``.0`` (``1e-2`` and ``0.010`` are ``0.01``; ``1.0`` is ``1``)."""
  text = repr(float(value))
  return text[:-2] if text.endswith(".0") else text


def non_finite_fields(config: Any, prefix: str = "") -> list[str]:
  """Every field (dotted name; nested dicts too) of ``config`` holding a float that is not finite,
  alone or in a sequence."""
  bad = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      bad += non_finite_fields(value, f"{name}.")
      continue
    values = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
      bad.append(name)
  return bad


def check(
  config: Any,
  ranges: Mapping[str, Range],
  choices: Mapping[str, Collection[Any]] | None = None,
) -> None:
  """Raises one :class:`UserError` naming every field out of its range or choices.

  A field absent from ``config`` is skipped; a sequence (``lr_decay_epochs``) is checked element by
  element. Every field holding a float, listed in ``ranges`` or not, must be finite.
  """
  bad = []
  non_finite = non_finite_fields(config)
  for name in non_finite:
    value = _get(config, name)
    valid = ranges.get(name)
    must = f"a finite number {valid}" if valid is not None else "a finite number"
    bad.append(f"config.{name}={_show(value)} (must be {must})")
  for name, valid in ranges.items():
    if name not in config or name in non_finite:
      continue
    value = config[name]
    values = value if isinstance(value, (tuple, list)) else (value,)
    if not all(v in valid for v in values):
      bad.append(f"config.{name}={value!r} (must be {valid})")
  for name, options in (choices or {}).items():
    if name in config and config[name] not in options:
      bad.append(f"config.{name}={config[name]!r} (must be one of {', '.join(map(str, options))})")
  if bad:
    raise UserError(f"Invalid config value(s): {'; '.join(bad)}. Nothing was written.")


def _get(config: Any, dotted: str) -> Any:
  for key in dotted.split("."):
    config = config[key]
  return config


def _show(value: Any) -> str:
  """``nan``/``inf`` as a user types them (``repr`` of a tuple of floats shows them so too)."""
  return str(value) if isinstance(value, float) else repr(value)


def check_batch_size(
  batch_size: int, train_size: int, field: str = "batch_size", of: str = "training examples"
) -> None:
  """``1 <= batch_size <= train_size`` (checked once the data size is known, before writing)."""
  if not 1 <= batch_size <= train_size:
    raise UserError(
      f"config.{field}={batch_size} is out of range: it must be between 1 and the {train_size} "
      f"{of}. Nothing was written."
    )
