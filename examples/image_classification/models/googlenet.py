"""GoogLeNet (Inception v1, Szegedy et al., 2015) for CIFAR (32x32 inputs).

The CIFAR variant of kuangliu/pytorch-cifar: a 3x3 stem convolution to 192 channels instead of the
ImageNet stem, the nine original Inception modules (the 5x5 branch built as two 3x3 convolutions,
each convolution followed by batch norm), two stride-2 max-pools, global average pooling, no
auxiliary classifiers. Convolutions keep their biases as in that code. Parameter count: 6,166,250
at 10 classes, 6,258,500 at 100.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from examples.image_classification.models.layers import ConvBN

# (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection), from the GoogLeNet paper's Table 1.
_INCEPTION_3 = ((192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64))
_INCEPTION_4 = (
  (480, 192, 96, 208, 16, 48, 64),
  (512, 160, 112, 224, 24, 64, 64),
  (512, 128, 128, 256, 24, 64, 64),
  (512, 112, 144, 288, 32, 64, 64),
  (528, 256, 160, 320, 32, 128, 128),
)
_INCEPTION_5 = ((832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128))


class Inception(nnx.Module):
  """Four parallel branches concatenated along channels."""

  def __init__(
    self,
    in_features: int,
    n1x1: int,
    n3x3_reduce: int,
    n3x3: int,
    n5x5_reduce: int,
    n5x5: int,
    pool_features: int,
    *,
    rngs: nnx.Rngs,
  ):
    def unit(i: int, o: int, k: int) -> ConvBN:
      return ConvBN(i, o, k, use_bias=True, rngs=rngs)

    self.branch1 = unit(in_features, n1x1, 1)
    self.branch3 = nnx.List([unit(in_features, n3x3_reduce, 1), unit(n3x3_reduce, n3x3, 3)])
    self.branch5 = nnx.List(
      [unit(in_features, n5x5_reduce, 1), unit(n5x5_reduce, n5x5, 3), unit(n5x5, n5x5, 3)]
    )
    self.branch_pool = unit(in_features, pool_features, 1)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    b1 = self.branch1(x, train=train)
    b3, b5 = x, x
    for layer in self.branch3:
      b3 = layer(b3, train=train)
    for layer in self.branch5:
      b5 = layer(b5, train=train)
    pooled = nnx.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    return jnp.concatenate([b1, b3, b5, self.branch_pool(pooled, train=train)], axis=-1)


def _max_pool(x: jax.Array) -> jax.Array:
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class GoogLeNet(nnx.Module):
  """GoogLeNet for 32x32 images."""

  def __init__(self, num_classes: int = 100, *, in_channels: int = 3, rngs: nnx.Rngs):
    self.stem = ConvBN(in_channels, 192, 3, use_bias=True, rngs=rngs)
    self.stage3 = nnx.List([Inception(*spec, rngs=rngs) for spec in _INCEPTION_3])
    self.stage4 = nnx.List([Inception(*spec, rngs=rngs) for spec in _INCEPTION_4])
    self.stage5 = nnx.List([Inception(*spec, rngs=rngs) for spec in _INCEPTION_5])
    self.head = nnx.Linear(1024, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = self.stem(x, train=train)
    for index, stage in enumerate((self.stage3, self.stage4, self.stage5)):
      if index > 0:
        x = _max_pool(x)
      for block in stage:
        x = block(x, train=train)
    return self.head(jnp.mean(x, axis=(1, 2)))


def googlenet(num_classes: int = 100, *, rngs: nnx.Rngs, **kwargs) -> GoogLeNet:
  return GoogLeNet(num_classes, rngs=rngs, **kwargs)
