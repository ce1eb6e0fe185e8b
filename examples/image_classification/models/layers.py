"""Building blocks shared by the models: convolution + batch norm with PyTorch's defaults."""

import jax
from flax import nnx

# PyTorch's BatchNorm2d(momentum=0.1) keeps 0.9 of the old running statistics; Flax counts the
# other way round. The paper's models were PyTorch models, so their running averages move this fast.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He (Kaiming) normal in fan-out mode, torchvision's ResNet initialization.
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


class ConvBN(nnx.Module):
  """``Conv -> BatchNorm -> (ReLU)``, the unit every CNN here is made of."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    padding: int | str | None = None,
    use_bias: bool = False,
    relu: bool = True,
    rngs: nnx.Rngs,
  ):
    pad = kernel_size // 2 if padding is None else padding
    self.conv = nnx.Conv(
      in_features,
      out_features,
      (kernel_size, kernel_size),
      strides=strides,
      padding=pad if isinstance(pad, str) else ((pad, pad), (pad, pad)),
      use_bias=use_bias,
      kernel_init=conv_init,
      rngs=rngs,
    )
    self.bn = batch_norm(out_features, rngs)
    self.relu = relu

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = self.bn(self.conv(x), use_running_average=not train)
    return nnx.relu(x) if self.relu else x
