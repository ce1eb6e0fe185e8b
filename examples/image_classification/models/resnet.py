"""ResNet-18 and ResNet-50 for ImageNet, as in torchvision (He et al., 2016; v1.5 strides).

Parameter counts at 1000 classes: ResNet-18 11,689,512; ResNet-50 25,557,032 (torchvision's).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from examples.image_classification.models.layers import ConvBN


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

  expansion = 1

  def __init__(self, in_features: int, features: int, strides: int, *, rngs: nnx.Rngs):
    self.conv1 = ConvBN(in_features, features, 3, strides=strides, rngs=rngs)
    self.conv2 = ConvBN(features, features, 3, relu=False, rngs=rngs)
    out = features * self.expansion
    self.shortcut = (
      ConvBN(in_features, out, 1, strides=strides, relu=False, rngs=rngs)
      if strides != 1 or in_features != out
      else None
    )

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = self.conv2(self.conv1(x, train=train), train=train)
    skip = x if self.shortcut is None else self.shortcut(x, train=train)
    return nnx.relu(y + skip)


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3 (carrying the stride, as in torchvision's v1.5), 1x1 expand by 4."""

  expansion = 4

  def __init__(self, in_features: int, features: int, strides: int, *, rngs: nnx.Rngs):
    out = features * self.expansion
    self.conv1 = ConvBN(in_features, features, 1, rngs=rngs)
    self.conv2 = ConvBN(features, features, 3, strides=strides, rngs=rngs)
    self.conv3 = ConvBN(features, out, 1, relu=False, rngs=rngs)
    self.shortcut = (
      ConvBN(in_features, out, 1, strides=strides, relu=False, rngs=rngs)
      if strides != 1 or in_features != out
      else None
    )

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = self.conv3(self.conv2(self.conv1(x, train=train), train=train), train=train)
    skip = x if self.shortcut is None else self.shortcut(x, train=train)
    return nnx.relu(y + skip)


class ResNet(nnx.Module):
  """ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global average pool, classifier."""

  def __init__(
    self,
    block: type[BasicBlock] | type[Bottleneck],
    stage_sizes: Sequence[int],
    num_classes: int = 1000,
    *,
    in_channels: int = 3,
    rngs: nnx.Rngs,
  ):
    self.stem = ConvBN(in_channels, 64, 7, strides=2, padding=3, rngs=rngs)
    blocks = []
    in_features = 64
    for stage, size in enumerate(stage_sizes):
      features = 64 * 2**stage
      for i in range(size):
        strides = 2 if stage > 0 and i == 0 else 1
        blocks.append(block(in_features, features, strides, rngs=rngs))
        in_features = features * block.expansion
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(in_features, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = self.stem(x, train=train)
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x, train=train)
    return self.head(jnp.mean(x, axis=(1, 2)))


def resnet18(num_classes: int = 1000, *, rngs: nnx.Rngs, **kwargs) -> ResNet:
  return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, rngs=rngs, **kwargs)


def resnet50(num_classes: int = 1000, *, rngs: nnx.Rngs, **kwargs) -> ResNet:
  return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, rngs=rngs, **kwargs)
