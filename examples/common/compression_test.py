"""Parsing ``config.grad_compression`` and building its exchange."""

import jax
import jax.numpy as jnp
import optax
import pytest

from examples.common import compression
from examples.common.compression import Compression


@pytest.mark.parametrize(
  ("value", "parsed"),
  [
    ("none", None),
    ("sign", Compression("sign", None, True)),
    ("sign-noef", Compression("sign", None, False)),
    ("topk@0.01", Compression("topk", 0.01, True)),
    ("topk-noef@1", Compression("topk", 1.0, False)),
  ],
)
def test_valid_values(value, parsed):
  assert compression.parse(value) == parsed
  assert value in compression.CHOICES


@pytest.mark.parametrize(
  "value",
  [
    "",
    "topk",
    "topk@0",
    "topk@1.5",
    "topk@-0.1",
    "sign@0.1",
    "sign-ef",
    "topk@x",
    1,
    "topk@nan",
    "topk@inf",
    "topk-noef@-inf",
  ],
)
def test_invalid_values(value):
  assert value not in compression.CHOICES
  with pytest.raises(ValueError):
    compression.parse(value)


def test_exchange_keeps_a_memory_only_with_error_feedback():
  assert compression.exchange("none", "data") is None
  mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
  with jax.set_mesh(mesh):
    state = compression.exchange("sign", "data").init({"w": jnp.zeros(3)})
    assert state.memory["w"].shape == (2, 3)  # one row a device
    assert compression.exchange("topk-noef@0.5", "data").init({"w": jnp.zeros(3)}) == (
      optax.EmptyState()
    )


@pytest.mark.parametrize(
  ("value", "expected"),
  [
    ("topk@1e-2", "topk@0.01"),
    (" topk @ 0.010 ", "topk@0.01"),
    ("topk-noef@1.0", "topk-noef@1"),
    ("sign", "sign"),
    ("none", "none"),
    ("topk@nan", "topk@nan"),  # invalid: kept as given (the range check names it)
  ],
)
def test_one_spelling_of_a_setting(value, expected):
  assert compression.canonical(value) == expected
