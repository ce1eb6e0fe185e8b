"""Float dtype choices made explicitly, so that they hold under strict dtype promotion."""

from typing import Any

import jax.numpy as jnp


def wider_float(*dtypes: Any) -> Any:
  """The float dtype with the most bits among ``dtypes`` (the first one on a tie)."""
  return max((jnp.dtype(d) for d in dtypes), key=lambda d: jnp.finfo(d).bits)


def accumulation_dtype(*dtypes: Any) -> Any:
  """A dtype for sums over these dtypes: the widest of them, and at least float32."""
  return wider_float(jnp.float32, *dtypes)
