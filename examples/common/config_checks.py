"""Config values checked against their valid ranges before a run writes anything.

Each family's ``train.py`` lists its fields with a :class:`Range` (or a set of choices) and calls
:func:`check`; a value out of range is one :class:`~examples.common.errors.UserError` naming every
bad field, its value and what it must be.
"""

import dataclasses
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
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
    raise ValueError(f"the value after @ must be {FRACTION}, got {value}")
  return value


def check(
  config: Any,
  ranges: Mapping[str, Range],
  choices: Mapping[str, Collection[Any]] | None = None,
) -> None:
  """Raises one :class:`UserError` naming every field out of its range or choices.

  A field absent from ``config`` is skipped; a sequence (``lr_decay_epochs``) is checked element by
  element.
  """
  bad = []
  for name, valid in ranges.items():
    if name not in config:
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


def check_batch_size(
  batch_size: int, train_size: int, field: str = "batch_size", of: str = "training examples"
) -> None:
  """``1 <= batch_size <= train_size`` (checked once the data size is known, before writing)."""
  if not 1 <= batch_size <= train_size:
    raise UserError(
      f"config.{field}={batch_size} is out of range: it must be between 1 and the {train_size} "
      f"{of}. Nothing was written."
    )
