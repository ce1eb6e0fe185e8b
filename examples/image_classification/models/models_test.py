"""Parameter counts against the published architectures, and output shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from examples.image_classification.models import create_model
from examples.image_classification.models.densenet import DenseNet
from examples.image_classification.models.resnet import BasicBlock, Bottleneck, ResNet
from examples.image_classification.models.small_cnn import SmallCNN


@functools.cache  # shared by the count and shape tests: tracing DenseNet-121 takes seconds
def _abstract(name: str, num_classes: int):
  """The model built abstractly (shapes only, no memory or compute)."""
  return nnx.eval_shape(lambda: create_model(name, num_classes, rngs=nnx.Rngs(0)))


def _count(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# torchvision's resnet18/resnet50 (the "11.7M" and "25.6M" of the ResNet paper's table) and the
# CIFAR variants of kuangliu/pytorch-cifar (DenseNet121: 6,956,298; GoogLeNet: 6,166,250 at 10
# classes). A classifier on 1024 features adds 1024 * 90 + 90 = 92,250 parameters at 100 classes.
@pytest.mark.parametrize(
  "name, num_classes, expected",
  [
    ("resnet18", 1000, 11_689_512),
    ("resnet50", 1000, 25_557_032),
    ("densenet121", 100, 6_956_298 + 92_250),
    ("googlenet", 100, 6_166_250 + 92_250),
  ],
)
def test_parameter_count(name, num_classes, expected):
  assert _count(_abstract(name, num_classes)) == expected


@pytest.mark.parametrize(
  "name, num_classes, size",
  [
    ("resnet18", 1000, 224),
    ("resnet50", 1000, 224),
    ("densenet121", 100, 32),
    ("googlenet", 100, 32),
  ],
)
def test_output_shape_abstractly(name, num_classes, size):
  graphdef, state = nnx.split(_abstract(name, num_classes))
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, images)
  assert out.shape == (2, num_classes) and out.dtype == jnp.float32


def test_unknown_model_is_named():
  with pytest.raises(ValueError, match=r"Unknown model 'vgg'.*densenet121"):
    create_model("vgg", 10, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
  "build, size",
  [
    (lambda r: create_model("small_cnn", 10, rngs=r, width=4, hidden=8, image_size=12), 12),
    (lambda r: DenseNet((1, 1, 1, 1), 4, 10, rngs=r), 32),
    (lambda r: ResNet(BasicBlock, (1, 1), 10, rngs=r), 32),
    (lambda r: ResNet(Bottleneck, (1, 1), 10, rngs=r), 32),
  ],
)
def test_small_variants_run_and_update_batch_stats(build, size):
  model = build(nnx.Rngs(0))
  channels = 1 if isinstance(model, SmallCNN) else 3
  x = jax.random.normal(jax.random.key(1), (4, size, size, channels))
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  forward = nnx.jit(lambda m, x, train: m(x, train=train), static_argnums=2)
  logits = forward(model, x, True)
  assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
  after = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  assert after
  # Train mode moves every running statistic.
  assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), after, strict=True))
