"""The parameter shapes of ResNet-50, built from the architecture (no model library needed).

He et al., "Deep residual learning for image recognition" (2016), Table 1: a 7x7 stem, four stages of
bottleneck blocks (3, 4, 6, 3 blocks; widths 64, 128, 256, 512; expansion 4), a projection shortcut
in each stage's first block, batch norm (scale and bias) after every convolution, and a 1000-way
dense head: 161 parameter leaves, 25,557,032 entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


def resnet50_shapes(
  width_scale: float = 1.0,
  stage_blocks: tuple[int, ...] = STAGE_BLOCKS,
  num_classes: int = 1000,
) -> dict[str, tuple[int, ...]]:
  """Leaf name -> shape (HWIO kernels), in the model's order.

  ``width_scale`` shrinks the channels and ``stage_blocks`` the depth, for quick smoke runs.
  """

  def ch(c: int) -> int:
    return max(1, round(c * width_scale))

  shapes: dict[str, tuple[int, ...]] = {}

  def conv_bn(name: str, size: int, cin: int, cout: int) -> None:
    shapes[f"{name}/kernel"] = (size, size, cin, cout)
    shapes[f"{name}_bn/scale"] = (cout,)
    shapes[f"{name}_bn/bias"] = (cout,)

  conv_bn("stem", 7, 3, ch(64))
  cin = ch(64)
  for stage, (blocks, width) in enumerate(zip(stage_blocks, STAGE_WIDTHS, strict=True)):
    for block in range(blocks):
      name = f"stage{stage + 1}_block{block + 1}"
      cout = ch(width * EXPANSION)
      conv_bn(f"{name}/conv1", 1, cin, ch(width))
      conv_bn(f"{name}/conv2", 3, ch(width), ch(width))
      conv_bn(f"{name}/conv3", 1, ch(width), cout)
      if block == 0:
        conv_bn(f"{name}/projection", 1, cin, cout)
      cin = cout
  shapes["head/kernel"] = (cin, num_classes)
  shapes["head/bias"] = (num_classes,)
  return shapes


def resnet50_tree(
  key: jax.Array,
  width_scale: float = 1.0,
  stage_blocks: tuple[int, ...] = STAGE_BLOCKS,
  dtype: jnp.dtype = jnp.float32,
) -> dict[str, jax.Array]:
  """A ResNet-50-shaped dict of normal random leaves (scaled by 0.01, as gradients might be)."""
  shapes = resnet50_shapes(width_scale, stage_blocks)
  keys = jax.random.split(key, len(shapes))
  return {
    name: 0.01 * jax.random.normal(k, shape, dtype)
    for k, (name, shape) in zip(keys, shapes.items(), strict=True)
  }


def tree_bytes(tree) -> int:
  return int(sum(np.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)))
