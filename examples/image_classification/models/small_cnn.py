"""A small CNN for small grayscale images (Fashion-MNIST), fast enough for CPU runs."""

import jax
import jax.numpy as jnp
from flax import nnx

from examples.image_classification.models.layers import batch_norm, conv_init


class SmallCNN(nnx.Module):
  """``[conv3x3 -> (BN) -> ReLU -> maxpool2] x 2 -> dense -> ReLU -> dense``.

  Args:
    num_classes: output logits.
    in_channels: image channels.
    image_size: height (= width) of the input images.
    width: channels of the first convolution (the second has twice as many).
    hidden: units of the hidden dense layer.
    use_batch_norm: without it the network is the plain CNN that diverges at lr 0.1 for some seeds
      (useful to exercise the non-finite-loss stop).
  """

  def __init__(
    self,
    num_classes: int = 10,
    *,
    in_channels: int = 1,
    image_size: int = 28,
    width: int = 16,
    hidden: int = 128,
    use_batch_norm: bool = True,
    rngs: nnx.Rngs,
  ):
    self.conv1 = nnx.Conv(
      in_channels, width, (3, 3), use_bias=not use_batch_norm, kernel_init=conv_init, rngs=rngs
    )
    self.conv2 = nnx.Conv(
      width, 2 * width, (3, 3), use_bias=not use_batch_norm, kernel_init=conv_init, rngs=rngs
    )
    self.bn1 = batch_norm(width, rngs) if use_batch_norm else None
    self.bn2 = batch_norm(2 * width, rngs) if use_batch_norm else None
    pooled = image_size // 4  # two 2x2 max-pools
    self.fc1 = nnx.Linear(pooled * pooled * 2 * width, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
      x = conv(x)
      if bn is not None:
        x = bn(x, use_running_average=not train)
      x = nnx.max_pool(nnx.relu(x), (2, 2), strides=(2, 2))
    x = jnp.reshape(x, (x.shape[0], -1))
    return self.fc2(nnx.relu(self.fc1(x)))
