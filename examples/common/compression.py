"""``config.grad_compression``: the compressed gradient exchange of data-parallel trainers, by name.

One string names the compressor and whether error feedback is on:

* ``"none"``: the exact mean (the trainers' ordinary all-reduce; nothing changes).
* ``"sign"``: scaled sign (packed sign bits and a scale per leaf) with error feedback.
* ``"topk@F"``: the top fraction ``F`` of entries, ``0 < F <= 1``, as (index, value) pairs, with
  error feedback (``"topk@0.01"``: 1%).
* ``"sign-noef"``, ``"topk-noef@F"``: the same without error feedback (each device sends ``R(g_i)``
  and keeps no memory): the ablation of the memory.

:func:`exchange` builds :func:`rsgd_optax.compressed_mean` from it, with the exchange's options
(:class:`Options`: the two-phase exchange and the anchors' recipe, each off by default); the
trainer chains it in front of the optimizer the registry builds (:mod:`examples.common.optimizers`).
"""

import dataclasses
from collections.abc import Iterator

import optax

import rsgd_optax as rsgd
from examples.common import config_checks

NONE = "none"
EXCHANGES = ("all_gather", "two_phase")


@dataclasses.dataclass(frozen=True)
class Options:
  """How the compressed gradient travels, besides its compressor (the library's defaults).

  Attributes:
    exchange: ``"all_gather"`` (every device decodes every sender: best on a few devices) or
      ``"two_phase"`` (a compressed all-reduce with a server memory: bytes a device that do not grow
      with the device count).
    exact_below: leaves with fewer entries are averaged exactly and keep no memory (0: none).
    exact_steps: the first this many steps exchange the exact mean (0: none).
    block_size: sign only: one scale per block of this many entries (0: one scale a leaf).
  """

  exchange: str = "all_gather"
  exact_below: int = 0
  exact_steps: int = 0
  block_size: int = 0


@dataclasses.dataclass(frozen=True)
class Compression:
  """A parsed ``config.grad_compression``.

  Attributes:
    scheme: ``"sign"`` or ``"topk"``.
    fraction: the top-k fraction (``None`` for sign).
    error_feedback: whether each device keeps its error memory.
  """

  scheme: str
  fraction: float | None
  error_feedback: bool

  def transform(self, axis_name: str, options: Options = Options()) -> optax.GradientTransformation:
    """:func:`rsgd_optax.compressed_mean` across ``axis_name``, used inside ``jax.shard_map``."""
    if self.scheme == "sign":
      scheme = rsgd.scaled_sign(block_size=options.block_size or None)
    elif options.block_size:
      raise ValueError("block-wise scales are for sign: top-k sends its values, not a scale")
    else:
      scheme = rsgd.top_k(self.fraction)
    return rsgd.compressed_mean(
      scheme,
      axis_name,
      error_feedback=self.error_feedback,
      exchange=options.exchange,
      exact_below=options.exact_below,
      exact_steps=options.exact_steps,
    )


def parse(value: str) -> Compression | None:
  """``None`` for ``"none"``; else the parsed setting. Raises ``ValueError`` on anything else."""
  if not isinstance(value, str):
    raise ValueError(f"not a string: {value!r}")
  value = "".join(value.split())  # spaces are no part of a name
  if value == NONE:
    return None
  name, at, setting = value.partition("@")
  scheme, _, suffix = name.partition("-")
  if scheme not in ("sign", "topk") or suffix not in ("", "noef"):
    raise ValueError(f"unknown compressor {name!r}")
  error_feedback = suffix == ""
  if scheme == "sign":
    if at:
      raise ValueError("sign takes no @ setting")
    return Compression("sign", None, error_feedback)
  if not at:
    raise ValueError("topk needs its fraction after @, e.g. topk@0.01")
  return Compression("topk", config_checks.fraction_after_at(setting), error_feedback)


def canonical(value: str) -> str:
  """``value`` in its one spelling (``"topk @ 1e-2"`` -> ``"topk@0.01"``), so that two spellings
  of one setting are one setting (the config lock compares these); an invalid value as given."""
  try:
    parsed = parse(value)
  except ValueError:
    return value
  if parsed is None:
    return NONE
  name = parsed.scheme + ("" if parsed.error_feedback else "-noef")
  if parsed.fraction is None:
    return name
  return f"{name}@{config_checks.format_setting(parsed.fraction)}"


class Choices:
  """The valid ``config.grad_compression`` values, for :func:`examples.common.config_checks.check`.

  ``in`` parses the value; iterating lists the forms its message shows.
  """

  FORMS = (NONE, "sign", "sign-noef", "topk@F (0 < F <= 1, e.g. topk@0.01)", "topk-noef@F")

  def __contains__(self, value: object) -> bool:
    try:
      parse(value)  # type: ignore[arg-type]
    except ValueError:
      return False
    return True

  def __iter__(self) -> Iterator[str]:
    return iter(self.FORMS)


CHOICES = Choices()


def exchange(
  value: str, axis_name: str, options: Options = Options()
) -> optax.GradientTransformation | None:
  """The exchange ``config.grad_compression`` names across ``axis_name``; ``None`` for ``"none"``."""
  parsed = parse(value)
  return None if parsed is None else parsed.transform(axis_name, options)
