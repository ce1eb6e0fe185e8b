"""``jax.enable_x64`` under its current name, and under the older name of the oldest supported jax."""

import jax

try:  # jax >= 0.8
  enable_x64 = jax.enable_x64
except AttributeError:  # jax 0.7, the oldest version pyproject.toml admits
  from jax.experimental import enable_x64  # type: ignore[no-redef]

__all__ = ["enable_x64"]
