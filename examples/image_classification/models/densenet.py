"""DenseNet-121 for CIFAR (32x32 inputs), growth rate 32 (Huang et al., 2017).

The CIFAR variant used by the widely used PyTorch CIFAR code bases (kuangliu/pytorch-cifar): a 3x3
stem convolution with ``2k`` channels and no max-pool, dense blocks of (6, 12, 24, 16) bottleneck
layers (BN-ReLU-1x1 conv to ``4k``, BN-ReLU-3x3 conv to ``k``), transitions halving the channels and
the resolution, then BN-ReLU, 4x4 average pool and the classifier. Parameter count with growth 32:
6,956,298 at 10 classes, 7,048,548 at 100.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from examples.image_classification.models.layers import batch_norm, conv_init


def _conv(in_features: int, out_features: int, kernel: int, rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(
    in_features, out_features, (kernel, kernel), use_bias=False, kernel_init=conv_init, rngs=rngs
  )


class DenseLayer(nnx.Module):
  """Pre-activation bottleneck: appends ``growth_rate`` new channels to its input."""

  def __init__(self, in_features: int, growth_rate: int, *, rngs: nnx.Rngs):
    self.bn1 = batch_norm(in_features, rngs)
    self.conv1 = _conv(in_features, 4 * growth_rate, 1, rngs)
    self.bn2 = batch_norm(4 * growth_rate, rngs)
    self.conv2 = _conv(4 * growth_rate, growth_rate, 3, rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = self.conv1(nnx.relu(self.bn1(x, use_running_average=not train)))
    y = self.conv2(nnx.relu(self.bn2(y, use_running_average=not train)))
    return jnp.concatenate([y, x], axis=-1)


class Transition(nnx.Module):
  """BN-ReLU-1x1 conv to ``out_features`` channels, then 2x2 average pool."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    self.bn = batch_norm(in_features, rngs)
    self.conv = _conv(in_features, out_features, 1, rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = self.conv(nnx.relu(self.bn(x, use_running_average=not train)))
    return nnx.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nnx.Module):
  """DenseNet-BC for 32x32 images (compression 0.5)."""

  def __init__(
    self,
    block_sizes: Sequence[int] = (6, 12, 24, 16),
    growth_rate: int = 32,
    num_classes: int = 100,
    *,
    in_channels: int = 3,
    reduction: float = 0.5,
    rngs: nnx.Rngs,
  ):
    features = 2 * growth_rate
    self.stem = nnx.Conv(
      in_channels,
      features,
      (3, 3),
      padding=((1, 1), (1, 1)),
      use_bias=False,
      kernel_init=conv_init,
      rngs=rngs,
    )
    stages = []
    for index, size in enumerate(block_sizes):
      layers = []
      for _ in range(size):
        layers.append(DenseLayer(features, growth_rate, rngs=rngs))
        features += growth_rate
      stages.append(nnx.List(layers))
      if index < len(block_sizes) - 1:
        out = math.floor(features * reduction)
        stages.append(Transition(features, out, rngs=rngs))
        features = out
    self.stages = nnx.List(stages)
    self.bn = batch_norm(features, rngs)
    self.head = nnx.Linear(features, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = self.stem(x)
    for stage in self.stages:
      if isinstance(stage, Transition):
        x = stage(x, train=train)
      else:
        for layer in stage:
          x = layer(x, train=train)
    x = nnx.relu(self.bn(x, use_running_average=not train))
    return self.head(jnp.mean(x, axis=(1, 2)))  # the 4x4 average pool of a 4x4 map


def densenet121(num_classes: int = 100, *, rngs: nnx.Rngs, **kwargs) -> DenseNet:
  return DenseNet((6, 12, 24, 16), 32, num_classes, rngs=rngs, **kwargs)
